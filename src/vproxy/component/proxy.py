"""The proxy: accept → worker loop → connector → connect → relay (SPEC §1 "Proxy").

Owns: handing each accepted socket to a worker loop, asking the connector for a
backend, connecting with a timeout (and retrying on another server when a connect
fails), and starting the :class:`~vproxy.net.connection.Session` relay; the live
session list of one listener.

Must not: parse protocols, or know where its settings come from: the tcp-lb (or any
other owner) passes a :class:`ProxyConfig`-like object that may change at run time,
and every new session reads it afresh.
"""

from __future__ import annotations

import _socket
import logging
import socket
from collections.abc import Callable
from typing import Any, Final, Protocol

from vproxy.component.server_group import Server
from vproxy.net.connection import Session
from vproxy.net.event_loop import EventLoop, EventLoopError, EventLoopGroup
from vproxy.net.server_sock import ACCEPTED_NODELAY

__all__ = ["Connector", "Proxy", "ProxySettings"]

_log = logging.getLogger("vproxy.component")

MAX_CONNECT_ATTEMPTS: Final = 3

_IPPROTO_TCP: Final = socket.IPPROTO_TCP
_TCP_NODELAY: Final = socket.TCP_NODELAY
_ACCEPTED_NODELAY: Final = ACCEPTED_NODELAY  # (a Final is a C static in compiled code)


class Connector(Protocol):
    """Chooses the backend for a new session."""

    def next(self, source: str | None = None, hint: str | None = None) -> Server | None:
        """A healthy server, or None."""


class ProxySettings(Protocol):
    """What the proxy reads for every new session (a tcp-lb provides it)."""

    @property
    def name(self) -> str: ...

    @property
    def upstream(self) -> Connector: ...

    @property
    def worker_elg(self) -> EventLoopGroup: ...

    @property
    def in_buffer_size(self) -> int: ...

    @property
    def out_buffer_size(self) -> int: ...

    @property
    def timeout(self) -> int: ...

    @property
    def half_closed_timeout(self) -> int | None: ...


def _connect_timeout_ms(server: Server) -> int:
    group = server.group
    return group.connect_timeout_ms if group is not None else 1000


class Proxy:
    """Relays every connection accepted by a server socket to a chosen backend."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.sessions: set[Session] = set()
        self.failed_no_backend = 0
        self.on_session_closed: Callable[[Session], None] | None = None

    # Runs in the acceptor loop's thread.
    def on_accept(self, sock: _socket.socket, addr: Any) -> None:
        """Hand an accepted socket to the next worker loop.

        When that loop is the acceptor's own (acceptor and worker groups share
        loops), the session starts right here: no thread hand-off.
        """
        try:
            el = self.settings.worker_elg.next()
        except EventLoopError:
            _log.error("%s: no worker event loop; closing accepted connection", self.settings.name)
            sock.close()
            return
        if el.in_loop_thread:
            self._start(el, sock, addr)
        else:
            el.call_soon(self._start, el, sock, addr)

    # Runs in the worker loop's thread from here on.
    def _start(self, el: EventLoop, sock: _socket.socket, addr: Any) -> None:
        cfg = self.settings
        if not _ACCEPTED_NODELAY:  # (on Linux the socket has it from its listener)
            try:
                sock.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
            except OSError:
                sock.close()  # the client is already gone
                return
        session = Session(
            el,
            addr,
            cfg.in_buffer_size,
            cfg.out_buffer_size,
            cfg.timeout,
            self._closed,
            sock=sock,
            half_closed_timeout_ms=cfg.half_closed_timeout,
        )
        el.session_started(session)
        self.sessions.add(session)
        _Attempt(self, session, addr[0]).next()

    def _closed(self, session: Session) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        server = session.server
        if server is not None:
            server.session_closed(session, session.back.bytes_in, session.front.bytes_in)
        session.el.session_done(session)
        hook = self.on_session_closed
        if hook is not None:
            hook(session)

    def close_sessions(self) -> None:
        """Abort every live session (thread-safe: each closes on its own loop)."""
        for s in list(self.sessions):
            if s.el.in_loop_thread:
                s.abort()
                continue
            loop = s._loop
            if not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(s.abort)
                except RuntimeError:
                    pass  # closed meanwhile


class _Attempt:
    """Connects one session's backend: a server from the connector, then others.

    A failed connect counts against the server and the next one is tried, up to
    :data:`MAX_CONNECT_ATTEMPTS`; a server is not tried twice.
    """

    __slots__ = ("proxy", "server", "session", "source", "tried")

    def __init__(self, proxy: Proxy, session: Session, source: str) -> None:
        self.proxy = proxy
        self.session = session
        self.source = source
        self.tried: list[Server] = []
        self.server: Server | None = None

    def next(self) -> None:
        session = self.session
        tried = self.tried
        server: Server | None = None
        if len(tried) < MAX_CONNECT_ATTEMPTS:
            server = self.proxy.settings.upstream.next(self.source)
            if server is not None and server in tried:
                server = _untried(server, tried)
        if server is None:
            self.proxy.failed_no_backend += 1
            session.abort()
            return
        tried.append(server)
        self.server = server
        session.connect(
            server.host,
            server.port,
            _connect_timeout_ms(server) / 1000,
            self.done,
            client_first=True,
        )

    def done(self, error: OSError | None) -> None:
        server = self.server
        assert server is not None
        session = self.session
        if error is not None:
            server.connect_failed()
            _log.debug("connect to %s failed: %r", server.address_text, error)
            if not session.closed:
                self.next()
            return
        session.server = server
        server.session_opened(session)
        session.link()


def _untried(server: Server, tried: list[Server]) -> Server | None:
    group = server.group
    if group is None:
        return None
    for s in group.healthy_servers:
        if s not in tried and s.weight > 0:
            return s
    return None
