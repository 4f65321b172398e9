"""Worker processes that share the listeners: ``workers N`` (docs/multi-process.md).

Owns: forking the workers before the master starts any thread, one channel per
worker (a Unix socket pair, newline-delimited JSON, one request and one answer at a
time), replicating every change the master's executor makes (as its canonical command
text, in order, waiting for every worker), sending the workers the UP/DOWN edges of
the master's health checks (workers check nothing themselves), replaying the
configuration and the health flags into a worker that (re)starts, giving every
listener a row in the live-session counts all processes share (``max-connections``
over all of them), summing the workers' counters and live sessions for ``list``,
``list-detail event-loop``, ``/metrics`` and ``/api/v1/status`` (and reading each
process's state for the ``vproxy_worker_*`` families), finding their connections
and sessions for ``list``, ``list-detail`` and ``force-remove``, restarting a
worker that dies and stopping them all.

The master is one of the N data-plane processes: it keeps the control plane
(controllers, executor, persistence) and serves traffic like the N-1 workers, each of
which runs an :class:`~vproxy.control.application.Application` replica with no
controllers and no persistence. Every listener is bound with ``SO_REUSEPORT``.

Must not: change state itself (the executors do), or fork once a thread runs (a
restarted worker is a fresh interpreter started with ``posix_spawn``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from vproxy.app.accept_gate import SharedCounts
from vproxy.component.server_group import set_edge_observer, set_local_health_checks
from vproxy.control.command import Action, Command, ConflictError, ResourceType, format_command
from vproxy.control.command.values import Address
from vproxy.control.metrics import (
    HTTP_CODE_CLASSES,
    AppCollector,
    WorkerReading,
    l7_counters,
    listener_kind,
    server_bytes,
    worker_metrics,
)
from vproxy.net import reuseport
from vproxy.net.server_sock import format_address, set_reuse_port_default

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.process_collector import ProcessCollector

    from vproxy.app.socks5_server import Socks5Server
    from vproxy.app.tcp_lb import TcpLB
    from vproxy.component.server_group import Server, ServerGroup
    from vproxy.control.application import Application
    from vproxy.control.executor import Executor
    from vproxy.control.reply import JsonValue

__all__ = [
    "MAX_WORKERS",
    "MIGRATE_REQ_PATH",
    "Workers",
    "canonical_line",
    "requests_migrate",
    "spawned_worker_main",
]

_log = logging.getLogger("vproxy.control")

MAX_WORKERS = 64
APPLY_TIMEOUT = 10.0
"""Seconds a worker has to apply one command before it is restarted."""
STATS_TIMEOUT = 2.0
HELLO_TIMEOUT = 30.0
"""Seconds a (re)started worker has to import and build its application."""
RESTART_INTERVAL = 1.0
MIGRATE_REQ_PATH: Final = "/proc/sys/net/ipv4/tcp_migrate_req"
"""The kernel setting (Linux 5.14+, per network namespace) that hands the connections
queued on a closed listener to another listener of its ``SO_REUSEPORT`` group instead
of resetting them."""
"""At most one start per worker slot per second (a worker that dies at once)."""
STOP_TIMEOUT = 5.0

# Snapshot columns. Listeners: accepted, bytes in, bytes out, active, denied, refused,
# then the L7 responses by status class (no status, 1xx .. 5xx) and the L7 requests
# refused (all 0 for a socks5-server).
# Servers: bytes from the server, bytes toward it, active, connect failures.
# Event loops: sessions.
_L_ACCEPTED = 0
_L_ACTIVE = 3
_L_RESPONSES = 6
_L_COUNTERS = tuple(i for i in range(_L_RESPONSES + len(HTTP_CODE_CLASSES) + 1) if i != _L_ACTIVE)
_S_COUNTERS = (0, 1, 3)
_LISTENER_FAMILIES: dict[str, int | dict[str, int]] = {
    "vproxy_listener_accepted_connections": 0,
    "vproxy_listener_bytes_in": 1,
    "vproxy_listener_bytes_out": 2,
    "vproxy_listener_active_sessions": _L_ACTIVE,
    "vproxy_listener_denied_connections": 4,
    "vproxy_listener_refused_connections": 5,
    # one column per value of the "code" label
    "vproxy_listener_http_responses": {
        code: _L_RESPONSES + i for i, code in enumerate(HTTP_CODE_CLASSES)
    },
    "vproxy_listener_http_refused_requests": _L_RESPONSES + len(HTTP_CODE_CLASSES),
}
_SERVER_FAMILIES = {
    "vproxy_server_bytes_in": 0,
    "vproxy_server_bytes_out": 1,
    "vproxy_server_active_sessions": 2,
    "vproxy_server_connect_failures": 3,
}
_LOOP_FAMILIES = {"vproxy_event_loop_sessions": 0}
# the status JSON's fields, by snapshot column
_STATUS_LISTENER = {
    "accepted": 0,
    "bytes_in": 1,
    "bytes_out": 2,
    "sessions": 3,
    "denied": 4,
    "refused": 5,
}
_STATUS_SERVER = {"bytes_in": 0, "bytes_out": 1, "active": 2, "connect_failures": 3}


class WorkerError(Exception):
    """A worker did not answer (closed, timed out, garbled)."""


@dataclass(slots=True)
class _Stats:
    """Counters and live sessions of one process (or a sum of processes): by (kind,
    listener), by (group, server) and by (event-loop-group, event-loop)."""

    listeners: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    servers: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    loops: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> _Stats:
        out = cls()
        for table, rows in (
            (out.listeners, data["listeners"]),
            (out.servers, data["servers"]),
            (out.loops, data["loops"]),
        ):
            for row in rows:
                table[(str(row[0]), str(row[1]))] = [int(v) for v in row[2:]]
        return out

    @property
    def sessions(self) -> int:
        """Live sessions over all the listeners."""
        return sum(row[_L_ACTIVE] for row in self.listeners.values())

    @property
    def accepted(self) -> int:
        """Connections accepted over all the listeners."""
        return sum(row[_L_ACCEPTED] for row in self.listeners.values())

    def add(self, other: _Stats, counters_only: bool = False) -> None:
        """Add ``other`` label set by label set; with ``counters_only`` (a process
        that died) its gauges (live sessions) are left out."""
        for mine, theirs, counters in (
            (self.listeners, other.listeners, _L_COUNTERS),
            (self.servers, other.servers, _S_COUNTERS),
            (self.loops, other.loops, ()),
        ):
            for key, values in theirs.items():
                row = mine.setdefault(key, [0] * len(values))
                for i, v in enumerate(values):
                    if not counters_only or i in counters:
                        row[i] += v


def _snapshot(app: Application) -> dict[str, Any]:
    """This process's counters, as the master asks for them."""
    with app.lock:
        listeners = [
            [
                listener_kind(lb),
                lb.name,
                lb.accepted,
                lb.bytes_from_clients,
                lb.bytes_from_servers,
                len(lb.sessions),
                lb.denied,
                lb.refused,
                *l7_counters(lb),
            ]
            for lb in app.listeners()
        ]
        servers = []
        for g in app.server_groups.values():
            for s in g.servers:
                from_server, to_server = server_bytes(s)
                row = [g.name, s.name, from_server, to_server, s.active, s.connect_failures]
                servers.append(row)
        loops = [
            [g.name, el.name, el.session_count]
            for g in app.event_loop_groups.values()
            for el in g.loops
        ]
    return {"listeners": listeners, "servers": servers, "loops": loops}


