"""The README's Python examples run as written (ports swapped for free ones)."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import ROOT, Backend, LoopThread, id_handler, read_ident, wait_until


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_examples_serve_traffic(backend_loop: LoopThread, tmp_path: Path) -> None:
    blocks = python_blocks()
    assert len(blocks) == 2
    a = Backend(backend_loop, id_handler("a"))
    b = Backend(backend_loop, id_handler("b"))
    for code in blocks:
        code = code.replace("18080", "0").replace("8080", str(a.port))
        code = code.replace("8081", str(b.port))
        code = code.replace("lb.stop()", "pass  # stopped by the test")
        ns: dict[str, object] = {}
        exec(compile(code, "README.md", "exec"), ns)
        lb = ns["lb"]
        address = lb.address  # type: ignore[attr-defined]
        try:

            def served(addr: tuple[str, int] = address) -> bool:
                try:
                    return read_ident(addr) in ("a", "b")
                except OSError:
                    return False

            wait_until(served, 10, 0.1)
        finally:
            lb.stop(close_sessions=True)  # type: ignore[attr-defined]
            for name in ("acceptor", "worker"):
                elg = ns.get(name)
                if elg is not None:
                    elg.close()  # type: ignore[attr-defined]
            if "acceptor" not in ns:
                lb.acceptor_elg.close()  # type: ignore[attr-defined]
                lb.worker_elg.close()  # type: ignore[attr-defined]
