"""The ``max-connections`` limit of a listener (tcp-lb, socks5-server).

Owns: deciding at accept time, in the acceptor thread, whether one more connection
fits under the listener's limit; counting the connections refused for it; logging
the refusals at most once a second; and counting the accepted sockets that are on
their way to a worker loop, so that a burst accepted before any of its sessions
started cannot slip past the limit.

The live count is the listener's sessions (registered by the worker loops as the
first thing they do with an accepted socket) plus those hand-offs in flight.

Must not: close sessions that are already running, or read anything from a refused
connection: it is closed before a byte is read and before any backend connect.
"""

from __future__ import annotations

import _socket
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from vproxy.net.event_loop import EventLoop

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "MAX_MAX_CONNECTIONS",
    "AcceptGate",
    "check_max_connections",
]

_log = logging.getLogger("vproxy.app")

DEFAULT_MAX_CONNECTIONS: Final = 100_000
"""Live sessions a listener accepts unless told otherwise (see docs/operations.md)."""
MAX_MAX_CONNECTIONS: Final = 10_000_000
_LOG_INTERVAL: Final = 1.0


def check_max_connections(value: object) -> int:
    """``value`` if it is a valid ``max-connections``.

    Raises:
        ValueError: Not an integer in 1..10000000.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"max-connections must be 1..{MAX_MAX_CONNECTIONS}, got {value!r}")
    if not 1 <= value <= MAX_MAX_CONNECTIONS:
        raise ValueError(f"max-connections must be 1..{MAX_MAX_CONNECTIONS}, got {value!r}")
    return value


class AcceptGate:
    """Admission at accept for one listener.

    ``live()`` counts the listener's registered sessions. A session started on
    another loop is counted as a hand-off in flight until it registered: the
    hand-off ends (under the gate's lock) in the same step as the start that
    registers it, and :meth:`admit` counts under that lock while any hand-off is in
    flight, so a session is never counted twice (a refusal under the limit) nor
    missed (a session over it).

    Attributes:
        refused: Connections closed at accept because the limit was reached.
    """

    __slots__ = ("_handoffs", "_live", "_lock", "_logged_at", "label", "refused")

    def __init__(self, label: str, live: Callable[[], int]) -> None:
        self.label = label
        self.refused = 0
        self._live = live
        self._handoffs = 0
        self._lock = threading.Lock()
        self._logged_at = -_LOG_INTERVAL

    @property
    def in_flight(self) -> int:
        """Accepted sockets handed to a worker loop that has not started them yet."""
        return self._handoffs

    def admit(self, sock: _socket.socket, limit: int) -> bool:
        """True when a new connection fits (at most ``limit`` sessions).

        Otherwise the socket is closed and counted (call in the acceptor thread,
        the only writer of :attr:`refused`).
        """
        if self._handoffs:
            with self._lock:  # no hand-off ends (and registers) while counting
                fits = self._live() + self._handoffs < limit
        else:
            # Nothing in flight, and only this thread starts hand-offs: no session
            # registers meanwhile.
            fits = self._live() < limit
        if fits:
            return True
        self.refused += 1  # counted before the client can see the close
        sock.close()
        now = time.monotonic()
        if now - self._logged_at >= _LOG_INTERVAL:
            self._logged_at = now
            _log.warning(
                "%s: max-connections %d reached; closing new connections (%d refused so far)",
                self.label,
                limit,
                self.refused,
            )
        return False

    def hand_off(self, el: EventLoop, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on ``el``, counted as in flight until it has run.

        ``fn`` must register its session before it returns (or drop the socket).
        """
        with self._lock:
            self._handoffs += 1
        try:
            el.call_soon(self._run, fn, *args)
        except BaseException:
            with self._lock:
                self._handoffs -= 1
            raise

    def _run(self, fn: Callable[..., object], *args: Any) -> None:
        with self._lock:  # registering and ending the hand-off: one step for admit()
            try:
                fn(*args)
            finally:
                self._handoffs -= 1
