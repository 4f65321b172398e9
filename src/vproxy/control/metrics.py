"""What an operator watches: Prometheus metrics, the dashboard's status, health history.

Owns:

* :class:`HealthBook`, a bounded ring of recent UP/DOWN transitions with their times,
  the time of each server's last change, and the weight a drained server had (so
  the dashboard can restore it). The executor tells it about new server groups,
  servers and weight changes; the groups' health listeners feed it edges, on the
  health-check loop, which is off the data path.
* :class:`AppCollector`, a ``prometheus_client`` collector that reads the running
  :class:`~vproxy.control.application.Application` at scrape time (nothing is
  counted twice and nothing runs per byte), and :func:`render_metrics`, the text
  exposition format served at ``/metrics``.
* :func:`status_snapshot`, the JSON behind ``/api/v1/status`` and the dashboard.
* :func:`worker_metrics`, the per-process families of ``workers N``
  (:class:`WorkerReading` in, one sample per process out).

Must not: change state (it only reads; the executor changes things), keep references
to sessions, or do work on the data path. Metric names and labels are documented in
``docs/operations.md``; renaming one breaks operators' dashboards and alerts.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from vproxy.app.socks5_server import Socks5Server
from vproxy.component.server_group import Server, ServerGroup
from vproxy.net.connection import Session
from vproxy.net.server_sock import format_address

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.process_collector import ProcessCollector

    from vproxy.app.tcp_lb import TcpLB
    from vproxy.control.application import Application
    from vproxy.control.reply import JsonValue

__all__ = [
    "CONTENT_TYPE",
    "HTTP_CODE_CLASSES",
    "MAX_TRANSITIONS",
    "AppCollector",
    "HealthBook",
    "HealthTransition",
    "WorkerReading",
    "l7_counters",
    "listener_kind",
    "render_metrics",
    "server_bytes",
    "status_snapshot",
    "worker_metrics",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text exposition format."""
MAX_TRANSITIONS: Final = 200
"""Health transitions kept (oldest forgotten first)."""
HTTP_CODE_CLASSES: Final = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
"""The ``code`` label of the L7 response counter, in the order a listener counts them."""


# ------------------------------------------------------------------ health history


@dataclass(frozen=True, slots=True)
class HealthTransition:
    """One UP/DOWN edge of one server.

    Attributes:
        time: When, in seconds since the epoch.
        group: The server group's name.
        server: The server's name.
        address: The server's ``ip:port``.
        up: The new state.
    """

    time: float
    group: str
    server: str
    address: str
    up: bool

    def to_json(self) -> dict[str, JsonValue]:
        """The transition as the status JSON shows it."""
        return {
            "time": self.time,
            "group": self.group,
            "server": self.server,
            "address": self.address,
            "up": self.up,
        }


class HealthBook:
    """Recent health transitions and a few notes per server, all bounded.

    Thread-safe: edges arrive on health-check loops, notes from the executor and
    reads from controllers. Per-server notes are kept on the server object
    (``Server.state_since``, ``Server.drained_from``), so removed servers are
    forgotten with them.
    """

    def __init__(self, capacity: int = MAX_TRANSITIONS) -> None:
        """Create an empty book keeping the last ``capacity`` transitions."""
        self._lock = threading.Lock()
        self._ring: deque[HealthTransition] = deque(maxlen=capacity)

    # -- what the executor tells it -------------------------------------------------------
    def watch(self, group: ServerGroup) -> None:
        """Record the health edges of ``group`` from now on."""
        group.add_health_listener(self._on_edge)

    def unwatch(self, group: ServerGroup) -> None:
        """Stop recording ``group`` (it was removed)."""
        group.remove_health_listener(self._on_edge)

    def server_added(self, server: Server) -> None:
        """A server was added (it starts DOWN): its state dates from now."""
        with self._lock:
            # (its first check may already have reported an edge)
            if server.state_since is None:
                server.state_since = time.time()

    def weight_changed(self, server: Server, old: int, new: int) -> None:
        """Remember the weight a server had before it was drained (set to 0)."""
        with self._lock:
            if new == 0 and old > 0:
                server.drained_from = old
            elif new > 0:
                server.drained_from = None

    def _on_edge(self, server: Server, up: bool) -> None:
        group = server.group
        now = time.time()
        entry = HealthTransition(
            now, group.name if group is not None else "", server.name, server.address_text, up
        )
        with self._lock:
            self._ring.append(entry)
            server.state_since = now

    # -- reading ---------------------------------------------------------------------------
    def transitions(self) -> list[HealthTransition]:
        """The transitions kept, newest first."""
        with self._lock:
            return list(reversed(self._ring))

    def since(self, server: Server) -> float | None:
        """When ``server`` last changed state (or was added), epoch seconds."""
        with self._lock:
            return server.state_since

    def drained_from(self, server: Server) -> int | None:
        """The weight ``server`` had before it was set to 0, if known."""
        with self._lock:
            return server.drained_from


