"""Bulk transfers through a tcp-lb running as its own process: integrity and memory."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import threading
import time

import pytest

from helpers import Backend, LoopThread, http_handler, rss_kib, vproxy_process, wait_until

GiB = 1 << 30
BLOCK = 1 << 20


def _block(base: bytes, i: int) -> bytes:
    return i.to_bytes(8, "big") + base[8:]


def _send_blocks(sock: socket.socket, base: bytes, n: int, digest: hashlib._Hash) -> None:
    for i in range(n):
        b = _block(base, i)
        digest.update(b)
        sock.sendall(b)
    sock.shutdown(socket.SHUT_WR)


def _recv_all(sock: socket.socket, digest: hashlib._Hash, counter: list[int]) -> None:
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    while n := sock.recv_into(buf):
        digest.update(view[:n])
        counter[0] += n


class BulkBackend:
    """Accepts one connection; sends ``n`` blocks while hashing what it receives."""

    def __init__(self, base: bytes, n: int, slow: float = 0.0) -> None:
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.base = base
        self.n = n
        self.slow = slow
        self.sent = hashlib.sha256()
        self.got = hashlib.sha256()
        self.received = [0]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.lsock.getsockname()[1]}"

    def _run(self) -> None:
        try:
            while True:
                conn, _ = self.lsock.accept()
                # health checks connect and close at once; the real session sends data
                conn.settimeout(60)
                first = conn.recv(BLOCK)
                if not first:
                    conn.close()
                    continue
                self.got.update(first)
                self.received[0] += len(first)
                break
            sender = threading.Thread(
                target=_send_blocks, args=(conn, self.base, self.n, self.sent), daemon=True
            )
            sender.start()
            if self.slow:
                buf = bytearray(64 * 1024)
                while n := conn.recv_into(buf):
                    self.got.update(memoryview(buf)[:n])
                    self.received[0] += n
                    time.sleep(self.slow)
            else:
                _recv_all(conn, self.got, self.received)
            sender.join()
            conn.close()
        except BaseException as exc:
            self.error = exc
        finally:
            self.lsock.close()


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_one_gib_each_way_byte_exact(loop: str) -> None:
    base = bytes(range(256)) * (BLOCK // 256)
    n = GiB // BLOCK
    backend = BulkBackend(base, n)
    with vproxy_process(
        "simple",
        "bind",
        "0",
        "address",
        "127.0.0.1",
        "backend",
        backend.address,
        env={"VPROXY_EVENT_LOOP": loop},
    ) as vp:
        time.sleep(0.3)
        c = socket.create_connection(("127.0.0.1", vp.port), timeout=60)
        sent, got, counter = hashlib.sha256(), hashlib.sha256(), [0]
        t = threading.Thread(target=_send_blocks, args=(c, base, n, sent), daemon=True)
        t.start()
        _recv_all(c, got, counter)
        t.join(120)
        c.close()
        backend.thread.join(120)
    assert backend.error is None
    assert counter[0] == GiB
    assert backend.received[0] == GiB
    assert got.hexdigest() == backend.sent.hexdigest()
    assert backend.got.hexdigest() == sent.hexdigest()


@pytest.mark.slow
def test_backpressure_bounds_memory_with_slow_reader() -> None:
    """256 MiB to a backend reading ~32 MiB/s: the proxy's RSS stays bounded.

    Bound: the proxy buffers at most in+out buffer (2 x 16 KiB) plus one read chunk
    (<= 256 KiB) per direction for this one session; we allow the baseline RSS plus
    8 MiB for allocator noise, far below the 256 MiB that unbounded buffering needs.
    """
    base = bytes(range(256)) * (BLOCK // 256)
    n = 256
    backend = BulkBackend(base, 0, slow=0.002)
    with vproxy_process(
        "simple",
        "bind",
        "0",
        "address",
        "127.0.0.1",
        "backend",
        backend.address,
        "in-buffer-size",
        "16384",
        "out-buffer-size",
        "16384",
    ) as vp:
        time.sleep(0.3)
        baseline = rss_kib(vp.pid)
        c = socket.create_connection(("127.0.0.1", vp.port), timeout=60)
        sent = hashlib.sha256()
        t = threading.Thread(target=_send_blocks, args=(c, base, n, sent), daemon=True)
        t.start()
        peak = baseline
        while t.is_alive():
            peak = max(peak, rss_kib(vp.pid))
            time.sleep(0.05)
        backend.thread.join(120)
        c.close()
    assert backend.error is None
    assert backend.received[0] == n * BLOCK
    assert backend.got.hexdigest() == sent.hexdigest()
    assert peak - baseline < 8 * 1024, f"RSS grew by {peak - baseline} KiB"


@pytest.mark.slow
def test_iperf3_through_tcp_lb() -> None:
    iperf3 = shutil.which("iperf3")
    assert iperf3, "iperf3 must be installed (the test command installs it)"
    with socket.socket() as s:  # a free port for the iperf3 server
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = subprocess.Popen(
        [iperf3, "-s", "-B", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _port_open(port), 10)
        with vproxy_process(
            "simple", "bind", "0", "address", "127.0.0.1", "backend", f"127.0.0.1:{port}"
        ) as vp:
            time.sleep(0.5)
            out = subprocess.run(
                [iperf3, "-c", "127.0.0.1", "-p", str(vp.port), "-t", "2", "-J"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.returncode == 0, out.stdout + out.stderr
            import json

            result = json.loads(out.stdout)
            assert result["end"]["sum_received"]["bytes"] > 0
    finally:
        srv.terminate()
        srv.wait(10)


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_wrk_through_tcp_lb(backend_loop: LoopThread) -> None:
    wrk = shutil.which("wrk")
    assert wrk, "wrk must be installed (the test command installs it)"
    b = Backend(backend_loop, http_handler("ok"))
    with vproxy_process(
        "simple", "bind", "0", "address", "127.0.0.1", "backend", f"127.0.0.1:{b.port}"
    ) as vp:
        time.sleep(0.5)
        for extra in ([], ["-H", "Connection: close"]):
            out = subprocess.run(
                [wrk, "-t1", "-c8", "-d1s", *extra, f"http://127.0.0.1:{vp.port}/"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.returncode == 0, out.stderr
            assert "requests in" in out.stdout
            assert "Non-2xx" not in out.stdout
            assert "Socket errors" not in out.stdout or "read 0, write 0, timeout 0" in out.stdout
