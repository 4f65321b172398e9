"""Application-layer modes of a tcp-lb (SPEC §2): which mode serves a ``protocol`` value.

``tcp`` is the L4 relay (no mode). ``http/1.x``, ``h2`` and ``http`` are implemented
here; every other name is a processor (``dubbo``, ``framed-int32``, or one registered
by the user, see ``docs/processors.md``) served by the frame mode. Modes are imported
on first use, so a tcp-only process loads none of them.
"""

from __future__ import annotations

from vproxy.app.l7.base import L7Mode

__all__ = [
    "HTTP_MODES",
    "UnknownProtocol",
    "available_protocols",
    "check_protocol",
    "make_mode",
]

HTTP_MODES = ("http/1.x", "h2", "http")


class UnknownProtocol(ValueError):
    """A ``protocol`` value no mode or processor serves."""


def available_protocols() -> tuple[str, ...]:
    """Every accepted ``protocol`` value: tcp, the HTTP modes, then the processors."""
    from vproxy.processor.base import registered_names

    return ("tcp", *HTTP_MODES, *registered_names())


def check_protocol(name: str) -> str:
    """Return ``name`` if some mode serves it.

    Raises:
        UnknownProtocol: Nothing does; the message lists what is available.
    """
    if name in available_protocols():
        return name
    raise UnknownProtocol(
        f"protocol {name!r} is not supported; expected one of: " + ", ".join(available_protocols())
    )


def make_mode(name: str) -> L7Mode | None:
    """The mode for a ``protocol`` value; ``None`` for ``tcp``.

    Raises:
        UnknownProtocol: No mode or processor has that name.
    """
    check_protocol(name)
    if name == "tcp":
        return None
    if name == "http/1.x":
        from vproxy.app.l7.http1 import Http1Mode

        return Http1Mode()
    if name == "h2":
        from vproxy.app.l7.h2 import H2Mode

        return H2Mode()
    if name == "http":
        from vproxy.app.l7.detect import HttpMode

        return HttpMode()
    from vproxy.app.l7.frames import FrameMode

    return FrameMode(name)
