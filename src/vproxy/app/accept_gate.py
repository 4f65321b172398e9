"""The ``max-connections`` limit of a listener (tcp-lb, socks5-server).

Owns: deciding at accept time, in the acceptor thread, whether one more connection
fits under the listener's limit; counting the connections refused for it; logging
the refusals at most once a second; and counting the accepted sockets that are on
their way to a worker loop, so that a burst accepted before any of its sessions
started cannot slip past the limit.

The live count is the listener's sessions (registered by the worker loops as the
first thing they do with an accepted socket) plus those hand-offs in flight. With
``workers N`` the limit holds over all the processes: each publishes its count in
memory they share (:class:`SharedCounts`) and adds the others' before admitting.

Must not: close sessions that are already running, or read anything from a refused
connection: it is closed before a byte is read and before any backend connect.
"""

from __future__ import annotations

import _socket
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from vproxy.net.event_loop import EventLoop

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "MAX_MAX_CONNECTIONS",
    "AcceptGate",
    "SharedCounts",
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


class SharedCounts:
    """Live sessions of each listener in each process of ``workers N``.

    A table in memory every process maps (a ``memfd`` the master makes before it
    forks, handed to a restarted worker by descriptor): one row per listener (the
    master assigns rows), one column per process. A process writes only its own
    column, with single aligned 8-byte stores, and reads the others' to add them up.
    A count that goes down is published by :meth:`AcceptGate.publish`, which each
    process calls every :data:`REFRESH_S`; a count that goes up is published at once,
    by the admission itself. So the sum lags behind closed sessions (a refusal a
    little early, for at most that long), never behind admitted ones, but for
    admissions in several processes at the same instant: at most one each over the
    limit.
    """

    __slots__ = ("_cells", "_map", "column", "columns")

    #: listeners a table has room for (a listener past them is limited per process)
    ROWS: Final = 1024
    #: seconds between two publications of every count of a process
    REFRESH_S: Final = 0.1

    def __init__(self, fd: int, columns: int, column: int) -> None:
        if not 0 <= column < columns:
            raise ValueError(f"column {column} of {columns}")
        self.columns = columns
        self.column = column
        self._map = mmap.mmap(fd, self.ROWS * columns * 8)
        self._cells = memoryview(self._map).cast("q")

    @classmethod
    def create(cls, columns: int) -> int:
        """A new zeroed table's descriptor (close-on-exec; make it inheritable to
        hand it to a spawned process)."""
        fd = os.memfd_create("vproxy-live-sessions", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, cls.ROWS * columns * 8)
        except OSError:
            os.close(fd)
            raise
        return fd

    def set(self, row: int, count: int) -> None:
        """Publish this process's ``count`` for listener ``row``."""
        self._cells[row * self.columns + self.column] = count

    def others(self, row: int) -> int:
        """The counts of listener ``row`` in the other processes, summed."""
        start = row * self.columns
        cells = self._cells
        total = 0
        for i in range(start, start + self.columns):
            total += cells[i]
        return total - cells[start + self.column]

    def clear_row(self, row: int) -> None:
        """Zero listener ``row`` in every process (a row no listener uses, to reuse)."""
        start = row * self.columns
        cells = self._cells
        for i in range(start, start + self.columns):
            cells[i] = 0

    def clear_column(self, column: int) -> None:
        """Zero every count of process ``column`` (it died: its sessions are gone)."""
        cells = self._cells
        for row in range(self.ROWS):
            cells[row * self.columns + column] = 0


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

    __slots__ = (
        "_counts",
        "_handoffs",
        "_live",
        "_lock",
        "_logged_at",
        "_row",
        "label",
        "refused",
    )

    def __init__(self, label: str, live: Callable[[], int]) -> None:
        self.label = label
        self.refused = 0
        self._live = live
        self._handoffs = 0
        self._lock = threading.Lock()
        self._logged_at = -_LOG_INTERVAL
        self._counts: SharedCounts | None = None
        self._row = -1

    @property
    def in_flight(self) -> int:
        """Accepted sockets handed to a worker loop that has not started them yet."""
        return self._handoffs

    @property
    def row(self) -> int:
        """The listener's row in the shared counts; -1 when not shared."""
        return self._row

    def share(self, counts: SharedCounts | None, row: int = -1) -> None:
        """Count with the other processes in ``row`` of ``counts`` (None: alone).

        This process's count in the row it leaves is zeroed.
        """
        with self._lock:
            old = self._counts
            if old is not None:
                old.set(self._row, 0)
            self._counts = counts
            self._row = row if counts is not None else -1
            if counts is not None:
                counts.set(row, self._live() + self._handoffs)

    def publish(self) -> None:
        """Publish the live count in the shared counts (if shared): how one that went
        down reaches the other processes."""
        with self._lock:
            counts = self._counts
            if counts is not None:
                counts.set(self._row, self._live() + self._handoffs)

    def admit(self, sock: _socket.socket, limit: int) -> bool:
        """True when a new connection fits (at most ``limit`` sessions).

        Otherwise the socket is closed and counted (call in the acceptor thread,
        the only writer of :attr:`refused`).
        """
        counts = self._counts
        if counts is not None:
            with self._lock:
                live = self._live() + self._handoffs
                row = self._row
                fits = live + counts.others(row) < limit
                counts.set(row, live + 1 if fits else live)  # the admitted one, at once
        elif self._handoffs:
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
