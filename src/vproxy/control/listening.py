"""What the RESP and HTTP controllers share: one listening socket served on one loop.

Owns: binding in the calling thread (so a bind error is raised to the caller, from
any thread, the loop's own included), accepting on the controller's event loop, the
bound address, and stopping: the listener, a start still in progress, the
connections accepted but not yet handed to their protocol, and the socket are closed
on the loop, from any thread, safe to call twice.

It accepts by itself (a reader on the listening socket, then
``connect_accepted_socket``) rather than with ``loop.create_server``: closing an
asyncio or uvloop ``Server`` in the instant it accepts could leave an accepted socket
open with no transport (in Python 3.11, a transport made after ``Server.close()``
fails in its ``__init__`` and the error is swallowed), the client connected to
nothing until the garbage collector found it. Here a stop cancels what is in flight
and closes each socket itself.

Must not: know the protocol. Each controller makes its protocol factory and starts
accepting (:meth:`_serve`, :meth:`_listen`) and says what else stopping closes
(:meth:`_stopped`, :meth:`_run_stop`).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
from collections.abc import Callable
from typing import Final

from vproxy.net.event_loop import EventLoop
from vproxy.net.server_sock import ACCEPT_BATCH, BACKOFF_ERRNOS, BACKOFF_SECONDS, bind_listener

#: makes the protocol of one accepted connection
ProtocolFactory = Callable[[], asyncio.BaseProtocol]

__all__ = ["START_TIMEOUT", "ListeningController"]

_log = logging.getLogger("vproxy.control")

#: seconds ``start()`` from another thread waits for the loop to begin serving
START_TIMEOUT: Final = 10.0


class ListeningController:
    """A controller's listener; ``start()``/``stop()`` from any thread."""

    def __init__(self, kind: str, name: str, address: tuple[str, int], el: EventLoop) -> None:
        self.kind = kind  # "resp-controller", "http-controller": in messages and logs
        self.name = name
        self.el = el
        self._requested = address
        self._bound: tuple[str, int] | None = None
        self._sock: socket.socket | None = None
        self._factory: ProtocolFactory | None = None  # set while accepting
        self._handing: set[asyncio.Task[object]] = set()  # accepted, protocol not yet made
        self._starting: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.address!r})"

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)`` once started, else the one asked for."""
        return self._bound or self._requested

    def start(self) -> None:
        """Bind and start serving.

        The socket is bound in the calling thread, so a bind error is raised here even
        when called from the loop's own thread (e.g. by a command that a client of
        another controller sent); serving then begins on the loop's next turn
        (connections wait in the backlog meanwhile).

        Raises:
            OSError: The address cannot be bound.
            RuntimeError: The controller was already started.
        """
        if self._sock is not None:
            raise RuntimeError(f"{self.kind} {self.name} is already started")
        host, port = self._requested
        sock = bind_listener(host, port, reuse_port=False)
        self._sock = sock
        sockname = sock.getsockname()
        self._bound = (str(sockname[0]), int(sockname[1]))
        try:
            if self.el.in_loop_thread:
                self._starting = self.el.loop.create_task(self._serve(sock))
            else:
                self.el.run_coroutine(self._serve(sock)).result(START_TIMEOUT)
        except BaseException:
            self._sock = None
            sock.close()
            raise
        _log.info("%s %s listening on %s:%d", self.kind, self.name, *self._bound)

    def stop(self) -> None:
        """Stop listening and close every client connection; safe to call twice."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        starting, self._starting = self._starting, None
        _log.info("%s %s stopped", self.kind, self.name)

        def close() -> None:
            if starting is not None:
                starting.cancel()
            if self._factory is not None:
                self._factory = None
                loop = self.el.loop
                if not loop.is_closed():
                    loop.remove_reader(sock.fileno())
            for task in list(self._handing):
                task.cancel()  # its done-callback closes the socket if nothing else will
            sock.close()
            self._stopped()

        self._run_stop(close)

    def _listen(self, sock: socket.socket, factory: ProtocolFactory) -> bool:
        """On the loop: start accepting on ``sock``, each connection served by a protocol
        from ``factory``; False (and nothing done) if ``stop()`` came first."""
        if self._sock is not sock:
            return False
        self._factory = factory
        self.el.loop.add_reader(sock.fileno(), self._accept_ready, sock)
        return True

    def _accept_ready(self, sock: socket.socket) -> None:
        loop = self.el.loop
        for _ in range(ACCEPT_BATCH):
            factory = self._factory
            if factory is None or self._sock is not sock:
                return  # stopped by a connection of this batch
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in BACKOFF_ERRNOS:
                    _log.warning(
                        "%s %s: accept: %s; pausing accepts for %.0f ms",
                        self.kind,
                        self.name,
                        exc.strerror,
                        BACKOFF_SECONDS * 1000,
                    )
                    loop.remove_reader(sock.fileno())
                    loop.call_later(BACKOFF_SECONDS, self._resume, sock)
                elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    _log.error("%s %s: accept failed: %s", self.kind, self.name, exc)
                return
            conn.setblocking(False)
            task: asyncio.Task[object] = loop.create_task(
                loop.connect_accepted_socket(factory, conn)
            )
            self._handing.add(task)
            task.add_done_callback(functools.partial(self._handed, conn))

    def _handed(self, conn: socket.socket, task: asyncio.Task[object]) -> None:
        self._handing.discard(task)
        if task.cancelled():
            conn.close()  # stopped before its transport was made (or it closed its own)
        elif (exc := task.exception()) is not None:
            # making the transport or the protocol failed: the transport, if any, closed
            # the socket; this closes it if none was made
            _log.debug("%s %s: an accepted connection failed: %r", self.kind, self.name, exc)
            conn.close()

    def _resume(self, sock: socket.socket) -> None:
        if self._factory is not None and self._sock is sock:
            self.el.loop.add_reader(sock.fileno(), self._accept_ready, sock)

    # -- what each controller provides ------------------------------------------------------
    async def _serve(self, sock: socket.socket) -> None:
        """On the loop: make the protocol factory and :meth:`_listen`; if ``stop()``
        came first (``_listen`` says False), close what was made and return."""
        raise NotImplementedError

    def _stopped(self) -> None:
        """On the loop, once the listener is closed: close what else the controller has."""

    def _run_stop(self, close: Callable[[], None]) -> None:
        """Run ``close`` on the loop and wait for it (at once on the loop's own thread,
        or when the loop is gone: a dead loop took its transports with it)."""
        if self.el.in_loop_thread or not self.el.alive:
            close()
            return
        try:
            self.el.call(close)
        except RuntimeError:
            close()  # the loop stopped meanwhile