# ------------------------------------------------------------------ shared readings


def listener_kind(listener: TcpLB | Socks5Server) -> str:
    """``tcp-lb`` or ``socks5-server``: the resource type word."""
    return "socks5-server" if isinstance(listener, Socks5Server) else "tcp-lb"


def server_bytes(server: Server) -> tuple[int, int]:
    """(bytes read from ``server``, bytes sent toward it): ended plus live sessions.

    The same numbers as ``list bytes-in|bytes-out in server ...``.
    """
    from_server = server.closed_bytes_in
    to_server = server.closed_bytes_out
    for s in list(server.sessions):
        if isinstance(s, Session):  # an L4 relay to this server
            from_server += s.back.bytes_in
            to_server += s.front.bytes_in
        else:  # a backend connection of an L7 mode (may carry many clients' requests)
            from_server += s.bytes_in
            to_server += s.bytes_out
    return from_server, to_server


def l7_counters(listener: TcpLB | Socks5Server) -> list[int]:
    """The L7 responses of ``listener`` by status class (in :data:`HTTP_CODE_CLASSES`
    order), then its L7 requests refused; zeros for a socks5-server."""
    if isinstance(listener, Socks5Server):
        return [0] * (len(HTTP_CODE_CLASSES) + 1)
    return [*listener.http_responses, listener.l7_refused]


def _latency_ms(server: Server) -> float | None:
    client = server._health_client
    return client.last_latency_ms if client is not None else None


# ------------------------------------------------------------------ Prometheus


