"""How this installation was built: the data path compiled by mypyc, or pure Python.

``setup.py`` compiles the modules of the per-request path (:data:`COMPILED`) into C
extensions when it can; the start-up lines say which form runs. See
``docs/performance.md``, "Compiled modules".
"""

from __future__ import annotations

import importlib
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Final

__all__ = ["COMPILED", "C_HELPERS", "build_kind", "compiled_modules"]

#: The modules setup.py compiles, all on the per-request and per-session path. This
#: file is read by setup.py before the package is installed: standard library only.
COMPILED: Final = (
    "vproxy.net.event_loop",
    "vproxy.net.server_sock",
    "vproxy.net.connection",
    "vproxy.component.server_group",
    "vproxy.component.upstream",
    "vproxy.component.proxy",
    "vproxy.app.accept_gate",
    "vproxy.app.listener",
    "vproxy.app.tcp_lb",
    "vproxy.app.l7.base",
    "vproxy.app.socks5_server",
    "vproxy.app.l7.http1",
    "vproxy.app.l7.h2",
    "vproxy.processor.socks5",
    "vproxy.processor.http1",
    "vproxy.processor.h2",
    "vproxy.processor.hpack",
)

#: Extensions written in C (``src/<module path>.c``), built with the compiled modules;
#: the code that uses one falls back to Python's own calls when it is missing.
C_HELPERS: Final = ("vproxy.net._relay",)


def compiled_modules() -> list[str]:
    """The modules of :data:`COMPILED` and :data:`C_HELPERS` that were imported from a
    C extension."""
    out = []
    for name in COMPILED + C_HELPERS:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a C helper that was not built
            continue
        path = getattr(module, "__file__", None) or ""
        if path.endswith(tuple(EXTENSION_SUFFIXES)):
            out.append(name)
    return out


def build_kind() -> str:
    """``"compiled"``, ``"pure Python"``, or ``"partly compiled"`` (a stale build)."""
    n = len(compiled_modules())
    if n == len(COMPILED) + len(C_HELPERS):
        return "compiled"
    return "pure Python" if n == 0 else "partly compiled"
