"""TLS termination in front of a tcp-lb (SPEC §1 "CertKey", "TcpLB" cert-key option).

Owns: wrapping an accepted socket in TLS with the listener's cert-keys (chosen by
SNI), the handshake deadline, reading the SNI as the upstream hint, connecting a
backend (trying another server when a connect fails) and handing both sides to the
relay in transport mode.

Must not: choose certificates itself (``component/cert_key.py`` does) or parse what
flows after the handshake.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any, cast

from vproxy.app.l7.base import choose_server
from vproxy.component.cert_key import TlsServerConfig, sni_server_name
from vproxy.component.server_group import Server
from vproxy.net.connection import Session
from vproxy.net.event_loop import EventLoop

if TYPE_CHECKING:
    from vproxy.app.tcp_lb import TcpLB

__all__ = ["serve_tls"]

_log = logging.getLogger("vproxy.app")


def serve_tls(
    lb: TcpLB, tls: TlsServerConfig, el: EventLoop, sock: socket.socket, addr: Any
) -> None:
    """Start one TLS session on ``el`` (call in that loop's thread)."""
    proxy = lb.proxy
    session = Session(
        el,
        addr,
        lb.in_buffer_size,
        lb.out_buffer_size,
        lb.timeout,
        proxy._closed,
        half_closed_timeout_ms=lb.half_closed_timeout,
    )
    el.session_started(session)
    proxy.sessions.add(session)
    front = _TlsFront(lb, session)
    task = el.loop.create_task(_handshake(el, sock, tls, front, session, proxy._closed))
    lb.tls_tasks.add(task)
    task.add_done_callback(lb.tls_tasks.discard)


async def _handshake(
    el: EventLoop,
    sock: socket.socket,
    tls: TlsServerConfig,
    front: _TlsFront,
    session: Session,
    closed: Any,
) -> None:
    try:
        await el.loop.connect_accepted_socket(
            lambda: front,
            sock,
            ssl=tls.context,
            ssl_handshake_timeout=tls.handshake_timeout,
        )
    except (OSError, TimeoutError, ConnectionError) as exc:
        # Plaintext, garbage, a stalled or refused handshake: close, count nothing.
        _log.debug("TLS handshake from %s failed: %r", session.client, exc)
        sock.close()
        closed(session)
    except Exception as exc:  # ssl.SSLError is an OSError; anything else is logged
        _log.debug("TLS handshake from %s failed: %r", session.client, exc)
        sock.close()
        closed(session)


class _TlsFront(asyncio.Protocol):
    """The client side until a backend is connected; then the relay takes over."""

    def __init__(self, lb: TcpLB, session: Session) -> None:
        self.lb = lb
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.handed_over = False
        self.early: list[bytes] = []
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called once the handshake is done.
        t = cast(asyncio.Transport, transport)
        self.transport = t
        t.pause_reading()
        hint = sni_server_name(t.get_extra_info("ssl_object"))
        task = self.session._loop.create_task(self._connect(hint))
        self.lb.tls_tasks.add(task)
        task.add_done_callback(self.lb.tls_tasks.discard)

    def data_received(self, data: bytes) -> None:
        self.early.append(data)  # before hand-over (a loop may read once after pausing)

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handed_over:
            self.handed_over = True
            self.session.abort()
            self.lb.proxy._closed(self.session)

    async def _connect(self, hint: str | None) -> None:
        session, lb = self.session, self.lb
        source = str(session.client[0])
        tried: list[Server] = []
        server: Server | None = None
        while True:
            server = choose_server(lb, source, hint, tried)
            if server is None:
                break
            tried.append(server)
            back = session.reset_backend()
            try:
                timeout = server.group.connect_timeout_ms if server.group else 1000
                async with asyncio.timeout(timeout / 1000):
                    await session._loop.create_connection(back.itself, server.host, server.port)
            except (OSError, TimeoutError):
                server.connect_failed()
                server = None
                continue
            break
        t = self.transport
        if server is None or t is None or t.is_closing() or self.handed_over:
            if server is None:
                lb.proxy.failed_no_backend += 1
            if t is not None:
                t.close()
            return
        self.handed_over = True
        session.server = server
        server.session_opened(session)
        front = session.front
        t.set_protocol(front)
        front.connection_made(t)
        if self.early:
            front.data_received(b"".join(self.early))
        if self.eof:
            front.eof_received()
        session.link()
