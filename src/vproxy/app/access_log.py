"""Access logs: one JSON line per L4 session, and one per L7 request, when it ends.

Owns: the bounded queue between the listeners' session-end hooks and one writer
thread, the line format (:func:`format_entry`, documented in ``docs/operations.md``),
the destination (a file opened for appending, or standard output) and reopening that
file on demand (``reopen()``, called on SIGHUP so that log rotation works); and
:class:`AcceptClock`, the accept time of each connection by client address, from
which the duration is computed.

Keeps the data path light: the hook reads a few attributes and puts one tuple into a
bounded queue; when the queue is full the entry is dropped and counted, never
waited for. Formatting, encoding and writing happen on the writer thread.

Must not: block or raise into a session's event loop, hold on to sessions after
enqueueing (the tuple keeps plain values and the server object only), or decide
anything about the session.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, Protocol

from vproxy.net.server_sock import format_address

__all__ = [
    "DEFAULT_CAPACITY",
    "MAX_PENDING_ACCEPTS",
    "STDOUT",
    "AcceptClock",
    "AccessLog",
    "Entry",
    "RequestEntry",
    "format_entry",
    "format_request",
]

_log = logging.getLogger("vproxy.app")

DEFAULT_CAPACITY: Final = 16384
"""Entries waiting for the writer; past this new entries are dropped (and counted)."""
MAX_PENDING_ACCEPTS: Final = 65536
"""Accept times kept per listener; past this the oldest is forgotten (its duration is
then ``null``)."""
STDOUT: Final = "stdout"
"""The destination word for standard output."""
_BATCH = 512
_STOP_TIMEOUT = 5.0


class _Backend(Protocol):
    name: str

    @property
    def address_text(self) -> str: ...


# (end time (epoch s), listener kind, listener name, client address, backend server or
#  None, socks5 target "host:port" or None, bytes from client, bytes from server,
#  duration in seconds or None)
Entry = tuple[float, str, str, Any, "_Backend | None", "str | None", int, int, "float | None"]
# (end time (epoch s), listener kind, listener name, client address, backend server or
#  None, method, host or None, target, status (0: none was given), bytes to the client,
#  duration in seconds)
RequestEntry = tuple[
    float, str, str, Any, "_Backend | None", str, "str | None", str, int, int, float
]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _addr(a: Any) -> str | None:
    try:
        return format_address(str(a[0]), int(a[1]))
    except (TypeError, IndexError, ValueError):
        return None


def format_entry(entry: Entry) -> str:
    """The JSON line (without the newline) for one ended session.

    Fields, always all present: ``time`` (end, ISO 8601 UTC, milliseconds),
    ``listener_kind`` (``tcp-lb`` / ``socks5-server``), ``listener``, ``client``
    (``ip:port``), ``backend`` and ``backend_address`` (the server of the upstream, or
    null), ``target`` (socks5: the ``host:port`` connected to; tcp-lb: null),
    ``bytes_from_client``, ``bytes_from_server``, ``duration_ms`` (from accept to
    end, 3 decimals; null when the accept time is unknown) and ``reason``
    (``closed``, or ``error`` when the session never reached a backend or target).
    """
    end, kind, name, client, server, target, from_client, from_server, duration = entry
    connected = server is not None or target is not None
    record = {
        "time": _iso(end),
        "listener_kind": kind,
        "listener": name,
        "client": _addr(client),
        "backend": server.name if server is not None else None,
        "backend_address": server.address_text if server is not None else None,
        "target": target,
        "bytes_from_client": from_client,
        "bytes_from_server": from_server,
        "duration_ms": round(duration * 1000, 3) if duration is not None else None,
        "reason": "closed" if connected else "error",
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def format_request(entry: RequestEntry) -> str:
    """The JSON line (without the newline) for one L7 request.

    Fields, always all present: ``time`` (end of the response, ISO 8601 UTC,
    milliseconds), ``listener_kind``, ``listener``, ``client``, ``backend`` and
    ``backend_address`` (null when no server answered), ``method``, ``host`` (the
    routing hint: Host or ``:authority`` without port, or null), ``target`` (the
    request target or ``:path``), ``status`` (the status the client got; 0 when the
    connection ended before one), ``bytes_to_client`` (the response, head and body)
    and ``duration_ms`` (from the request head to the end of the response).
    """
    end, kind, name, client, server, method, host, target, status, to_client, duration = entry
    record = {
        "time": _iso(end),
        "listener_kind": kind,
        "listener": name,
        "client": _addr(client),
        "backend": server.name if server is not None else None,
        "backend_address": server.address_text if server is not None else None,
        "method": method,
        "host": host,
        "target": target,
        "status": status,
        "bytes_to_client": to_client,
        "duration_ms": round(duration * 1000, 3),
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _format(entry: Entry | RequestEntry) -> str:
    if len(entry) == 11:
        return format_request(entry)  # type: ignore[arg-type]
    return format_entry(entry)  # type: ignore[arg-type]


class AcceptClock:
    """Accept times (and socks5 targets) by client address, for one listener (bounded).

    :meth:`accepted` runs on the acceptor thread, :meth:`target` and :meth:`pop` on
    worker threads; single dict operations are atomic in CPython, and the eviction of
    the oldest entry tolerates a concurrent change.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[Any, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def accepted(self, client: Any) -> None:
        """Note that ``client`` was accepted now."""
        entries = self._entries
        if len(entries) >= MAX_PENDING_ACCEPTS:
            # Connections that never became sessions (closed at once) leave entries.
            with contextlib.suppress(StopIteration, RuntimeError, KeyError):
                del entries[next(iter(entries))]
        entries[client] = [time.monotonic(), None]

    def target(self, client: Any, target: str) -> None:
        """Note where ``client``'s session was connected (socks5: ``host:port``)."""
        entry = self._entries.get(client)
        if entry is not None:
            entry[1] = target

    def pop(self, client: Any) -> tuple[float | None, str | None]:
        """Forget ``client``: (seconds since its accept, its target), None if unknown."""
        entry = self._entries.pop(client, None)
        if entry is None:
            return None, None
        return time.monotonic() - entry[0], entry[1]


class AccessLog:
    """A bounded queue of ended sessions and the thread that writes them.

    Args:
        destination: A file path (opened for appending, created if missing), or
            :data:`STDOUT`.
        capacity: Entries that may wait for the writer.

    Raises:
        OSError: The file cannot be opened (so a bad path stops start-up).
    """

    def __init__(self, destination: str | Path, *, capacity: int = DEFAULT_CAPACITY) -> None:
        self.destination = str(destination)
        self._to_stdout = self.destination == STDOUT
        self._queue: queue.Queue[Entry | RequestEntry | None] = queue.Queue(maxsize=capacity)
        self._stream: IO[str] = self._open()
        self._reopen = threading.Event()
        self._drop_lock = threading.Lock()
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vproxy-access-log", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"AccessLog({self.destination!r})"

    def _open(self) -> IO[str]:
        if self._to_stdout:
            return sys.stdout
        return open(self.destination, "a", encoding="utf-8")

    # -- the hook side (any thread) ----------------------------------------------------
    def session_ended(
        self,
        kind: str,
        listener: str,
        client: Any,
        server: _Backend | None,
        target: str | None,
        bytes_from_client: int,
        bytes_from_server: int,
        duration: float | None,
    ) -> None:
        """Queue one ended session; never blocks (a full queue drops and counts)."""
        self._put(
            (
                time.time(),
                kind,
                listener,
                client,
                server,
                target,
                bytes_from_client,
                bytes_from_server,
                duration,
            )
        )

    def _put(self, entry: Entry | RequestEntry) -> None:
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            with self._drop_lock:
                self.dropped += 1

    def request_ended(
        self,
        kind: str,
        listener: str,
        client: Any,
        server: _Backend | None,
        method: str,
        host: str | None,
        target: str,
        status: int,
        bytes_to_client: int,
        duration: float,
    ) -> None:
        """Queue one finished L7 request; never blocks (a full queue drops and counts)."""
        self._put(
            (
                time.time(),
                kind,
                listener,
                client,
                server,
                method,
                host,
                target,
                status,
                bytes_to_client,
                duration,
            )
        )

    @property
    def pending(self) -> int:
        """Entries waiting for the writer now."""
        return self._queue.qsize()

    def reopen(self) -> None:
        """Reopen the file before the next write (after it was rotated); thread-safe."""
        self._reopen.set()
        if self._queue.empty():
            # Wake the writer so the old file is released without waiting for traffic.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)

    def close(self) -> None:
        """Write what is queued, stop the writer and close the file; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(None, timeout=_STOP_TIMEOUT)
        except queue.Full:
            pass
        self._thread.join(_STOP_TIMEOUT)
        if not self._to_stdout:
            with contextlib.suppress(OSError):
                self._stream.close()

    # -- the writer thread ---------------------------------------------------------------
    def _batches(self) -> Iterator[list[Entry | RequestEntry]]:
        q = self._queue
        while True:
            first = q.get()
            batch: list[Entry | RequestEntry] = [] if first is None else [first]
            stop = first is None and self._closed
            while len(batch) < _BATCH and not stop:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = self._closed
                    continue
                batch.append(item)
            yield batch
            if stop:
                return

    def _run(self) -> None:
        for batch in self._batches():
            if self._reopen.is_set():
                self._reopen.clear()
                self._do_reopen()
            if not batch:
                continue
            text = "".join(_format(e) + "\n" for e in batch)
            try:
                self._stream.write(text)
                self._stream.flush()
            except (OSError, ValueError) as exc:
                self.write_errors += 1
                with self._drop_lock:
                    self.dropped += len(batch)
                if self.write_errors == 1 or self.write_errors % 1000 == 0:
                    _log.error("access log %s: write failed: %s", self.destination, exc)
                continue
            self.written += len(batch)

    def _do_reopen(self) -> None:
        if self._to_stdout:
            return
        try:
            stream = self._open()
        except OSError as exc:
            _log.error(
                "access log %s: reopen failed, keeping the old file: %s", self.destination, exc
            )
            return
        old, self._stream = self._stream, stream
        with contextlib.suppress(OSError):
            old.close()
