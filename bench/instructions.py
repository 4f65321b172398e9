"""User-space instructions per request of a vproxy process, counted by callgrind.

Wall-clock and CPU-time figures on a shared 2-core machine move by ±5-10% from run
to run, which hides the 1-3% that most changes to the data path are worth.
callgrind counts instructions instead: the same code path gives the same count
whatever else the machine does. The kernel's share (system calls) is not counted:
`strace -c` tells that part.

    python3 bench/instructions.py                       # close and keep-alive, 2,000 each
    python3 bench/instructions.py --mode close -n 5000
    python3 bench/instructions.py --protocol http/1.x   # the L7 mode instead of L4
    python3 bench/instructions.py --protocol h2 -n 5000 # h2load, h2c backend
    python3 bench/instructions.py --mode socks5         # a socks5-server tunnel per request

vproxy (`vproxy simple`, from this checkout) runs under `valgrind --tool=callgrind`
with instrumentation off until it serves; a warm-up of 200 requests runs, then
counting is switched on (`callgrind_control -i on`), N requests run, and the dump's
total divided by N is printed. The backend is a small asyncio HTTP/1.1 server in its
own process (not counted); the client is this script, sequential, one request in
flight. The vproxy process runs with `PYTHONHASHSEED=0` (unless set): with a
random seed each run probes its dicts and sets differently, and the count moves by up
to 3%. In the close and socks5 modes the request says `Connection: close` and the
backend closes after its answer, as bench/run.py's nginx does under `wrk -H
'Connection: close'` and `s5load`: the backend's FIN comes first. Everything is on
127.0.0.1 with free ports; every process is stopped by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
#: close and socks5 modes: the backend answers and closes first, as bench/run.py's
#: nginx does for wrk -H 'Connection: close' and for s5load
REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"

BACKEND = r"""
import asyncio, sys
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n"
if sys.argv[1:] == ["nginx"]:  # the response of bench/run.py's nginx backend
    RESP = (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 14:59:55 GMT\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nhello\n"
    )
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            self.t.write(RESP)
            if b"\r\nConnection: close" in head:  # as nginx: answer, then close
                self.t.close()
                return
