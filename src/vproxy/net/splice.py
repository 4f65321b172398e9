"""Zero-copy relay helpers: ``os.splice`` through a pipe (Linux).

Owns: whether splice can be used here, and the pipes a relay direction moves bytes
through (socket → pipe → socket, no copy into Python objects). A pipe is bounded: its
capacity is what one direction may hold, so it is the relay's buffer.

Must not: register anything with a loop or know about sessions; the relay in
:mod:`vproxy.net.connection` drives it.
"""

from __future__ import annotations

import os
import sys

__all__ = ["SPLICE_AVAILABLE", "Pipe", "new_pipe", "splice"]

# os.splice exists on Linux from Python 3.10; VPROXY_SPLICE=0 turns it off (for
# measurements and as an escape hatch).
SPLICE_AVAILABLE = (
    sys.platform == "linux"
    and hasattr(os, "splice")
    and os.environ.get("VPROXY_SPLICE", "1").strip() != "0"
)

if SPLICE_AVAILABLE:
    import fcntl

    splice = os.splice
    SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    _F_SETPIPE_SZ: int = getattr(fcntl, "F_SETPIPE_SZ", 1031)
    _F_GETPIPE_SZ: int = getattr(fcntl, "F_GETPIPE_SZ", 1032)
else:  # pragma: no cover - not Linux
    SPLICE_FLAGS = 0

    def splice(
        src: int,
        dst: int,
        count: int,
        offset_src: int | None = None,
        offset_dst: int | None = None,
        flags: int = 0,
    ) -> int:
        raise OSError("splice is not available")


class Pipe:
    """A non-blocking pipe: ``w`` takes bytes from a socket, ``r`` gives them to another."""

    __slots__ = ("grown", "r", "size", "w")

    def __init__(self, r: int, w: int, size: int) -> None:
        self.r = r
        self.w = w
        self.size = size
        self.grown = False

    def grow(self, size: int) -> None:
        """Try once to hold ``size`` bytes (it may be refused: per-user pipe limits,
        ``pipe-max-size``); the pipe keeps what it has then."""
        self.grown = True
        if size <= self.size or self.w < 0:
            return
        try:
            self.size = fcntl.fcntl(self.w, _F_SETPIPE_SZ, size)
        except OSError:
            pass

    def close(self) -> None:
        """Close both ends (what is still in the pipe is dropped)."""
        r, w = self.r, self.w
        self.r = self.w = -1
        for fd in (r, w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


def new_pipe(size: int) -> Pipe | None:
    """A pipe holding about ``size`` bytes, or None when pipes cannot be had now.

    The kernel rounds the size up to a power-of-two number of pages and may refuse
    to grow it (``pipe-max-size``, per-user pipe limits): then the pipe keeps the
    size it got, which is still a bound.
    """
    if not SPLICE_AVAILABLE:
        return None
    try:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # out of descriptors: the caller copies instead
    try:
        got = fcntl.fcntl(w, _F_SETPIPE_SZ, size)
    except OSError:
        try:
            got = fcntl.fcntl(w, _F_GETPIPE_SZ)
        except OSError:
            got = 4096
    return Pipe(r, w, got)
