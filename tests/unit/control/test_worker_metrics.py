"""Tests for the figures of ``workers N`` (control.workers, control.metrics): the
workers' snapshots summed label set by label set, their sum added to the status JSON,
and the per-process ``vproxy_worker_*`` families. No processes, no sockets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from vproxy.control.application import Application
from vproxy.control.metrics import AppCollector, WorkerReading, render_metrics, worker_metrics
from vproxy.control.workers import (
    _LISTENER_FAMILIES,
    Workers,
    _add_samples,
    _Stats,
    _SumCollector,
    add_status,
)

# A worker's answer to {"stats": true}, as _snapshot writes it.
WIRE: dict[str, Any] = {
    # kind, name, accepted, bytes in, bytes out, active, denied, refused,
    # L7 responses (no status, 1xx .. 5xx), L7 requests refused
    "listeners": [["tcp-lb", "lb", 10, 1000, 2000, 3, 1, 2, 1, 0, 50, 0, 4, 2, 4]],
    # group, server, bytes from it, bytes toward it, active, connect failures
    "servers": [["g", "a", 500, 600, 2, 4], ["g", "b", 7, 8, 1, 0]],
    # event-loop-group, event-loop, sessions
    "loops": [["(worker-elg)", "(worker-el)", 3], ["(acceptor-elg)", "(acceptor-el)", 0]],
}


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def test_worker_families_have_one_sample_per_process() -> None:
    readings = [WorkerReading(0, True, 0, 7, 40), WorkerReading(1, False, 2, 0, 33)]
    text = generate_latest(_Families(worker_metrics(readings))).decode()
    lines = text.splitlines()
    for family, kind in (
        ("vproxy_worker_up", "gauge"),
        ("vproxy_worker_restarts_total", "counter"),
        ("vproxy_worker_sessions", "gauge"),
        ("vproxy_worker_accepted_total", "counter"),
    ):
        assert f"# TYPE {family} {kind}" in lines
        assert any(line.startswith(f"# HELP {family} ") for line in lines)
    samples = [line for line in lines if not line.startswith("#")]
    assert samples == [
        'vproxy_worker_up{worker="0"} 1.0',
        'vproxy_worker_up{worker="1"} 0.0',
        'vproxy_worker_restarts_total{worker="0"} 0.0',
        'vproxy_worker_restarts_total{worker="1"} 2.0',
        'vproxy_worker_sessions{worker="0"} 7.0',
        'vproxy_worker_sessions{worker="1"} 0.0',
        'vproxy_worker_accepted_total{worker="0"} 40.0',
        'vproxy_worker_accepted_total{worker="1"} 33.0',
    ]


def test_one_process_has_no_worker_families() -> None:
    text = render_metrics(AppCollector(Application())).decode()
    names = {fam.name for fam in text_string_to_metric_families(text)}
    assert "vproxy_event_loop_sessions" in names
    assert not any(n.startswith("vproxy_worker") for n in names), names


def test_snapshots_add_label_set_by_label_set() -> None:
    one = _Stats.from_json(WIRE)
    assert one.sessions == 3
    total = _Stats()
    total.add(one)
    total.add(_Stats.from_json(WIRE))
    assert total.listeners[("tcp-lb", "lb")] == [20, 2000, 4000, 6, 2, 4, 2, 0, 100, 0, 8, 4, 8]
    assert total.servers[("g", "a")] == [1000, 1200, 4, 8]
    assert total.loops[("(worker-elg)", "(worker-el)")] == [6]
    assert total.sessions == 6


def test_a_dead_worker_leaves_its_counters_but_not_its_sessions() -> None:
    retired = _Stats()
    retired.add(_Stats.from_json(WIRE), counters_only=True)
    assert retired.listeners[("tcp-lb", "lb")] == [10, 1000, 2000, 0, 1, 2, 1, 0, 50, 0, 4, 2, 4]
    assert retired.servers[("g", "a")] == [500, 600, 0, 4]
    assert all(row == [0] for row in retired.loops.values())
    assert retired.sessions == 0


def test_loop_gauge_adds_the_workers_sessions() -> None:
    fam = GaugeMetricFamily("vproxy_event_loop_sessions", "", labels=["group", "loop"])
    fam.add_metric(["(worker-elg)", "(worker-el)"], 2)
    fam.add_metric(["mine", "only-here"], 5)
    (out,) = _add_samples([fam], {"vproxy_event_loop_sessions": 0}, _Stats.from_json(WIRE).loops)
    assert [s.value for s in out.samples] == [5, 5]


def test_l7_families_add_the_workers_counts_code_by_code() -> None:
    labels = ["kind", "listener", "address"]
    responses = CounterMetricFamily("vproxy_listener_http_responses", "", labels=[*labels, "code"])
    for code, n in (("none", 0), ("1xx", 0), ("2xx", 7), ("3xx", 0), ("4xx", 1), ("5xx", 0)):
        responses.add_metric(["tcp-lb", "lb", "127.0.0.1:80", code], n)
    responses.add_metric(["tcp-lb", "mine", "127.0.0.1:81", "2xx"], 5)
    refused = CounterMetricFamily("vproxy_listener_http_refused_requests", "", labels=labels)
    refused.add_metric(["tcp-lb", "lb", "127.0.0.1:80"], 1)
    extra = _Stats.from_json(WIRE).listeners
    out = _add_samples([responses, refused], _LISTENER_FAMILIES, extra)
    by_code = {s.labels["code"]: s.value for s in out[0].samples if s.labels["listener"] == "lb"}
    assert by_code == {"none": 1, "1xx": 0, "2xx": 57, "3xx": 0, "4xx": 5, "5xx": 2}
    assert [s.value for s in out[0].samples if s.labels["listener"] == "mine"] == [5]
    assert [s.value for s in out[1].samples] == [5]


class _Answers:
    """Stands for :class:`Workers`: each poll gets the next answer."""

    def __init__(self, answers: list[tuple[_Stats, list[WorkerReading]]]) -> None:
        self._answers = iter(answers)

    def _poll(self) -> tuple[_Stats, list[WorkerReading]]:
        return next(self._answers)


def _worker_answer(sessions: int) -> tuple[_Stats, list[WorkerReading]]:
    loops = [["(worker-elg)", "(worker-el)", sessions]]
    stats = _Stats.from_json({"listeners": [], "servers": [], "loops": loops})
    return stats, [WorkerReading(1, True, 0, sessions)]


def _sessions(families: list[Metric]) -> tuple[float, float]:
    """(worker-el's summed sessions, worker 1's sessions) of one scrape."""
    return (
        _one(families, "vproxy_event_loop_sessions", "loop", "(worker-el)"),
        _one(families, "vproxy_worker_sessions", "worker", "1"),
    )


def _one(families: list[Metric], name: str, label: str, value: str) -> float:
    """The value of the one sample of family ``name`` whose ``label`` is ``value``."""
    (found,) = [
        s.value
        for fam in families
        if fam.name == name
        for s in fam.samples
        if s.labels[label] == value
    ]
    return float(found)


def test_two_scrapes_at_once_keep_their_own_answers() -> None:
    app = Application.create_default()
    try:
        answers = _Answers([_worker_answer(1), _worker_answer(2)])
        collector = _SumCollector(app, cast(Workers, answers))
        first = collector.collect()
        families = [next(first)]  # the first scrape asked the workers and began
        second = list(collector.collect())  # a second one runs to its end meanwhile
        families += list(first)
        assert _sessions(families) == (1, 1)
        assert _sessions(second) == (2, 2)
    finally:
        app.close()


def _master_status() -> dict[str, Any]:
    return {
        "listeners": [
            {"kind": "tcp-lb", "name": "lb", "sessions": 2, "accepted": 5, "bytes_in": 1,
             "bytes_out": 2, "denied": 0, "refused": 0, "max_connections": 100},
            {"kind": "socks5-server", "name": "lb", "sessions": 1, "accepted": 1,
             "bytes_in": 0, "bytes_out": 0, "denied": 0, "refused": 0, "max_connections": 9},
        ],
        "server_groups": [
            {"name": "g", "servers": [
                {"name": "a", "up": True, "weight": 10, "active": 1, "bytes_in": 10,
                 "bytes_out": 20, "connect_failures": 0},
                {"name": "c", "up": False, "weight": 0, "active": 0, "bytes_in": 0,
                 "bytes_out": 0, "connect_failures": 1},
            ]},
        ],
        "event_loops": [{"group": "(worker-elg)", "name": "(worker-el)", "sessions": 3}],
        "sessions": [],
        "sessions_total": 3,
    }  # fmt: skip


def test_status_gets_the_workers_figures_entry_by_entry() -> None:
    snap = _master_status()
    add_status(snap, _Stats.from_json(WIRE))
    want = _master_status()
    tcp = want["listeners"][0]
    tcp.update(sessions=5, accepted=15, bytes_in=1001, bytes_out=2002, denied=1, refused=2)
    a = want["server_groups"][0]["servers"][0]
    a.update(active=3, bytes_in=510, bytes_out=620, connect_failures=4)
    want["event_loops"][0]["sessions"] = 6
    want["sessions_total"] = 6
    # the socks5-server "lb" and server c are in no worker's snapshot: unchanged;
    # settings (max_connections, weight) are not summed
    assert snap == want
