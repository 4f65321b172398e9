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

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, Protocol

from vproxy.component.server_group import Server
from vproxy.net.connection import Session
from vproxy.net.event_loop import EventLoop, EventLoopError, EventLoopGroup

__all__ = ["Connector", "Proxy", "ProxySettings"]

_log = logging.getLogger("vproxy.component")

MAX_CONNECT_ATTEMPTS = 3


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


def _connect_timeout_ms(server: Server) -> int:
    group = server.group
    return group.health_config.timeout if group is not None else 1000


class Proxy:
    """Relays every connection accepted by a server socket to a chosen backend."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.sessions: set[Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.failed_no_backend = 0
        self.on_session_closed: Callable[[Session], None] | None = None

    # Runs in the acceptor loop's thread.
    def on_accept(self, sock: socket.socket, addr: Any) -> None:
        """Hand an accepted socket to the next worker loop."""
        try:
            el = self.settings.worker_elg.next()
        except EventLoopError:
            _log.error("%s: no worker event loop; closing accepted connection", self.settings.name)
            sock.close()
            return
        el.call_soon(self._start, el, sock, addr)

    # Runs in the worker loop's thread.
    def _start(self, el: EventLoop, sock: socket.socket, addr: Any) -> None:
        task = el.loop.create_task(self._serve(el, sock, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, el: EventLoop, sock: socket.socket, addr: Any) -> None:
        cfg = self.settings
        loop = el.loop
        source = addr[0]
        session = Session(
            el, addr, cfg.in_buffer_size, cfg.out_buffer_size, cfg.timeout, self._closed
        )
        el.session_started()
        self.sessions.add(session)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server = await self._connect(loop, session, source)
            if server is None:
                self.failed_no_backend += 1
                sock.close()
                self._closed(session)
                return
            session.server = server
            server.session_opened(session)
            await loop.connect_accepted_socket(lambda: session.front, sock)
        except asyncio.CancelledError:
            sock.close()
            session.abort()
            self._closed(session)
            raise
        except Exception as exc:
            _log.debug("%s: session %s failed to start: %s", cfg.name, session.id, exc)
            sock.close()
            session.abort()
            self._closed(session)
            return
        session.link()

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, session: Session, source: str
    ) -> Server | None:
        """Connect the session's backend side; try other servers when one fails."""
        upstream = self.settings.upstream
        tried: list[Server] = []
        for _ in range(MAX_CONNECT_ATTEMPTS):
            server = upstream.next(source)
            if server is None:
                return None
            if server in tried:
                server = _untried(server, tried)
                if server is None:
                    return None
            tried.append(server)
            try:
                async with asyncio.timeout(_connect_timeout_ms(server) / 1000):
                    back = session.reset_backend()
                    await loop.create_connection(back.itself, server.host, server.port)
            except (OSError, TimeoutError) as exc:
                server.connect_failed()
                _log.debug("connect to %s failed: %r", server.address_text, exc)
                continue
            return server
        return None

    def _closed(self, session: Session) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        server = session.server
        if server is not None:
            server.session_closed(session, session.back.bytes_in, session.front.bytes_in)
        session.el.session_done()
        hook = self.on_session_closed
        if hook is not None:
            hook(session)

    def close_sessions(self) -> None:
        """Abort every live session (thread-safe: each closes on its own loop)."""
        for s in list(self.sessions):
            loop = s._loop
            if not loop.is_closed():
                loop.call_soon_threadsafe(s.abort)


def _untried(server: Server, tried: list[Server]) -> Server | None:
    group = server.group
    if group is None:
        return None
    for s in group.healthy_servers:
        if s not in tried and s.weight > 0:
            return s
    return None
