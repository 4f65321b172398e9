"""What an operator sees of L7 traffic: one access-log line per request, and the
status-class counters of /metrics, against a scripted 10,000-request run of an
independent client (h2load in HTTP/1.1 mode, which sends an exact request count)."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import LoopThread, wait_until
from http_backend import HttpBackend
from vproxy.app.access_log import AccessLog
from vproxy.control.application import Application
from vproxy.control.command import parse
from vproxy.control.executor import Executor, Origin
from vproxy.control.reply import OK

TOKEN = "l7-token"
REQUESTS = 10_000


@pytest.fixture
def lt() -> Iterator[LoopThread]:
    t = LoopThread()
    yield t
    t.close()


def test_10000_requests_give_10000_log_lines_and_counters(lt: LoopThread, tmp_path: Path) -> None:
    backends = [HttpBackend(lt, f"b{i}") for i in range(2)]
    log_path = tmp_path / "access.log"
    app = Application.create_default()
    app.access_log = AccessLog(log_path)
    ex = Executor(app)
    try:
        for line in (
            "add server-group g0 timeout 500 period 200 up 1 down 2",
            f"add server b0 to server-group g0 address 127.0.0.1:{backends[0].port}",
            f"add server b1 to server-group g0 address 127.0.0.1:{backends[1].port}",
            "add upstream u0",
            "add server-group g0 to upstream u0 weight 10",
            "add tcp-lb web address 127.0.0.1:0 upstream u0 protocol http/1.x",
            f"System: add http-controller h0 address 127.0.0.1:0 token {TOKEN}",
        ):
            assert ex.execute(parse(line), Origin.STDIO) == OK, line
        group = app.server_groups["g0"]
        wait_until(lambda: len(group.healthy_servers) == 2)
        port = app.tcp_lbs["web"].address[1]
        out = subprocess.run(
            ["h2load", "--h1", "-n", str(REQUESTS), "-c", "10", f"http://127.0.0.1:{port}/x?y=1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert f"{REQUESTS} succeeded, 0 failed, 0 errored" in out.stdout, out.stdout
        assert f"status codes: {REQUESTS} 2xx" in out.stdout, out.stdout

        def lines() -> list[str]:
            return log_path.read_text().splitlines() if log_path.exists() else []

        wait_until(lambda: len(lines()) >= REQUESTS, 15)
        records = [json.loads(x) for x in lines()]
        assert len(records) == REQUESTS
        assert {r["status"] for r in records} == {200}
        assert {(r["method"], r["target"], r["host"]) for r in records} == {
            ("GET", "/x?y=1", "127.0.0.1")
        }
        assert {r["listener"] for r in records} == {"web"}
        per_backend = Counter(r["backend"] for r in records)
        assert per_backend == {"b0": REQUESTS // 2, "b1": REQUESTS // 2}
        assert all(r["bytes_to_client"] > 0 and r["duration_ms"] >= 0 for r in records)

        api = app.http_controllers["h0"].address
        text = subprocess.run(
            ["curl", "-sS", "-H", f"Authorization: Bearer {TOKEN}",
             f"http://127.0.0.1:{api[1]}/metrics"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        codes = {
            s.labels["code"]: s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == "vproxy_listener_http_responses_total" and s.labels["listener"] == "web"
        }
        assert codes == {"none": 0, "1xx": 0, "2xx": REQUESTS, "3xx": 0, "4xx": 0, "5xx": 0}
    finally:
        app.close()
        for b in backends:
            b.stop()
