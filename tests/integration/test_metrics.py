"""``/metrics`` over loopback: a scripted transfer through a tcp-lb, then the scrape is
parsed by prometheus_client's own parser and every counter must equal the exact bytes
and connections that went through. Also: the status JSON, auth, and the health book."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import Backend, LoopThread, echo_handler, wait_until
from vproxy.component.server_group import ServerGroup
from vproxy.control.application import Application
from vproxy.control.command import parse
from vproxy.control.executor import Executor, Origin
from vproxy.control.metrics import HealthBook
from vproxy.control.reply import OK

TOKEN = "metrics-token"
SIZES = (1, 1000, 70_000, 300_001)  # one per connection, echoed back in full


@dataclass
class Instance:
    app: Application
    executor: Executor
    backends: list[Backend]

    @property
    def api(self) -> tuple[str, int]:
        return self.app.http_controllers["h0"].address

    def run(self, line: str) -> None:
        reply = self.executor.execute(parse(line), Origin.STDIO)
        assert reply == OK, (line, reply)


@pytest.fixture
def instance(loop_kind: str, backend_loop: LoopThread) -> Iterator[Instance]:
    backends = [Backend(backend_loop, echo_handler) for _ in range(2)]
    app = Application.create_default()
    inst = Instance(app, Executor(app), backends)
    try:
        for line in (
            "add server-group g0 timeout 500 period 200 up 1 down 2",
            f"add server b0 to server-group g0 address 127.0.0.1:{backends[0].port}",
            f"add server b1 to server-group g0 address 127.0.0.1:{backends[1].port} weight 5",
            "add upstream u0",
            "add server-group g0 to upstream u0 weight 10",
            "add tcp-lb lb0 address 127.0.0.1:0 upstream u0",
            "add security-group nobody default deny",
            "add tcp-lb closed address 127.0.0.1:0 upstream u0 security-group nobody",
            f"System: add http-controller h0 address 127.0.0.1:0 token {TOKEN}",
        ):
            inst.run(line)
        group = app.server_groups["g0"]
        wait_until(lambda: len(group.healthy_servers) == 2)
        yield inst
    finally:
        app.close()


def get(address: tuple[str, int], path: str, token: str | None = TOKEN) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def transfer(address: tuple[str, int], size: int) -> None:
    """Send ``size`` bytes, half-close, read the echo until EOF."""
    payload = bytes(i % 251 for i in range(size))
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while chunk := s.recv(65536):
            got += chunk
    assert bytes(got) == payload


def scrape(address: tuple[str, int]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {sorted labels: value}, through prometheus_client's parser."""
    status, content_type, body = get(address, "/metrics")
    assert status == 200, body
    assert content_type.startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def one(samples: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    hits = [v for k, v in samples.items() if all((n, x) in k for n, x in labels.items())]
    assert len(hits) == 1, (labels, samples)
    return hits[0]


def test_counters_equal_the_scripted_transfer(instance: Instance) -> None:
    lb = instance.app.tcp_lbs["lb0"]
    for size in SIZES:
        transfer(lb.address, size)
    # And one connection the security group refuses.
    with socket.create_connection(instance.app.tcp_lbs["closed"].address, timeout=10) as s:
        assert s.recv(1) == b""
    wait_until(lambda: not lb.sessions and instance.app.tcp_lbs["closed"].denied == 1)
    group = instance.app.server_groups["g0"]
    wait_until(lambda: all(s.active == 0 for s in group.servers))

    m = scrape(instance.api)
    total = sum(SIZES)
    lb_labels = {"kind": "tcp-lb", "listener": "lb0"}
    assert one(m["vproxy_listener_accepted_connections_total"], **lb_labels) == len(SIZES)
    assert one(m["vproxy_listener_active_sessions"], **lb_labels) == 0
    assert one(m["vproxy_listener_bytes_in_total"], **lb_labels) == total
    assert one(m["vproxy_listener_bytes_out_total"], **lb_labels) == total
    assert one(m["vproxy_listener_denied_connections_total"], **lb_labels) == 0
    closed = {"kind": "tcp-lb", "listener": "closed"}
    assert one(m["vproxy_listener_accepted_connections_total"], **closed) == 1
    assert one(m["vproxy_listener_denied_connections_total"], **closed) == 1
    assert one(m["vproxy_listener_bytes_in_total"], **closed) == 0

    # Per server: the two servers together carried everything, each exactly what its
    # own counters (the command language's bytes-in/out) say.
    for name in ("b0", "b1"):
        sv = {"group": "g0", "server": name}
        assert one(m["vproxy_server_up"], **sv) == 1
        assert one(m["vproxy_server_active_sessions"], **sv) == 0
        assert one(m["vproxy_server_connect_failures_total"], **sv) == 0
        latency = one(m["vproxy_server_health_check_latency_seconds"], **sv)
        assert 0 <= latency < 0.5
        for metric, kind in (("bytes_in", "bytes-in"), ("bytes_out", "bytes-out")):
            words = f"list {kind} in server {name} in server-group g0"
            reply = instance.executor.execute(parse(words), Origin.STDIO)
            assert one(m[f"vproxy_server_{metric}_total"], **sv) == reply.value  # type: ignore[attr-defined]
    assert one(m["vproxy_server_weight"], server="b0") == 10
    assert one(m["vproxy_server_weight"], server="b1") == 5
    assert sum(m["vproxy_server_bytes_in_total"].values()) == total
    assert sum(m["vproxy_server_bytes_out_total"].values()) == total

    loops = m["vproxy_event_loop_sessions"]
    assert one(loops, group="(worker-elg)", loop="(worker-el)") == 0
    assert one(m["process_open_fds"]) > 0
    assert one(m["process_resident_memory_bytes"]) > 10_000_000


def test_live_sessions_count_while_they_run(instance: Instance) -> None:
    lb = instance.app.tcp_lbs["lb0"]
    clients = [socket.create_connection(lb.address, timeout=10) for _ in range(3)]
    try:
        for c in clients:
            c.sendall(b"hello")
            assert c.recv(5) == b"hello"
        # A relay step counts its bytes right after writing them: the client may read
        # them a moment before the counters show them.
        wait_until(
            lambda: all(
                s["bytes_in"] == 5 and s["bytes_out"] == 5
                for s in json.loads(get(instance.api, "/api/v1/status")[2])["sessions"]
            )
        )
        m = scrape(instance.api)
        assert one(m["vproxy_listener_active_sessions"], listener="lb0") == 3
        assert one(m["vproxy_listener_bytes_in_total"], listener="lb0") == 15
        assert sum(m["vproxy_server_active_sessions"].values()) == 3
        status = json.loads(get(instance.api, "/api/v1/status")[2])
        assert status["sessions_total"] == 3
        assert {s["client"] for s in status["sessions"]} == {
            f"127.0.0.1:{c.getsockname()[1]}" for c in clients
        }
        assert all(s["bytes_in"] == 5 and s["bytes_out"] == 5 for s in status["sessions"])
    finally:
        for c in clients:
            c.close()
    wait_until(lambda: not lb.sessions)


def test_health_down_and_weight_show_in_metrics_and_status(instance: Instance) -> None:
    instance.backends[1].stop()
    group = instance.app.server_groups["g0"]
    wait_until(lambda: not group.get("b1").healthy, timeout=5)
    instance.run("update server b0 in server-group g0 weight 0")
    m = scrape(instance.api)
    assert one(m["vproxy_server_up"], server="b1") == 0
    assert one(m["vproxy_server_weight"], server="b0") == 0
    assert not [k for k in m["vproxy_server_health_check_latency_seconds"] if ("server", "b1") in k]

    status = json.loads(get(instance.api, "/api/v1/status")[2])
    servers = {s["name"]: s for g in status["server_groups"] for s in g["servers"]}
    assert servers["b1"]["up"] is False
    assert servers["b0"]["weight"] == 0
    assert servers["b0"]["drained_from"] == 10
    assert servers["b1"]["changed_ago_s"] < servers["b0"]["changed_ago_s"]
    newest = status["transitions"][0]
    assert (newest["server"], newest["up"]) == ("b1", False)
    assert {(t["server"], t["up"]) for t in status["transitions"]} >= {
        ("b0", True),
        ("b1", True),
        ("b1", False),
    }


def test_metrics_and_status_need_the_token(instance: Instance) -> None:
    for path in ("/metrics", "/api/v1/status"):
        status, _, body = get(instance.api, path, token=None)
        assert status == 401
        assert json.loads(body)["code"] == 401
        assert get(instance.api, path, token="wrong")[0] == 401
    assert get(instance.api, "/api/v1/status?x=1")[0] == 400


def test_health_book_is_bounded_and_forgets_removed_groups() -> None:
    book = HealthBook(capacity=3)
    group = ServerGroup("g")  # no event-loop group: no real checks
    book.watch(group)
    server = group.add("s", ("127.0.0.1", 1))
    book.server_added(server)
    for i in range(5):
        group.set_healthy(server, i % 2 == 0)
    got: list[Any] = [(t.server, t.up) for t in book.transitions()]
    assert got == [("s", True), ("s", False), ("s", True)]  # newest first, 3 kept
    book.unwatch(group)
    group.set_healthy(server, False)
    assert len(book.transitions()) == 3
    assert book.transitions()[0].up is True
    book.weight_changed(server, 7, 0)
    assert book.drained_from(server) == 7
    book.weight_changed(server, 0, 3)
    assert book.drained_from(server) is None


def test_health_book_notes_when_a_server_changed_state() -> None:
    book = HealthBook()
    group = ServerGroup("g")  # no event-loop group: no real checks
    book.watch(group)
    server = group.add("s", ("127.0.0.1", 1))
    assert book.since(server) is None
    before = time.time()
    book.server_added(server)
    added = book.since(server)
    assert added is not None
    assert before <= added <= time.time()
    time.sleep(0.01)
    book.server_added(server)  # (an edge may come first: an add does not move it)
    assert book.since(server) == added
    group.set_healthy(server, True)
    edge = book.since(server)
    assert edge is not None
    assert edge > added
    # A server added again under the same name is a new object: nothing carried over.
    group.remove("s")
    again = group.add("s", ("127.0.0.1", 1))
    assert book.since(again) is None
    assert book.drained_from(again) is None
    book.unwatch(group)