class AppCollector:
    """A ``prometheus_client`` collector over a live application.

    Every scrape reads the current objects under the application's lock; the
    counters are the ones the resources already keep.
    """

    def __init__(self, app: Application, process: ProcessCollector | None = None) -> None:
        """Collect from ``app``, plus the process's own metrics (``/proc/self``) through
        ``process`` (made at the first scrape when None)."""
        self.app = app
        # prometheus_client is imported at the first scrape: a process nobody
        # scrapes does not carry it.
        self._process = process

    def process_collector(self) -> ProcessCollector:
        """The collector of the ``process_*`` families (``/proc/self``)."""
        if self._process is None:
            from prometheus_client.process_collector import ProcessCollector

            self._process = ProcessCollector(registry=None)
        return self._process

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family (the ``Collector`` protocol)."""
        process = self.process_collector()
        with self.app.lock:
            yield from self._listeners()
            yield from self._servers()
            yield from self._loops()
            yield from self._access_log()
            yield from self._processes()
        yield from process.collect()

    def _processes(self) -> Iterable[Metric]:
        """The per-process families: none for one process (``workers N`` adds them)."""
        return ()

    def _listeners(self) -> Iterable[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        labels = ["kind", "listener", "address"]
        accepted = CounterMetricFamily(
            "vproxy_listener_accepted_connections",
            "Connections accepted by the listener (including those its security group closed).",
            labels=labels,
        )
        active = GaugeMetricFamily(
            "vproxy_listener_active_sessions", "Sessions running now.", labels=labels
        )
        bytes_in = CounterMetricFamily(
            "vproxy_listener_bytes_in", "Bytes read from clients.", labels=labels
        )
        bytes_out = CounterMetricFamily(
            "vproxy_listener_bytes_out",
            "Bytes read from backends (or socks5 targets) for clients.",
            labels=labels,
        )
        denied = CounterMetricFamily(
            "vproxy_listener_denied_connections",
            "Connections refused: by the security group; for socks5 also targets that "
            "are not allowed.",
            labels=labels,
        )
        refused = CounterMetricFamily(
            "vproxy_listener_refused_connections",
            "Connections closed at accept because the listener had max-connections sessions.",
            labels=labels,
        )
        limit = GaugeMetricFamily(
            "vproxy_listener_max_connections",
            "The listener's max-connections setting.",
            labels=labels,
        )
        responses = CounterMetricFamily(
            "vproxy_listener_http_responses",
            "L7 responses given to clients, by status class (1xx..5xx; 'none' when the "
            "connection ended before a status).",
            labels=[*labels, "code"],
        )
        malformed = CounterMetricFamily(
            "vproxy_listener_http_refused_requests",
            "L7 requests refused as malformed or over a limit (answered 4xx by vproxy).",
            labels=labels,
        )
        for lb in self.app.listeners():
            values = [listener_kind(lb), lb.name, format_address(*lb.address)]
            if not isinstance(lb, Socks5Server) and lb.protocol != "tcp":
                *by_class, l7_refused = l7_counters(lb)
                for code, n in zip(HTTP_CODE_CLASSES, by_class, strict=True):
                    responses.add_metric([*values, code], n)
                malformed.add_metric(values, l7_refused)
            accepted.add_metric(values, lb.accepted)
            active.add_metric(values, len(lb.sessions))
            bytes_in.add_metric(values, lb.bytes_from_clients)
            bytes_out.add_metric(values, lb.bytes_from_servers)
            denied.add_metric(values, lb.denied)
            refused.add_metric(values, lb.refused)
            limit.add_metric(values, lb.max_connections)
        return (accepted, active, bytes_in, bytes_out, denied, refused, limit, responses, malformed)

    def _servers(self) -> Iterable[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        labels = ["group", "server", "address"]
        up = GaugeMetricFamily(
            "vproxy_server_up", "1 when the last health edge was UP, else 0.", labels=labels
        )
        weight = GaugeMetricFamily(
            "vproxy_server_weight", "The server's weight (0: drained).", labels=labels
        )
        active = GaugeMetricFamily(
            "vproxy_server_active_sessions", "Sessions on the server now.", labels=labels
        )
        failures = CounterMetricFamily(
            "vproxy_server_connect_failures",
            "Connects to the server that failed or timed out (sessions).",
            labels=labels,
        )
        bytes_in = CounterMetricFamily(
            "vproxy_server_bytes_in", "Bytes read from the server.", labels=labels
        )
        bytes_out = CounterMetricFamily(
            "vproxy_server_bytes_out", "Bytes sent toward the server.", labels=labels
        )
        latency = GaugeMetricFamily(
            "vproxy_server_health_check_latency_seconds",
            "Connect time of the last successful health check (absent after a failure).",
            labels=labels,
        )
        for group in self.app.server_groups.values():
            for s in group.servers:
                values = [group.name, s.name, s.address_text]
                up.add_metric(values, 1 if s.healthy else 0)
                weight.add_metric(values, s.weight)
                active.add_metric(values, s.active)
                failures.add_metric(values, s.connect_failures)
                from_server, to_server = server_bytes(s)
                bytes_in.add_metric(values, from_server)
                bytes_out.add_metric(values, to_server)
                ms = _latency_ms(s)
                if ms is not None:
                    latency.add_metric(values, ms / 1000)
        return (up, weight, active, failures, bytes_in, bytes_out, latency)

    def _loops(self) -> Iterable[Metric]:
        from prometheus_client.metrics_core import GaugeMetricFamily

        sessions = GaugeMetricFamily(
            "vproxy_event_loop_sessions",
            "Sessions running on the event loop.",
            labels=["group", "loop"],
        )
        for group in self.app.event_loop_groups.values():
            for el in group.loops:
                sessions.add_metric([group.name, el.name], el.session_count)
        return (sessions,)

    def _access_log(self) -> Iterable[Metric]:
        log = self.app.access_log
        if log is None:
            return ()
        from prometheus_client.metrics_core import CounterMetricFamily

        written = CounterMetricFamily(
            "vproxy_access_log_lines_written", "Access-log lines written.", value=log.written
        )
        dropped = CounterMetricFamily(
            "vproxy_access_log_lines_dropped",
            "Access-log lines dropped (queue full or write failed).",
            value=log.dropped,
        )
        return (written, dropped)


@dataclass(frozen=True, slots=True)
class WorkerReading:
    """One process of ``workers N`` as a scrape found it.

    Attributes:
        worker: Its slot: 0 is the master, 1..N-1 the workers.
        up: Whether it is running and answered this scrape.
        restarts: How many times a new process was started in this slot.
        sessions: Its live sessions, over all its listeners (0 when not up).
        accepted: Connections the process in this slot accepted, over all its
            listeners (as last seen when it does not answer; a new process in the
            slot starts again from 0).
    """

    worker: int
    up: bool
    restarts: int
    sessions: int
    accepted: int = 0


def worker_metrics(readings: Iterable[WorkerReading]) -> list[Metric]:
    """The per-process families of ``workers N``, one sample per reading.

    Args:
        readings: Every process, the master (worker 0) included.

    Returns:
        ``vproxy_worker_up``, ``vproxy_worker_restarts`` (a counter: ``_total`` in
        the exposition), ``vproxy_worker_sessions`` and ``vproxy_worker_accepted``
        (a counter: how the kernel spread the connections), labelled ``worker``.
    """
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

    labels = ["worker"]
    up = GaugeMetricFamily(
        "vproxy_worker_up",
        "1 when the process is running and answered this scrape (worker 0 is the master).",
        labels=labels,
    )
    restarts = CounterMetricFamily(
        "vproxy_worker_restarts",
        "Times a new process was started in this slot after the previous one died.",
        labels=labels,
    )
    sessions = GaugeMetricFamily(
        "vproxy_worker_sessions",
        "Sessions running in the process now, over all its listeners.",
        labels=labels,
    )
    accepted = CounterMetricFamily(
        "vproxy_worker_accepted",
        "Connections accepted by the process in this slot, over all its listeners "
        "(a restarted process starts again from 0).",
        labels=labels,
    )
    for r in readings:
        values = [str(r.worker)]
        up.add_metric(values, 1 if r.up else 0)
        restarts.add_metric(values, r.restarts)
        sessions.add_metric(values, r.sessions)
        accepted.add_metric(values, r.accepted)
    return [up, restarts, sessions, accepted]


def render_metrics(collector: AppCollector) -> bytes:
    """The text exposition of everything ``collector`` reads."""
    from prometheus_client.exposition import generate_latest

    return generate_latest(collector)


# ------------------------------------------------------------------ the status JSON


def _server_json(s: Server, book: HealthBook, now: float) -> dict[str, JsonValue]:
    since = book.since(s)
    from_server, to_server = server_bytes(s)
    return {
        "name": s.name,
        "address": s.address_text,
        "up": s.healthy,
        "since": since,
        "changed_ago_s": round(now - since, 3) if since is not None else None,
        "weight": s.weight,
        "drained_from": book.drained_from(s),
        "active": s.active,
        "bytes_in": from_server,
        "bytes_out": to_server,
        "connect_failures": s.connect_failures,
        "latency_ms": _latency_ms(s),
    }


def _group_json(g: ServerGroup, book: HealthBook, now: float) -> dict[str, JsonValue]:
    hc = g.health_config
    return {
        "name": g.name,
        "method": g.method.value,
        "health_check": {
            "timeout": hc.timeout,
            "period": hc.period,
            "up": hc.up,
            "down": hc.down,
        },
        "servers": [_server_json(s, book, now) for s in g.servers],
    }


def _listener_json(lb: TcpLB | Socks5Server) -> dict[str, JsonValue]:
    kind = listener_kind(lb)
    return {
        "kind": kind,
        "name": lb.name,
        "address": format_address(*lb.address),
        "protocol": "socks5" if isinstance(lb, Socks5Server) else lb.protocol,
        "upstream": lb.upstream.name,
        "sessions": len(lb.sessions),
        "accepted": lb.accepted,
        "bytes_in": lb.bytes_from_clients,
        "bytes_out": lb.bytes_from_servers,
        "denied": lb.denied,
        "refused": lb.refused,
        "max_connections": lb.max_connections,
    }


def status_snapshot(app: Application) -> dict[str, JsonValue]:
    """Everything the dashboard shows but the sessions, read now.

    The caller holds ``app.lock``. Rates are left to the reader: counters plus
    ``time`` from two snapshots give them.
    """
    now = time.time()
    book = app.health_book
    controllers: list[JsonValue] = [
        {"kind": kind, "name": name, "address": format_address(*c.address)}
        for kind, table in (
            ("http-controller", app.http_controllers),
            ("resp-controller", app.resp_controllers),
        )
        for name, c in table.items()
    ]
    log = app.access_log
    access: JsonValue = None
    if log is not None:
        access = {
            "destination": log.destination,
            "written": log.written,
            "dropped": log.dropped,
            "pending": log.pending,
        }
    return {
        "time": now,
        "listeners": [_listener_json(lb) for lb in app.listeners()],
        "controllers": controllers,
        "upstreams": [
            {
                "name": u.name,
                "server_groups": [{"name": h.group.name, "weight": h.weight} for h in u.groups],
            }
            for u in app.upstreams.values()
        ],
        "server_groups": [_group_json(g, book, now) for g in app.server_groups.values()],
        "transitions": [t.to_json() for t in book.transitions()],
        "event_loops": [
            {"group": g.name, "name": el.name, "sessions": el.session_count}
            for g in app.event_loop_groups.values()
            for el in g.loops
        ],
        "access_log": access,
    }
