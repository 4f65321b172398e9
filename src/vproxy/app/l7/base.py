"""What every application-layer mode of a tcp-lb shares (SPEC §2).

Owns: starting a client connection of an L7 mode on a worker loop (plain or TLS, with
the mode's ALPN offer), the :class:`L7Session` the control plane lists and counts for
that connection, choosing a backend server for one request (upstream hint, retry on
another server when a connect fails) and opening a backend connection to it.

Must not: parse any protocol (the modes in this package do, driving the sans-IO
processors), or pool connections (each mode pools the way its protocol allows).

A mode is an object with a ``name``, an ``alpn`` tuple (what TLS offers; empty for
non-HTTP modes) and ``new_frontend(lb, el, session) -> asyncio.Protocol``; that
protocol becomes the client transport's protocol (after the TLS handshake, if any).
It must call :meth:`L7Session.finish` once, when the client connection is gone, and
it must close its client transport when :meth:`L7Session.abort` aborts it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from vproxy.component.server_group import Server
from vproxy.net.connection import next_session_id
from vproxy.net.event_loop import EventLoop
from vproxy.net.server_sock import ACCEPTED_NODELAY

if TYPE_CHECKING:
    from vproxy.app.tcp_lb import TcpLB

__all__ = [
    "MAX_CONNECT_ATTEMPTS",
    "L7End",
    "L7Limits",
    "L7Mode",
    "L7Session",
    "NoBackend",
    "choose_server",
    "connect_server",
    "open_connection",
    "start_l7",
    "tls_info",
]

_log = logging.getLogger("vproxy.app")

MAX_CONNECT_ATTEMPTS: Final = 3
"""Servers tried for one request before it fails (a server is not tried twice)."""

_P = TypeVar("_P", bound=asyncio.BaseProtocol)


@dataclass(frozen=True, slots=True)
class L7Limits:
    """Limits of the L7 modes, per tcp-lb (``TcpLB.l7_limits``; modes read it per
    connection, so a change applies to new connections).

    Attributes:
        head_timeout: ms a client has for a whole request head (HTTP/1.x: from the
            first byte of the request, or from the end of the previous response on
            an idle keep-alive connection; h2: the preface and SETTINGS). Past it:
            408 (HTTP/1.x) or GOAWAY, then close.
        max_head_size: Bytes of one request head (HTTP/1.x) or decoded header list
            (h2, SETTINGS_MAX_HEADER_LIST_SIZE).
        max_headers: Fields in one request head.
        max_concurrent_streams: h2 streams a client may have open at once.
        max_pipelined: Requests (or frames) of one client in flight at once; beyond
            it the proxy stops reading that client until responses go out.
    """

    head_timeout: int = 10_000
    max_head_size: int = 32 * 1024
    max_headers: int = 100
    max_concurrent_streams: int = 100
    max_pipelined: int = 64


class NoBackend(Exception):
    """No healthy server could be connected for a request."""


class L7Mode(Protocol):
    """An application-layer mode of a tcp-lb (``http/1.x``, ``h2``, ``dubbo``, ...)."""

    @property
    def name(self) -> str:
        """The ``protocol`` value."""

    @property
    def alpn(self) -> tuple[str, ...]:
        """ALPN protocols a TLS listener offers in this mode, preferred first."""

    def new_frontend(self, lb: TcpLB, el: EventLoop, session: L7Session) -> asyncio.Protocol:
        """The protocol for one accepted client connection."""

    def close(self) -> None:
        """Close idle pooled backend connections (thread-safe: on their own loops)."""


class L7End:
    """Byte counters of one side of an L7 session (what ``bytes-in``/``-out`` read).

    Attributes:
        transport: The client's transport once connected (front side only).
        bytes_in: Bytes read from this side.
        bytes_out: Bytes written to this side.
    """

    __slots__ = ("bytes_in", "bytes_out", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.bytes_in = 0
        self.bytes_out = 0


class L7Session:
    """One client connection of an L7 mode, as the control plane lists it.

    Shaped like :class:`vproxy.net.connection.Session` where the control plane reads
    it: ``front`` counts the client's bytes; ``back`` counts the bytes read from and
    written to backends for this client, whichever backend connections carried them;
    ``server`` is the server of the latest request.
    """

    __slots__ = (
        "__weakref__",
        "_loop",
        "back",
        "client",
        "closed",
        "el",
        "front",
        "id",
        "on_close",
        "requests",
        "server",
    )

    def __init__(
        self, el: EventLoop, client: tuple[Any, ...], on_close: Callable[[L7Session], None]
    ) -> None:
        self.id = next_session_id()
        self.el = el
        self._loop = el.loop
        self.client = client
        self.front = L7End()
        self.back = L7End()
        self.server: Server | None = None
        self.requests = 0
        self.closed = False
        self.on_close = on_close

    def __repr__(self) -> str:
        return f"L7Session({self.id}, client={self.client}, requests={self.requests})"

    @property
    def bytes_from_client(self) -> int:
        """Bytes read from the client."""
        return self.front.bytes_in

    @property
    def bytes_from_server(self) -> int:
        """Bytes read from backends for this client."""
        return self.back.bytes_in

    def abort(self) -> None:
        """Close the client connection now (call in the loop's thread)."""
        t = self.front.transport
        if t is not None and not t.is_closing():
            t.abort()  # the mode's connection_lost cleans up and calls finish()
        elif t is None:
            self.finish()

    def finish(self) -> None:
        """The client connection is gone: report it once."""
        if not self.closed:
            self.closed = True
            self.on_close(self)


def tls_info(transport: asyncio.BaseTransport) -> tuple[str | None, str | None]:
    """``(sni, alpn)`` of a TLS transport; ``(None, None)`` for plain TCP."""
    obj = transport.get_extra_info("ssl_object")
    if not isinstance(obj, ssl.SSLObject):
        return None, None
    from vproxy.component.cert_key import sni_server_name

    return sni_server_name(obj), obj.selected_alpn_protocol()


def start_l7(lb: TcpLB, mode: L7Mode, el: EventLoop, sock: socket.socket, addr: Any) -> None:
    """Serve one accepted client connection in ``mode`` (call in ``el``'s thread)."""
    if not ACCEPTED_NODELAY:  # (on Linux the socket has it from its listener)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()
            return
    session = L7Session(el, addr, lb.l7_closed)
    el.session_started(session)
    lb.l7_sessions.add(session)
    tls = lb.tls
    try:
        frontend = mode.new_frontend(lb, el, session)
    except Exception:
        _log.exception("%s: %s frontend failed to start", lb.name, mode.name)
        sock.close()
        session.finish()
        return
    task = el.loop.create_task(_connect_accepted(el, sock, frontend, session, tls))
    lb.tls_tasks.add(task)
    task.add_done_callback(lb.tls_tasks.discard)


async def _connect_accepted(
    el: EventLoop, sock: socket.socket, frontend: asyncio.Protocol, session: L7Session, tls: Any
) -> None:
    try:
        if tls is None:
            await el.loop.connect_accepted_socket(lambda: frontend, sock)
        else:
            await el.loop.connect_accepted_socket(
                lambda: frontend,
                sock,
                ssl=tls.context,
                ssl_handshake_timeout=tls.handshake_timeout,
            )
    except Exception as exc:  # ssl.SSLError is an OSError; plaintext, garbage, stalls
        _log.debug("L7 connection from %s failed to start: %r", session.client, exc)
        sock.close()
        session.finish()


def choose_server(
    lb: TcpLB, source: str | None, hint: str | None, tried: list[Server]
) -> Server | None:
    """The server for the next attempt of one request: the upstream's choice, or
    another healthy server of the groups tried when that one was tried already."""
    if len(tried) >= MAX_CONNECT_ATTEMPTS:
        return None
    server = lb.upstream.next(source, hint=hint)
    if server is None or server in tried:
        server = _untried(server, tried)
    return server


def _untried(server: Server | None, tried: list[Server]) -> Server | None:
    groups = {s.group for s in tried if s.group is not None}
    if server is not None and server.group is not None:
        groups.add(server.group)
    for g in groups:
        for s in g.healthy_servers:
            if s not in tried and s.weight > 0:
                return s
    return None


async def open_connection(
    loop: asyncio.AbstractEventLoop, server: Server, factory: Callable[[], _P]
) -> tuple[asyncio.Transport, _P]:
    """Connect to ``server`` within its group's connect timeout (TCP_NODELAY on).

    Raises:
        OSError: Refused, unreachable, or timed out (``TimeoutError``); the failure is
            counted on the server.
    """
    timeout = server.group.connect_timeout_ms if server.group is not None else 1000
    try:
        async with asyncio.timeout(timeout / 1000):
            transport, protocol = await loop.create_connection(factory, server.host, server.port)
    except OSError:
        server.connect_failed()
        raise
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    return transport, protocol


async def connect_server(
    lb: TcpLB,
    loop: asyncio.AbstractEventLoop,
    source: str | None,
    hint: str | None,
    factory: Callable[[Server], _P],
) -> tuple[Server, asyncio.Transport, _P]:
    """Choose a server and connect to it, trying others when a connect fails.

    Raises:
        NoBackend: No server was healthy, or every attempt failed.
    """
    tried: list[Server] = []
    while (server := choose_server(lb, source, hint, tried)) is not None:
        tried.append(server)
        try:
            transport, protocol = await open_connection(loop, server, lambda: factory(server))
        except OSError as exc:
            _log.debug("%s: connect to %s failed: %r", lb.name, server.address_text, exc)
            continue
        return server, transport, protocol
    lb.proxy.failed_no_backend += 1
    raise NoBackend(f"no backend for {hint or 'request'} after {len(tried)} attempt(s)")
