"""The dashboard in a real headless Chromium (Debian's, driven by Playwright).

An instance with two backends and a token-protected HTTP controller: the page asks
for the token, shows both servers UP, shows one DOWN within ``down * period + 2 s``
of its backend stopping (without a reload), drains and undrains a server through the
REST API, and closes a live connection. Screenshots land in the test's tmp_path.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import Backend, LoopThread, VproxyProcess, children, echo_handler, wait_until
from vproxy.control.application import Application
from vproxy.control.command import parse
from vproxy.control.executor import Executor, Origin
from vproxy.control.reply import OK

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "dash-token"
PERIOD_MS = 300
DOWN = 2


@dataclass
class Instance:
    app: Application
    executor: Executor
    backends: list[Backend]

    @property
    def base(self) -> str:
        host, port = self.app.http_controllers["h0"].address
        return f"http://{host}:{port}"

    def api(self, method: str, path: str) -> Any:
        host, port = self.app.http_controllers["h0"].address
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, body
            return json.loads(body)
        finally:
            conn.close()

    def weight(self, server: str) -> int:
        detail = self.api("GET", f"/api/v1/module/server-group/g0/server/{server}")
        return int(detail["weight"])


@pytest.fixture
def instance(backend_loop: LoopThread) -> Iterator[Instance]:
    backends = [Backend(backend_loop, echo_handler) for _ in range(2)]
    app = Application.create_default()
    executor = Executor(app)
    try:
        for line in (
            f"add server-group g0 timeout 500 period {PERIOD_MS} up 1 down {DOWN}",
            f"add server web-a to server-group g0 address 127.0.0.1:{backends[0].port}",
            f"add server web-b to server-group g0 address 127.0.0.1:{backends[1].port}",
            "add upstream frontend",
            "add server-group g0 to upstream frontend weight 10",
            "add tcp-lb lb0 address 127.0.0.1:0 upstream frontend",
            "add socks5-server s5 address 127.0.0.1:0 upstream frontend",
            f"System: add http-controller h0 address 127.0.0.1:0 token {TOKEN}",
        ):
            reply = executor.execute(parse(line), Origin.STDIO)
            assert reply == OK, (line, reply)
        wait_until(lambda: len(app.server_groups["g0"].healthy_servers) == 2)
        yield Instance(app, executor, backends)
    finally:
        app.close()


@pytest.fixture
def page(instance: Instance) -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)")
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1360, "height": 900})
            pg = context.new_page()
            pg.set_default_timeout(10_000)
            foreign: list[str] = []
            pg.on(
                "request",
                lambda r: None if r.url.startswith(instance.base) else foreign.append(r.url),
            )
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            yield pg
            assert foreign == [], "the dashboard must not reach other origins"
            assert errors == [], errors
        finally:
            browser.close()


def server_state(page: Any, name: str) -> Any:
    return page.locator(f'tr.server[data-server="{name}"] .state')


def test_dashboard_live(instance: Instance, page: Any, tmp_path: Path) -> None:
    expect = playwright_sync.expect
    lb = instance.app.tcp_lbs["lb0"]
    # A live session to show (and to close from the page).
    client = socket.create_connection(lb.address, timeout=10)
    try:
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"

        page.goto(instance.base + "/ui/")
        # The API answers 401: the page asks for the token.
        expect(page.locator("#token-form")).to_be_visible()
        page.fill("#token-input", TOKEN)
        page.click("#token-form button[type=submit]")
        expect(page.locator("#token-form")).to_be_hidden()
        expect(page.locator("#conn-state")).to_have_text("live")

        expect(server_state(page, "web-a")).to_have_text("UP")
        expect(server_state(page, "web-b")).to_have_text("UP")
        listeners = page.locator("#listeners tbody")
        expect(listeners).to_contain_text("lb0")
        expect(listeners).to_contain_text("s5")
        expect(listeners).to_contain_text("http-controller")
        expect(page.locator("#sessions tbody tr")).to_have_count(1)
        expect(page.locator("#loops tbody")).to_contain_text("(worker-el)")
        expect(page.locator("#processes-box")).to_be_hidden()  # one process: no table
        page.wait_for_timeout(1500)  # a second poll: rates are shown
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        # A backend stops: DOWN on the page within down * period + 2 s, no reload.
        instance.backends[1].stop()
        expect(server_state(page, "web-b")).to_have_text("DOWN", timeout=DOWN * PERIOD_MS + 2000)
        expect(server_state(page, "web-a")).to_have_text("UP")
        first = page.locator("#transitions tbody tr").first
        expect(first).to_contain_text("web-b")
        expect(first).to_contain_text("DOWN")

        # Drain web-a through the page: the REST API then says weight 0.
        page.locator('tr.server[data-server="web-a"] button[data-action="drain"]').click()
        wait_until(lambda: instance.weight("web-a") == 0, timeout=5)
        undrain = page.locator('tr.server[data-server="web-a"] button[data-action="undrain"]')
        expect(undrain).to_be_visible()
        page.screenshot(path=str(tmp_path / "dashboard-drained.png"), full_page=True)
        undrain.click()
        wait_until(lambda: instance.weight("web-a") == 10, timeout=5)

        # Close the live connection from the page.
        page.locator('#sessions button[data-action="close"]').click()
        client.settimeout(5)
        try:
            assert client.recv(1) == b""
        except ConnectionResetError:
            pass
        wait_until(lambda: not lb.sessions, timeout=5)
        expect(page.locator("#sessions tbody tr")).to_have_count(0)
    finally:
        client.close()


def test_static_files_are_self_contained(instance: Instance) -> None:
    host, port = instance.app.http_controllers["h0"].address
    for name in ("", "index.html", "style.css", "app.js"):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", "/ui/" + name)  # no token: the files hold no data
            resp = conn.getresponse()
            body = resp.read().decode()
            assert resp.status == 200
            assert "default-src 'none'" in (resp.getheader("Content-Security-Policy") or "")
            assert "http://" not in body, name
            assert "https://" not in body, name
        finally:
            conn.close()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/ui/../metrics")
        resp = conn.getresponse()
        resp.read()
        assert resp.status in (401, 404)  # normalised to /metrics (token) or refused
        conn.request("GET", "/ui/nope.js")
        resp = conn.getresponse()
        assert resp.status == 404
        assert json.loads(resp.read())["code"] == 404
        conn.request("GET", "/ui")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 301
        assert resp.getheader("Location") == "/ui/"
    finally:
        conn.close()


def test_dashboard_shows_each_process_with_workers(tmp_path: Path) -> None:
    """``workers 2``: the page lists the master and the worker, each UP with its
    sessions and accepted connections; a worker killed comes back counted as
    restarted, without a reload."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)")
    expect = playwright_sync.expect
    vp = VproxyProcess(
        "noLoadLast", "noSave", "noStdIOController", "http-controller", "127.0.0.1:0",
        "workers", "2", env={"HOME": str(tmp_path)},
    )  # fmt: skip
    try:
        port = vp.port  # the http-controller's: the only thing listening
        assert port
        (worker,) = children(vp.pid)
        with playwright_sync.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.set_default_timeout(10_000)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"http://127.0.0.1:{port}/ui/")
                rows = page.locator("#processes tbody tr")
                expect(page.locator("#processes-box")).to_be_visible()
                expect(rows).to_have_count(2)
                expect(rows.nth(0)).to_contain_text("0 (master)")
                expect(rows.nth(1).locator(".badge")).to_have_text("UP")
                page.screenshot(path=str(tmp_path / "dashboard-workers.png"), full_page=True)
                os.kill(worker, signal.SIGKILL)
                # restarted: the Restarts cell of worker 1 says 1, and it is UP again
                expect(rows.nth(1).locator("td").nth(2)).to_have_text("1", timeout=15_000)
                expect(rows.nth(1).locator(".badge")).to_have_text("UP", timeout=15_000)
                assert errors == [], errors
            finally:
                browser.close()
    finally:
        vp.stop()
