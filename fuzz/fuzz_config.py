"""Fuzz reading a config file and parsing its lines, as ``load`` does before it applies
anything (``vproxy.control.persist.read_config`` and the command parser).

Invariant: reading returns lines or raises ``ConfigFileError``; each line parses or
raises ``CommandError``.

Run: ``python3 fuzz/fuzz_config.py -max_total_time=60``
"""

from __future__ import annotations

import os
import tempfile

import atheris
from _harness import main

with atheris.instrument_imports(include=["vproxy"]):
    from vproxy.control.command import CommandError, parse
    from vproxy.control.persist import ConfigFileError, read_config

SEEDS = [
    b"# vproxy config\nadd upstream u\r\nadd server-group g timeout 500 period 1000 up 1 "
    b"down 2\n\n  # indented comment\nadd server-group g to upstream u weight 10\n",
    b"\xef\xbb\xbfadd tcp-lb lb address 127.0.0.1:0 upstream u\n",
    b"add event-loop-group w\nadd event-loop w1 to event-loop-group w\n",
]

_FD, _PATH = tempfile.mkstemp(prefix="vproxy-fuzz-", suffix=".conf")
os.close(_FD)


def test_one(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        lines = read_config(_PATH, max_size=64 * 1024)
    except ConfigFileError:
        return
    for cl in lines:
        try:
            parse(cl.text)
        except CommandError:
            pass


if __name__ == "__main__":
    try:
        main(test_one, SEEDS)
    finally:
        os.unlink(_PATH)