async def main():
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", 0)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def recv_response(s: socket.socket) -> None:
    data = b""
    while not data.endswith(b"hello\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"connection closed after {data!r}")
        data += chunk


def run_requests(port: int, n: int, close: bool) -> None:
    if close:  # as wrk: close once the response is in (the backend closes too)
        for _ in range(n):
            with socket.create_connection((HOST, port), timeout=30) as s:
                s.sendall(REQUEST_CLOSE)
                recv_response(s)
        return
    with socket.create_connection((HOST, port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            s.sendall(REQUEST)
            recv_response(s)


@contextlib.contextmanager
def process(argv: list[str], **kw: object) -> Iterator[subprocess.Popen[str]]:
    p = subprocess.Popen(argv, text=True, start_new_session=True, **kw)  # type: ignore[call-overload]
    try:
        yield p
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_port(port: int, p: subprocess.Popen[str], limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"vproxy exited with {p.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"vproxy did not listen on {port} within {limit:.0f} s")


def total_instructions(path: Path) -> int:
    text = path.read_text(errors="replace")
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if m is None:
        raise RuntimeError(f"no totals in {path}")
    return int(m.group(1))


def run_socks5(port: int, backend_port: int, n: int) -> None:
    """``n`` tunnels: greeting and CONNECT in one write, the request, the response, close."""
    hello = b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton(HOST)
    hello += backend_port.to_bytes(2, "big")
    for _ in range(n):
        with socket.create_connection((HOST, port), timeout=30) as s:
            s.sendall(hello)
            got = b""
            while len(got) < 12:
                chunk = s.recv(12 - len(got))
                if not chunk:
                    raise RuntimeError(f"socks5 handshake cut after {got!r}")
                got += chunk
            if got[:4] != b"\x05\x00\x05\x00":
                raise RuntimeError(f"socks5 refused: {got!r}")
            s.sendall(REQUEST_CLOSE)  # as s5load: read to the backend's close
            recv_response(s)
            while s.recv(4096):
                pass


def run_h2load(port: int, n: int) -> None:
    """``n`` h2c requests (prior knowledge) over 4 connections, 8 streams each."""
    argv = ["h2load", "-n", str(n), "-c", "4", "-m", "8", f"http://{HOST}:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300).stdout
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
    if m is None or int(m.group(1)) != n:
        raise RuntimeError(f"h2load did not succeed {n} times:\n{out}")


def measure(mode: str, n: int, protocol: str | None, tmp: Path, nginx: bool = False) -> float:
    h2 = protocol == "h2"
    backend_argv = [sys.executable, "-c", BACKEND]
    if nginx:
        backend_argv.append("nginx")
    if h2:  # an h2c backend: python-hyper h2, in its own process (not counted)
        backend_argv = [sys.executable, str(REPO / "tests" / "h2_backend.py"), "b"]
    with process(backend_argv, stdout=subprocess.PIPE) as backend:
        assert backend.stdout is not None
        bport = int(backend.stdout.readline().split()[-1])
        port = free_port()
        out = tmp / f"callgrind.{mode}.out"
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        if mode == "socks5":
            conf = tmp / "socks5.conf"
            conf.write_text(
                "add server-group backend timeout 1000 period 2000 up 1 down 2 method wrr\n"
                f"add server b0 to server-group backend address {HOST}:{bport} weight 10\n"
                "add upstream backend\n"
                "add server-group backend to upstream backend weight 10\n"
                f"add socks5-server s5 address {HOST}:{port} upstream backend"
                " acceptor-elg (worker-elg)\n"
            )
            argv += [sys.executable, "-m", "vproxy", "load", str(conf)]
            argv += ["noLoadLast", "noSave", "noStdIOController"]
        else:
            argv += [sys.executable, "-m", "vproxy", "simple", "bind", str(port)]
            argv += ["backend", f"{HOST}:{bport}", "address", HOST]
            if protocol:
                argv += ["protocol", protocol]
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"), HOME=str(tmp))
        # A fixed string-hash seed: dict and set probing (and so the count) would
        # otherwise change with each run's random seed, by up to 3% for socks5.
        env.setdefault("PYTHONHASHSEED", "0")
        with process(
            argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ) as vp:
            wait_port(port, vp, 180)
            if h2:
                run_h2load(port, 500)  # warm-up, not counted
            elif mode == "socks5":
                time.sleep(3)  # the health check marks the server UP first
                run_socks5(port, bport, 200)
            else:
                run_requests(port, 200, mode == "close")  # warm-up, not counted
            subprocess.run(
                ["callgrind_control", "-i", "on", str(vp.pid)],
                check=True,
                capture_output=True,
                timeout=60,
            )
            if h2:
                run_h2load(port, n)
            elif mode == "socks5":
                run_socks5(port, bport, n)
            else:
                run_requests(port, n, mode == "close")
            subprocess.run(
                ["callgrind_control", "-d", str(vp.pid)],
                check=True,
                capture_output=True,
                timeout=120,
            )
            time.sleep(1)
        dumps = sorted(tmp.glob(f"callgrind.{mode}.out*"))
        counted = [d for d in dumps if d != out and total_instructions(d) > 0]
        if not counted:
            raise RuntimeError("callgrind wrote no dump with counts")
        return total_instructions(counted[0]) / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("close", "keepalive", "both", "socks5"), default="both")
    p.add_argument("-n", type=int, default=2000, help="requests counted per mode")
    p.add_argument("--protocol", default=None, help="tcp-lb protocol (default: L4 relay)")
    p.add_argument(
        "--nginx-response",
        action="store_true",
        help="the backend answers as bench/run.py's nginx does (five field lines, not one)",
    )
    p.add_argument("--keep", type=Path, help="copy the callgrind dumps here (callgrind_annotate)")
    a = p.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (callgrind) is needed: apt-get install -y valgrind", file=sys.stderr)
        return 1
    modes = ("close", "keepalive") if a.mode == "both" else (a.mode,)
    if a.protocol == "h2":
        if shutil.which("h2load") is None:
            print("h2load is needed: apt-get install -y nghttp2-client", file=sys.stderr)
            return 1
        modes = ("keepalive",)  # h2load: 4 connections, 8 streams each
    with tempfile.TemporaryDirectory(prefix="vproxy-instr-") as d:
        for mode in modes:
            per = measure(mode, a.n, a.protocol, Path(d), a.nginx_response)
            what = a.protocol or "L4"
            print(f"{what} {mode}: {per:,.0f} instructions per request (n={a.n})", flush=True)
        if a.keep is not None:
            a.keep.mkdir(parents=True, exist_ok=True)
            for f in Path(d).glob("callgrind.*"):
                shutil.copy(f, a.keep / f.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