def add_status(snap: dict[str, JsonValue], stats: _Stats) -> None:
    """Add the workers' ``stats`` to the master's status JSON ``snap``, in place:
    listener and server counters and live sessions, event-loop sessions and
    ``sessions_total``, each to the entry with the same names."""

    def bump(entry: JsonValue, key: str, n: int) -> None:
        if isinstance(entry, dict):
            v = entry.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                entry[key] = v + n

    def entries(key: str) -> list[JsonValue]:
        v = snap.get(key)
        return v if isinstance(v, list) else []

    for lb in entries("listeners"):
        if isinstance(lb, dict):
            row = stats.listeners.get((str(lb.get("kind")), str(lb.get("name"))))
            for field_name, col in _STATUS_LISTENER.items():
                bump(lb, field_name, row[col] if row is not None else 0)
    for g in entries("server_groups"):
        if not isinstance(g, dict) or not isinstance(servers := g.get("servers"), list):
            continue
        for s in servers:
            if isinstance(s, dict):
                row = stats.servers.get((str(g.get("name")), str(s.get("name"))))
                for field_name, col in _STATUS_SERVER.items():
                    bump(s, field_name, row[col] if row is not None else 0)
    for el in entries("event_loops"):
        if isinstance(el, dict):
            row = stats.loops.get((str(el.get("group")), str(el.get("name"))))
            bump(el, "sessions", row[0] if row is not None else 0)
    bump(snap, "sessions_total", stats.sessions)


def canonical_line(cmd: Command, app: Application) -> str:
    """The text a worker applies for ``cmd``, which just succeeded in ``app``.

    A listener added on port 0 is sent with the port it got here, so that every
    process binds the same one.
    """
    if (
        cmd.action is Action.ADD
        and cmd.type in (ResourceType.TCP_LB, ResourceType.SOCKS5_SERVER)
        and isinstance(cmd.name, str)
    ):
        table: dict[str, Any] = (
            app.tcp_lbs if cmd.type is ResourceType.TCP_LB else app.socks5_servers
        )
        lb = table.get(cmd.name)
        if lb is not None:
            host, port = lb.address
            cmd = replace(cmd, params={**cmd.params, "address": Address(host, port)})
    return format_command(cmd)


