"""What the RESP and HTTP controllers share: one listening socket served on one loop.

Owns: binding in the calling thread (so a bind error is raised to the caller, from
any thread, the loop's own included), starting to serve on the controller's event
loop, the bound address, and stopping: the listener, a start still in progress and
the socket are closed on the loop, from any thread, safe to call twice.

Must not: know the protocol. Each controller makes its server (:meth:`_serve`) and
says what else stopping closes (:meth:`_stopped`, :meth:`_run_stop`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Final

from vproxy.net.event_loop import EventLoop
from vproxy.net.server_sock import bind_listener

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
        self._server: asyncio.AbstractServer | None = None
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
        server, self._server = self._server, None
        starting, self._starting = self._starting, None
        _log.info("%s %s stopped", self.kind, self.name)

        def close() -> None:
            if starting is not None:
                starting.cancel()
            if server is not None:
                server.close()
            sock.close()  # a no-op once the server owns and closed it
            self._stopped()

        self._run_stop(close)

    # -- what each controller provides ------------------------------------------------------
    async def _serve(self, sock: socket.socket) -> None:
        """On the loop: serve ``sock`` (set ``_server``), unless ``stop()`` came first
        (``_sock`` is no longer ``sock``): then close what was made and return."""
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
