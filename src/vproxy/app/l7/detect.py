"""The ``http`` mode of a tcp-lb: HTTP/2 or HTTP/1.x, decided per connection (SPEC §2).

Owns: the decision, and handing the connection over to the ``h2`` or ``http/1.x``
mode. With TLS the ALPN result decides (``h2`` or ``http/1.1``; no ALPN: look at the
bytes). Otherwise the first bytes do: the HTTP/2 connection preface
(``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n``) means h2 with prior knowledge; anything
that stops matching it is HTTP/1.x. The bytes read so far are handed to the chosen
mode unchanged.

Must not: parse either protocol beyond the preface.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, cast

from vproxy.app.l7.base import L7Mode, L7Session, tls_info
from vproxy.app.l7.http1 import Http1Mode
from vproxy.net.event_loop import EventLoop

if TYPE_CHECKING:
    from vproxy.app.tcp_lb import TcpLB

__all__ = ["PREFACE", "HttpMode"]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class HttpMode:
    """The ``http`` mode: one per tcp-lb (it owns an ``h2`` and an ``http/1.x`` mode)."""

    name = "http"
    alpn: tuple[str, ...] = ("h2", "http/1.1")

    def __init__(self) -> None:
        from vproxy.app.l7.h2 import H2Mode

        self.h2: L7Mode = H2Mode()
        self.http1: L7Mode = Http1Mode()

    def close(self) -> None:
        """Close both modes' idle backend connections (thread-safe)."""
        self.h2.close()
        self.http1.close()

    def new_frontend(self, lb: TcpLB, el: EventLoop, session: L7Session) -> asyncio.Protocol:
        """The protocol for one accepted client connection (it decides, then hands over)."""
        return _Detect(self, lb, el, session)


class _Detect(asyncio.Protocol):
    """Reads until the protocol is known, then gives the transport to that mode."""

    def __init__(self, mode: HttpMode, lb: TcpLB, el: EventLoop, session: L7Session) -> None:
        self.mode = mode
        self.lb = lb
        self.el = el
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.timer: asyncio.TimerHandle | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self.transport = t
        self.session.front.transport = t
        _, alpn = tls_info(t)
        if alpn == "h2":
            self._hand_over(self.mode.h2)
        elif alpn == "http/1.1":
            self._hand_over(self.mode.http1)
        else:
            timeout = self.lb.l7_limits.head_timeout / 1000
            self.timer = self.el.loop.call_later(timeout, t.close)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        self.buf = buf
        n = min(len(buf), len(PREFACE))
        if buf[:n] != PREFACE[:n]:
            self._hand_over(self.mode.http1)
        elif n == len(PREFACE):
            self._hand_over(self.mode.h2)

    def eof_received(self) -> bool:
        if self.buf:  # a short request cut by EOF: HTTP/1.x answers it
            self._hand_over(self.mode.http1, eof=True)
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.done:
            self.done = True
            self.session.finish()

    def _hand_over(self, mode: L7Mode, eof: bool = False) -> None:
        t = self.transport
        assert t is not None
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        frontend = mode.new_frontend(self.lb, self.el, self.session)
        t.set_protocol(frontend)
        frontend.connection_made(t)
        buf, self.buf = self.buf, b""
        # The bytes were counted neither here nor there: the new owner counts them.
        if buf:
            frontend.data_received(buf)
        if eof and not frontend.eof_received():
            t.close()