@dataclass(eq=False)
class _Worker:
    """The master's view of one worker slot."""

    index: int
    pid: int | None = None
    sock: socket.socket | None = None
    ready: bool = False  # replica up to date: receives every change
    buf: bytearray = field(default_factory=bytearray)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = 0.0
    # The running process's last snapshot, and the counters of the slot's processes
    # that died (their last snapshots): both read and written under ``lock``, the
    # same lock that orders the answers on the channel, so the newest answer is the
    # one kept and a scrape never sees a process both alive and retired, or neither.
    last_stats: _Stats | None = None
    retired: _Stats = field(default_factory=_Stats)
    restarts: int = 0  # processes started in this slot after the first


class Workers:
    """The master's side of ``workers N``: N-1 worker processes and their channels."""

    def __init__(self, workers: list[_Worker], access_log: str | None, counts_fd: int) -> None:
        self._workers = workers
        self._access_log = access_log
        # live sessions of every listener in every process (the master is column 0)
        self._counts_fd = counts_fd
        self._counts = SharedCounts(counts_fd, len(workers) + 1, 0)
        self._rows: dict[tuple[str, str], tuple[TcpLB | Socks5Server, int]] = {}
        self._free_rows = list(range(SharedCounts.ROWS - 1, -1, -1))
        self._publisher: threading.Thread | None = None
        self._executor: Executor | None = None
        self._stopping = threading.Event()
        self._spawn_lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
        # health edges of the master's checks, sent in order by their own thread
        self._edges: queue.SimpleQueue[tuple[ServerGroup, Server] | None] = queue.SimpleQueue()
        self._edge_sender: threading.Thread | None = None

    # -- start ------------------------------------------------------------------------
    @classmethod
    def fork(cls, count: int, access_log: str | None) -> Workers:
        """Fork ``count - 1`` workers; returns in the master only.

        Must run before any thread starts (a forked child gets only the forking
        thread, and locks other threads held stay locked in it).

        Raises:
            RuntimeError: A thread is already running.
        """
        if threading.active_count() > 1:
            raise RuntimeError("workers must be forked before any thread starts")
        set_reuse_port_default(True)
        master_pid = os.getpid()
        counts_fd = SharedCounts.create(count)
        pairs = [socket.socketpair() for _ in range(count - 1)]
        workers: list[_Worker] = []
        for index, (mine, theirs) in enumerate(pairs, 1):
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the worker
                code = 1
                try:
                    for m, t in pairs:
                        m.close()
                        if t is not theirs:
                            t.close()
                    counts = SharedCounts(counts_fd, count, index)
                    code = serve_worker(theirs, index, master_pid, access_log, counts)
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            workers.append(_Worker(index, pid, mine, started=time.monotonic()))
        for _, theirs in pairs:
            theirs.close()
        return cls(workers, access_log, counts_fd)

    def attach(self, executor: Executor) -> None:
        """Wait for the forked workers, then replicate ``executor``'s changes to them.

        Call before the executor applies anything (its state and the workers' are
        both the default one), then the supervisor starts.
        """
        self._executor = executor
        for w in self._workers:
            try:
                hello = self._read(w, time.monotonic() + HELLO_TIMEOUT)
                _log.info("worker %d started (pid %s)", w.index, hello.get("hello"))
                w.ready = True
            except WorkerError as exc:
                self._fail(w, f"did not start: {exc}")
        executor.set_peers(self)
        set_edge_observer(self._on_edge)
        self._edge_sender = threading.Thread(
            target=self._send_edges, name="vproxy-health-edges", daemon=True
        )
        self._edge_sender.start()
        self._publisher = threading.Thread(
            target=publish_counts,
            args=(executor.app, self._stopping),
            name="vproxy-live-sessions",
            daemon=True,
        )
        self._publisher.start()
        self._supervisor = threading.Thread(
            target=self._supervise, name="vproxy-workers", daemon=True
        )
        self._supervisor.start()

    @property
    def pids(self) -> list[int]:
        """The pids of the workers running now (not the master's)."""
        return [w.pid for w in self._workers if w.pid is not None]

    # -- channel ----------------------------------------------------------------------
    def _read(self, w: _Worker, deadline: float) -> dict[str, Any]:
        sock = w.sock
        if sock is None:
            raise WorkerError("no channel")
        try:
            while (end := w.buf.find(b"\n")) < 0:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    raise WorkerError("channel closed")
                w.buf += chunk
            line = bytes(w.buf[:end])
            del w.buf[: end + 1]
            msg = json.loads(line)
        except TimeoutError:
            raise WorkerError("no answer in time") from None
        except (OSError, ValueError) as exc:
            raise WorkerError(f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(msg, dict):
            raise WorkerError(f"unexpected answer {msg!r}")
        return msg

    def _request(self, w: _Worker, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        with w.lock:
            return self._exchange(w, msg, timeout)

    def _exchange(self, w: _Worker, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send ``msg`` to ``w`` and read its answer; the caller holds ``w.lock``."""
        if w.sock is None:
            raise WorkerError("no channel")
        try:
            w.sock.settimeout(timeout)
            w.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as exc:
            raise WorkerError(f"{type(exc).__name__}: {exc}") from exc
        return self._read(w, time.monotonic() + timeout)

    def _apply(self, w: _Worker, line: str) -> str | None:
        """Apply one line in ``w``: None, or why it failed (``w`` is then restarted)."""
        return self._change(w, {"apply": line}, repr(line))

    def _change(self, w: _Worker, msg: dict[str, Any], what: str) -> str | None:
        """Make one change in ``w``: None, or why it failed (``w`` is then restarted)."""
        try:
            answer = self._request(w, msg, APPLY_TIMEOUT)
        except WorkerError as exc:
            why = str(exc)
        else:
            if "error" not in answer:
                return None
            why = f"refused it: {answer['error']}"
        self._fail(w, f"did not apply {what}: {why}")
        return why

    def _fail(self, w: _Worker, why: str) -> None:
        """Take ``w`` out of service and kill it: the supervisor starts it again."""
        w.ready = False
        _log.error(
            "worker %d (pid %s) %s; restarting it with the current configuration",
            w.index,
            w.pid,
            why,
        )
        if w.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)

    # -- the Peers protocol of the executor -----------------------------------------------
    def check(self, cmd: Command) -> None:
        """Refuse a second listener on an address a listener here already has.

        With ``SO_REUSEPORT`` the kernel would let both bind and split the
        connections between them, where one process alone gets "address in use".
        """
        assert self._executor is not None
        addr = cmd.params.get("address")
        if (
            cmd.action is not Action.ADD
            or cmd.type not in (ResourceType.TCP_LB, ResourceType.SOCKS5_SERVER)
            or not isinstance(addr, Address)
            or addr.port == 0
        ):
            return
        for lb in self._executor.app.listeners():
            host, port = lb.address
            if port == addr.port and _overlap(host, addr.host):
                raise ConflictError(
                    f"cannot listen on {format_address(addr.host, addr.port)}: "
                    f"{listener_kind(lb)} {lb.name} listens on {format_address(host, port)}"
                )

    def replicate(self, cmd: Command) -> None:
        """Apply ``cmd`` (just applied by the master, under its lock) in every worker."""
        assert self._executor is not None
        line = canonical_line(cmd, self._executor.app)
        for w in self._workers:
            if w.ready:
                self._apply(w, line)
        self._share_rows()

    # -- max-connections over the processes ------------------------------------------------
    def _share_rows(self) -> None:
        """Give every new listener a row in the shared counts, in every process, and
        take back the rows of listeners gone (under ``Application.lock``)."""
        assert self._executor is not None
        live = {(listener_kind(lb), lb.name): lb for lb in self._executor.app.listeners()}
        for key, (lb, row) in list(self._rows.items()):
            if live.get(key) is not lb:  # removed (every process stopped counting in it)
                del self._rows[key]
                self._counts.clear_row(row)
                self._free_rows.append(row)
        for key, lb in live.items():
            if key in self._rows:
                continue
            if not self._free_rows:
                _log.warning(
                    "%s %s: more than %d listeners; its max-connections holds per process",
                    key[0],
                    key[1],
                    SharedCounts.ROWS,
                )
                continue
            row = self._free_rows.pop()
            self._rows[key] = (lb, row)
            lb.gate.share(self._counts, row)
            for w in self._workers:
                if w.ready:
                    self._share_row(w, key, row)

    def _share_row(self, w: _Worker, key: tuple[str, str], row: int) -> bool:
        msg = {"share": [key[0], key[1], row]}
        return self._change(w, msg, f"share {msg['share']}") is None

    # -- health ---------------------------------------------------------------------------
    def _on_edge(self, group: ServerGroup, server: Server, healthy: bool) -> None:
        """An UP/DOWN edge in the master (on a health-check loop): queued for the workers."""
        self._edges.put((group, server))

    def _send_edges(self) -> None:
        """Send the queued edges to the ready workers, in order, until :meth:`stop`.

        Each goes as the server's flag when it is sent, under ``Application.lock`` as
        replication is: the workers then have exactly the master's groups and
        servers, and an edge of a server the master no longer has (removed, or
        replaced by another of the same name) is dropped rather than sent stale.
        """
        executor = self._executor
        assert executor is not None
        app = executor.app
        while (item := self._edges.get()) is not None:
            group, server = item
            with app.lock:
                if self._stopping.is_set():
                    return
                if not _current(app, group, server):
                    continue
                msg = _health_message(group, server)
                for w in self._workers:
                    if w.ready:
                        self._change(w, msg, f"health {msg['health']}")

    def _stats(self) -> _Stats:
        """The workers' counters, summed (plus those of workers that died)."""
        return self._poll()[0]

    def _poll(self) -> tuple[_Stats, list[WorkerReading]]:
        """Ask every ready worker for its snapshot: their sum (plus the counters of
        workers that died), and how each worker was found.

        Everything is returned, nothing is kept for the caller: two polls at once
        (two controllers on two control loops) each get their own answers.
        """
        total = _Stats()
        readings = []
        for w in self._workers:
            restarts = w.restarts
            failure: Exception | None = None
            live: _Stats | None = None
            with w.lock:  # ordered with the other requests on the channel and _retire
                total.add(w.retired)
                if w.ready:
                    try:
                        answer = self._exchange(w, {"stats": True}, STATS_TIMEOUT)
                        live = _Stats.from_json(answer["stats"])
                    except (WorkerError, KeyError, TypeError, ValueError, IndexError) as exc:
                        failure = exc
                    else:
                        w.last_stats = live
                if live is not None:
                    total.add(live)
                elif w.last_stats is not None:
                    # not answering (killed, not yet reaped): its counters as last seen,
                    # which _retire will move to w.retired
                    total.add(w.last_stats, counters_only=True)
            if failure is not None:
                self._fail(w, f"gave no statistics: {failure}")
            sessions = live.sessions if live is not None else 0
            seen = live if live is not None else w.last_stats
            accepted = seen.accepted if seen is not None else 0
            readings.append(WorkerReading(w.index, live is not None, restarts, sessions, accepted))
        return total, readings

    def listener_counters(self, listeners: Sequence[TcpLB | Socks5Server]) -> tuple[int, int, int]:
        """(accepted, bytes from clients, bytes from servers) in the workers."""
        stats = self._stats()
        acc = b_in = b_out = 0
        for lb in listeners:
            row = stats.listeners.get((listener_kind(lb), lb.name))
            if row is not None:
                acc, b_in, b_out = acc + row[0], b_in + row[1], b_out + row[2]
        return acc, b_in, b_out

    def server_counters(self, server: Server) -> tuple[int, int]:
        """(bytes from ``server``, bytes toward it) in the workers."""
        group = server.group.name if server.group is not None else ""
        row = self._stats().servers.get((group, server.name))
        return (row[0], row[1]) if row is not None else (0, 0)

    def loop_sessions(self) -> dict[tuple[str, str], int]:
        """Live sessions in the workers by (event-loop-group, event-loop)."""
        return {key: row[0] for key, row in self._stats().loops.items()}

    def sum_status(self, snap: dict[str, JsonValue]) -> None:
        """Add the workers' figures to the master's status JSON (see :func:`add_status`),
        and ``processes``: each process by itself (the master first, as worker 0)."""
        stats, readings = self._poll()
        own = snap.get("sessions_total")
        listeners = snap.get("listeners")
        accepted = 0
        for lb in listeners if isinstance(listeners, list) else []:
            n = lb.get("accepted") if isinstance(lb, dict) else None
            accepted += n if isinstance(n, int) else 0
        add_status(snap, stats)
        master = WorkerReading(0, True, 0, own if isinstance(own, int) else 0, accepted)
        snap["processes"] = [
            {
                "worker": r.worker,
                "up": r.up,
                "restarts": r.restarts,
                "sessions": r.sessions,
                "accepted": r.accepted,
            }
            for r in (master, *readings)
        ]

    def collector(self, app: Application) -> AppCollector:
        """A metrics collector over ``app`` that adds the workers' counters and
        sessions, and the ``vproxy_worker_*`` families."""
        return _SumCollector(app, self)

    def live_details(self, cmd: Command) -> list[dict[str, Any]]:
        """The workers' connections or sessions that ``cmd`` lists, described."""
        line = format_command(cmd)
        out: list[dict[str, Any]] = []
        for w in self._workers:
            if not w.ready:
                continue
            try:
                details = self._request(w, {"live": line}, STATS_TIMEOUT)["live"]
                if not isinstance(details, list) or not all(isinstance(d, dict) for d in details):
                    raise TypeError(f"not a list of objects: {details!r}"[:200])
            except (WorkerError, KeyError, TypeError) as exc:
                self._fail(w, f"did not list {line!r}: {exc}")
                continue
            out += details
        return out

    def abort_live(self, cmd: Command) -> bool:
        """Run ``cmd`` (a force-remove of connections or sessions) in every worker;
        True when one of them had a match."""
        line = format_command(cmd)
        hit = False
        for w in self._workers:
            if not w.ready:
                continue
            try:
                hit = self._request(w, {"abort": line}, STATS_TIMEOUT)["hit"] is True or hit
            except (WorkerError, KeyError) as exc:
                self._fail(w, f"did not run {line!r}: {exc}")
        return hit

    # -- supervision ------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stopping.wait(0.2):
            for w in self._workers:
                if self._stopping.is_set():
                    return
                try:
                    self._check(w)
                except Exception:
                    _log.exception("supervising worker %d", w.index)

    def _check(self, w: _Worker) -> None:
        if w.pid is not None:
            try:
                pid, status = os.waitpid(w.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = w.pid, 0
            if pid == 0:
                return
            lost = ""
            if requests_migrate() is False and not reuseport.migrating():
                lost = (
                    "; connections queued for it, if any, were reset"
                    " (net.ipv4.tcp_migrate_req=1 hands them to the other processes)"
                )
            _log.warning(
                "worker %d (pid %d) %s%s; restarting it", w.index, w.pid, _exit_text(status), lost
            )
            self._retire(w)
        if time.monotonic() >= w.started + RESTART_INTERVAL:
            self._restart(w)

    def _retire(self, w: _Worker) -> None:
        with w.lock:
            w.ready = False
            w.pid = None
            if w.sock is not None:
                w.sock.close()
            w.sock = None
            w.buf.clear()
            if w.last_stats is not None:
                w.retired.add(w.last_stats, counters_only=True)
            w.last_stats = None
            self._counts.clear_column(w.index)  # its sessions died with it

    def _restart(self, w: _Worker) -> None:
        """Spawn a fresh worker in slot ``w`` and replay the configuration into it."""
        executor = self._executor
        assert executor is not None
        mine, theirs = socket.socketpair()
        with self._spawn_lock:
            if self._stopping.is_set():
                mine.close()
                theirs.close()
                return
            w.started = time.monotonic()
            try:
                w.pid = _spawn(
                    theirs, w.index, self._access_log, self._counts_fd, len(self._workers) + 1
                )
            except OSError as exc:
                _log.error("worker %d: cannot start: %s", w.index, exc)
                mine.close()
                return
            finally:
                theirs.close()
            w.sock = mine
            w.restarts += 1
        try:
            self._read(w, time.monotonic() + HELLO_TIMEOUT)
        except WorkerError as exc:
            self._fail(w, f"did not start: {exc}")
            return
        with executor.app.lock:  # no change slips between the replay and the log
            lines = executor.config_lines()
            for step in replay_plan(lines, _health_messages(executor.app)):
                if self._stopping.is_set():
                    return
                if isinstance(step, str):
                    failed = self._apply(w, step)
                else:
                    failed = self._change(w, step, f"health {step['health']}")
                if failed is not None:
                    return
            for key, (_, row) in self._rows.items():
                if not self._share_row(w, key, row):
                    return
            w.ready = True
        _log.warning(
            "worker %d restarted (pid %d); %d configuration commands replayed",
            w.index,
            w.pid,
            len(lines),
        )

    # -- stop -------------------------------------------------------------------------
    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to every worker (SIGHUP: reopen the access log)."""
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after a while) and reap it."""
        self._stopping.set()
        set_edge_observer(None)
        self._edges.put(None)
        with self._spawn_lock:  # no worker is being spawned past this point
            pass
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(HELLO_TIMEOUT + 5)
        self.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for w in self._workers:
            if w.pid is None:
                continue
            while True:
                try:
                    pid, _ = os.waitpid(w.pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid:
                    break
                if time.monotonic() > deadline:
                    _log.warning("worker %d (pid %d) ignored SIGTERM: killing it", w.index, w.pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(w.pid, 0)
                    break
                time.sleep(0.02)
            w.pid = None
            w.ready = False
            if w.sock is not None:
                w.sock.close()
                w.sock = None


class _SumCollector(AppCollector):
    """The master's metrics plus the workers' counters and sessions, label set by
    label set, and one ``vproxy_worker_*`` sample per process."""

    def __init__(self, app: Application, workers: Workers) -> None:
        super().__init__(app)
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        """Ask the workers first (not under the application's lock), then collect.

        Their answers go to a view made for this scrape alone, never to this shared
        collector: two scrapes at once (controllers on two control loops) each add
        their own workers' figures.
        """
        extra, readings = self._workers._poll()
        yield from _Scrape(self.app, extra, readings, self.process_collector()).collect()


class _Scrape(AppCollector):
    """One scrape of a :class:`_SumCollector`: the master's figures read now plus
    what the workers answered for this scrape."""

    def __init__(
        self,
        app: Application,
        extra: _Stats,
        readings: list[WorkerReading],
        process: ProcessCollector,
    ) -> None:
        super().__init__(app, process)
        self._extra = extra
        self._readings = readings

    def _listeners(self) -> Iterable[Metric]:
        return _add_samples(super()._listeners(), _LISTENER_FAMILIES, self._extra.listeners)

    def _servers(self) -> Iterable[Metric]:
        return _add_samples(super()._servers(), _SERVER_FAMILIES, self._extra.servers)

    def _loops(self) -> Iterable[Metric]:
        return _add_samples(super()._loops(), _LOOP_FAMILIES, self._extra.loops)

    def _processes(self) -> Iterable[Metric]:
        listeners = list(self.app.listeners())
        mine = sum(len(lb.sessions) for lb in listeners)
        accepted = sum(lb.accepted for lb in listeners)
        return worker_metrics([WorkerReading(0, True, 0, mine, accepted), *self._readings])


def _add_samples(
    families: Iterable[Metric],
    columns: Mapping[str, int | Mapping[str, int]],
    extra: dict[tuple[str, str], list[int]],
) -> list[Metric]:
    """Add to each sample of ``families`` the column of ``extra`` that ``columns``
    names for its family (by the first two labels), or, for a family mapped to a
    dict, the column its ``code`` label names."""
    out = list(families)
    for fam in out:
        spec = columns.get(fam.name)
        if spec is None:
            continue
        samples = []
        for s in fam.samples:
            values = list(s.labels.values())
            row = extra.get((values[0], values[1])) if len(values) >= 2 else None
            col = spec if isinstance(spec, int) else spec.get(s.labels.get("code", ""))
            if row is not None and col is not None and not s.name.endswith("_created"):
                s = s._replace(value=s.value + row[col])
            samples.append(s)
        fam.samples = samples
    return out


def _current(app: Application, group: ServerGroup, server: Server) -> bool:
    """Whether ``server`` of ``group`` is still in ``app`` (as these very objects)."""
    if app.server_groups.get(group.name) is not group:
        return False
    try:
        return group.get(server.name) is server
    except KeyError:
        return False


def _health_message(group: ServerGroup, server: Server) -> dict[str, Any]:
    return {"health": [group.name, server.name, server.healthy]}


def _health_messages(app: Application) -> list[dict[str, Any]]:
    """The UP flags to give a restarted worker (a server starts DOWN there as
    anywhere). Call under ``app.lock``."""
    return [
        _health_message(group, server)
        for group in app.server_groups.values()
        for server in group.servers
        if server.healthy
    ]


#: the configuration lines that start accepting (SO_REUSEPORT: the kernel sends the
#: new process its share of new connections from then on)
_LISTENER_LINES: Final = ("add tcp-lb ", "add socks5-server ")


def replay_plan(lines: list[str], health: list[dict[str, Any]]) -> list[str | dict[str, Any]]:
    """The order in which a restarted worker gets the configuration and the health flags.

    The flags go right before the first line that starts a listener: the servers exist
    by then (``config_lines`` adds groups and servers first), and a connection the new
    process accepts finds the servers that are UP as UP, not every server DOWN (it
    would be closed at once for want of a backend).
    """
    plan: list[str | dict[str, Any]] = []
    flags: list[str | dict[str, Any]] = list(health)
    for line in lines:
        if flags and line.startswith(_LISTENER_LINES):
            plan += flags
            flags = []
        plan.append(line)
    return plan + flags


def live_answer(executor: Executor, key: str, line: object) -> dict[str, Any]:
    """A worker's answer to ``{"live": LINE}`` (its connections or sessions that the
    list LINE is about) or ``{"abort": LINE}`` (whether the force-remove LINE matched
    any of them, which it closes)."""
    from vproxy.control.command import CommandError, parse
    from vproxy.control.executor import LIVE

    want = (Action.LIST, Action.LIST_DETAIL) if key == "live" else (Action.FORCE_REMOVE,)
    try:
        cmd = parse(str(line))
    except CommandError as exc:
        return {"error": str(exc)}
    if not isinstance(cmd, Command) or cmd.type not in LIVE or cmd.action not in want:
        return {"error": f"not a {key} command: {line!r}"}
    try:
        if key == "live":
            return {"live": executor.live_details(cmd)}
        return {"hit": executor.abort_live(cmd)}
    except CommandError as exc:
        return {"error": str(exc)}


def set_health(app: Application, item: object) -> dict[str, Any]:
    """A worker's answer to ``{"health": [GROUP, SERVER, UP]}``, after setting that flag."""
    if not (
        isinstance(item, list)
        and len(item) == 3
        and isinstance(item[0], str)
        and isinstance(item[1], str)
        and isinstance(item[2], bool)
    ):
        return {"error": f"bad health message {item!r}"}
    name, server_name, up = item
    group = app.server_groups.get(name)
    if group is None:
        return {"error": f"server-group {name} not found"}
    try:
        server = group.get(server_name)
    except KeyError:
        return {"error": f"server {server_name} not found in server-group {name}"}
    group.set_healthy(server, up)
    return {"ok": 1}


def _overlap(a: str, b: str) -> bool:
    """Whether listeners on hosts ``a`` and ``b`` (same port) would collide."""
    if (":" in a) != (":" in b):
        return False  # IPv6 listeners are v6-only
    return a == b or a in ("0.0.0.0", "::") or b in ("0.0.0.0", "::")


def requests_migrate(path: str = MIGRATE_REQ_PATH) -> bool | None:
    """Whether the kernel hands a dead worker's queued connections to the other
    processes (:data:`MIGRATE_REQ_PATH` is not 0); None when it cannot tell (no such
    setting: an older kernel, or no ``/proc``)."""
    try:
        with open(path) as f:
            return int(f.read().strip() or "0") != 0
    except (OSError, ValueError):
        return None


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


# -- the worker's side ----------------------------------------------------------------------
class _Stop(BaseException):
    """SIGTERM in a worker."""


def _die_with_master(master_pid: int) -> None:
    """SIGTERM this process when its parent dies (Linux), and leave if it already did."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != master_pid:
        os._exit(0)


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall(json.dumps(msg).encode() + b"\n")


def publish_counts(app: Application, stop: threading.Event) -> None:
    """Publish the live-session count of every listener of ``app`` that shares its
    count, every ``SharedCounts.REFRESH_S``, until ``stop`` is set."""
    while not stop.wait(SharedCounts.REFRESH_S):
        for lb in app.listeners():
            lb.gate.publish()


def share_row(app: Application, counts: SharedCounts, item: object) -> dict[str, Any]:
    """A worker's answer to ``{"share": [KIND, NAME, ROW]}``: listener NAME counts in
    row ROW from now on."""
    if not (
        isinstance(item, list)
        and len(item) == 3
        and item[0] in ("tcp-lb", "socks5-server")
        and isinstance(item[1], str)
        and isinstance(item[2], int)
        and not isinstance(item[2], bool)
        and 0 <= item[2] < SharedCounts.ROWS
    ):
        return {"error": f"bad share message {item!r}"}
    kind, name, row = item
    table: dict[str, Any] = app.tcp_lbs if kind == "tcp-lb" else app.socks5_servers
    lb = table.get(name)
    if lb is None:
        return {"error": f"{kind} {name} not found"}
    lb.gate.share(counts, row)
    return {"ok": 1}


def serve_worker(
    sock: socket.socket,
    index: int,
    master_pid: int,
    access_log: str | None,
    counts: SharedCounts,
) -> int:
    """Run one worker: apply what the master sends until the channel closes or SIGTERM."""
    from vproxy.app.access_log import AccessLog
    from vproxy.control.application import Application
    from vproxy.control.executor import Executor, Origin
    from vproxy.control.reply import ErrorReply

    _die_with_master(master_pid)
    set_local_health_checks(False)  # the master checks and sends the edges
    for h in logging.getLogger().handlers:
        h.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s %(name)s (worker {index}): %(message)s")
        )

    def on_term(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _Stop

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the master decides
    sock.setblocking(True)
    app = Application.create_default()
    try:
        log = None
        if access_log is not None:
            try:
                log = AccessLog(access_log)
            except OSError as exc:
                _log.error("cannot open access log %s: %s", access_log, exc)
        app.set_access_log(log)
        if log is not None:
            signal.signal(signal.SIGHUP, lambda signum, frame: log.reopen())
        else:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        executor = Executor(app)
        stop_publishing = threading.Event()
        threading.Thread(
            target=publish_counts,
            args=(app, stop_publishing),
            name="vproxy-live-sessions",
            daemon=True,
        ).start()
        _send(sock, {"hello": os.getpid()})
        with sock.makefile("rb") as reader:
            for raw in reader:
                msg = json.loads(raw)
                if "apply" in msg:
                    reply = executor.execute_line(str(msg["apply"]), Origin.FILE)
                    answer: dict[str, Any] = (
                        {"error": reply.message} if isinstance(reply, ErrorReply) else {"ok": 1}
                    )
                elif "health" in msg:
                    answer = set_health(app, msg["health"])
                elif "share" in msg:
                    answer = share_row(app, counts, msg["share"])
                elif "live" in msg or "abort" in msg:
                    key = "live" if "live" in msg else "abort"
                    with app.lock:
                        answer = live_answer(executor, key, msg[key])
                elif "stats" in msg:
                    answer = {"stats": _snapshot(app)}
                else:
                    answer = {"error": "unknown request"}
                _send(sock, answer)
    except (_Stop, OSError):
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_publishing.set()
        app.close()
    return 0


def _spawn(
    sock: socket.socket, index: int, access_log: str | None, counts_fd: int, columns: int
) -> int:
    """Start a fresh interpreter running a worker on ``sock``; its pid.

    ``posix_spawn`` (not ``fork``): the master has threads by now. The worker gets
    the channel and the shared counts by descriptor.
    """
    fd = sock.fileno()
    os.set_inheritable(fd, True)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    argv = [
        sys.executable,
        "-c",
        "import sys; from vproxy.control.workers import spawned_worker_main as m; sys.exit(m())",
        str(fd),
        str(index),
        str(os.getpid()),
        access_log or "",
        str(counts_fd),
        str(columns),
    ]
    os.set_inheritable(counts_fd, True)
    try:
        return os.posix_spawn(sys.executable, argv, env)
    finally:
        os.set_inheritable(counts_fd, False)


def spawned_worker_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of a spawned worker:
    ``FD INDEX MASTER_PID ACCESS_LOG COUNTS_FD COLUMNS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    fd, index, master_pid, access_log = int(args[0]), int(args[1]), int(args[2]), args[3]
    counts = SharedCounts(int(args[4]), int(args[5]), index)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    set_reuse_port_default(True)
    sock = socket.socket(fileno=fd)
    return serve_worker(sock, index, master_pid, access_log or None, counts)
