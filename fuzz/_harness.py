"""What the fuzz harnesses share: cutting one input into reads, and starting atheris.

Each harness feeds a parser the bytes of one fuzz input, cut into reads at places the
input itself chooses (parsers must not assume a message arrives in one read). The
invariant is the same everywhere: the parser returns, or raises its layer's protocol
error; any other exception is a crash, and an input that takes longer than the
per-input timeout (``-timeout``, 10 s unless given) is a hang.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import atheris

# Import the package from the source tree with the plain path finder: atheris does not
# instrument modules that an editable install's custom loader imports.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

__all__ = ["main", "reads"]


def reads(data: bytes) -> Iterator[bytes]:
    """``data`` minus its first byte, cut into reads.

    The first byte picks the cut: 0 feeds everything at once, otherwise reads of
    1..byte bytes, the sizes taken from the data after the payload's own bytes
    (cycled), so that one input explores one fixed fragmentation.
    """
    if not data:
        return
    mode, payload = data[0], data[1:]
    if mode == 0:
        yield payload
        return
    pos = 0
    i = 0
    while pos < len(payload):
        size = 1 + (payload[i % len(payload)] % mode)
        yield payload[pos : pos + size]
        pos += size
        i += 1


def main(test_one: Callable[[bytes], None], seeds: Sequence[bytes] = ()) -> None:
    """Run ``test_one`` under libFuzzer with the command-line options given.

    Without a corpus directory on the command line, ``fuzz/corpus/<harness>/`` is used
    (created, and given ``seeds`` — valid messages the mutations start from — when
    empty), so that runs build on each other.
    """
    argv = list(sys.argv)
    if not any(a.startswith("-timeout=") for a in argv[1:]):
        argv.append("-timeout=10")
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = Path(__file__).resolve().parent / "corpus" / Path(argv[0]).stem
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            for i, seed in enumerate(seeds):
                (corpus / f"seed-{i}").write_bytes(seed)
        argv.append(str(corpus))
    atheris.Setup(argv, test_one)
    atheris.Fuzz()
