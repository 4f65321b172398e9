"""Shared test helpers: loopback backends in their own threads, polling, processes.

Backends here are deliberately NOT built on vproxy's own classes, so a bug in the
data plane cannot hide itself in the test harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def wait_until(pred: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``pred`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {pred}")
        time.sleep(interval)


#: ``struct tcp_info`` offsets (linux/tcp.h) of the u32 fields the tests read
TCPI_UNACKED = 24
TCPI_SEGS_IN = 140


def tcp_info_u32(sock: socket.socket, offset: int) -> int:
    """One u32 field of ``sock``'s ``TCP_INFO`` (see the ``TCPI_*`` offsets)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 144)
    return int.from_bytes(info[offset : offset + 4], "little")


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (any of its threads may have started them)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return sorted(out)


def assert_stop_leaves_no_client_connected(
    start: Callable[[], tuple[Any, tuple[str, int]]],
    stop: Callable[[Any], None],
    rounds: int = 8,
    clients: int = 20,
) -> None:
    """Clients that connect in the instant of a stop are all closed by it (EOF or
    reset within 5 s), none left connected to a socket only the GC would close.

    ``start()`` starts a listener and returns it with its address; ``stop(it)`` stops
    it. Each round connects ``clients`` non-blocking sockets and stops at once, so the
    stop reaches the loop while it accepts them. The GC is off meanwhile: a socket
    left open must not be closed by a collection before it is seen.
    """
    gc.disable()
    try:
        for _ in range(rounds):
            listener, address = start()
            socks: list[socket.socket] = []
            try:
                for _ in range(clients):
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(address)
                    socks.append(s)
                stop(listener)
                for s in socks:
                    s.settimeout(5)
                    try:
                        got = s.recv(1)
                    except ConnectionError:
                        continue  # refused or reset: closed too
                    except TimeoutError:
                        raise AssertionError("a client was left connected after the stop") from None
                    assert got == b"", f"a client got {got!r} from a stopped listener"
            finally:
                for s in socks:
                    s.close()
    finally:
        gc.enable()


class LoopThread:
    """A plain asyncio loop in a daemon thread, for test servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.backends: list[Backend] = []

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        for b in self.backends:
            if b.server is not None:
                with contextlib.suppress(Exception):
                    b.stop()

        async def _shutdown() -> None:
            # Let handler tasks of just-accepted connections take their first step, so
            # that cancelling them runs their `finally: w.close()` (a task cancelled
            # before it starts never closes its transport: "unclosed transport").
            for _ in range(3):
                await asyncio.sleep(0)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Whatever is still open (a connection whose handler task was cancelled
            # before its first step, a close() waiting on a write buffer the peer will
            # never drain) is aborted here. A transport's close finishes in a callback
            # of a later loop turn: stopping the loop before it runs leaves the socket
            # open, reported as an "unclosed transport" by whichever later test the GC
            # runs in -- so wait until every socket is really released.
            await release_transports()

        with contextlib.suppress(Exception):
            self.run(_shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


async def stop_serving(server: asyncio.AbstractServer, turns: int = 5) -> None:
    """Close ``server`` without leaking a connection it accepted just before.

    Python 3.11's ``Server.close()`` lets the accepts already made go on in tasks, and
    a transport made after the close fails in its ``__init__`` (``Server._attach``
    asserts the server is open): the exception is swallowed and the socket is left
    open, found later by the GC as an "unclosed transport". So: stop accepting first,
    let the accepted connections reach their handlers (which close them once
    stopped), then close.
    """
    loop = asyncio.get_running_loop()
    for sock in getattr(server, "sockets", ()):
        loop.remove_reader(sock.fileno())
    for _ in range(turns):
        await asyncio.sleep(0)
    server.close()
    for _ in range(turns):
        await asyncio.sleep(0)


async def release_transports(turns: int = 200) -> None:
    """Abort every socket transport of the running loop that still holds its socket,
    and wait until each has let it go (its connection_lost callback ran).

    A selector loop keeps a weak map fd -> transport of every transport it made.
    """
    live = getattr(asyncio.get_running_loop(), "_transports", None)
    for _ in range(turns):
        still = [t for t in list((live or {}).values()) if getattr(t, "_sock", None) is not None]
        if not still:
            return
        for t in still:
            t.abort()
        await asyncio.sleep(0)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]


class Backend:
    """A loopback TCP server running ``handler`` for each connection.

    ``connections`` counts accepted connections; ``stop()`` closes the listener and
    every open connection (the port can be reused by ``start()`` again).
    """

    def __init__(self, lt: LoopThread, handler: Handler, host: str = "127.0.0.1", port: int = 0):
        self.lt = lt
        self.handler = handler
        self.host = host
        self.port = port
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopped = False
        lt.backends.append(self)
        self.start()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> None:
        self._stopped = False

        async def _start() -> asyncio.AbstractServer:
            async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                if self._stopped:
                    # accepted before stop() but handed over after it (a loaded loop
                    # finishes accepts later): close it, or its transport leaks
                    w.transport.abort()
                    return
                self.connections += 1
                self._writers.add(w)
                try:
                    await self.handler(r, w)
                except (OSError, asyncio.IncompleteReadError):
                    pass
                finally:
                    self._writers.discard(w)
                    w.close()

            return await asyncio.start_server(
                handle, self.host, self.port, reuse_address=True, limit=1 << 20
            )

        self.server = self.lt.run(_start())
        self.port = self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def _stop(server: asyncio.AbstractServer | None) -> None:
            assert server is not None
            await stop_serving(server)
            for w in list(self._writers):
                w.transport.abort()
            await server.wait_closed()

        self._stopped = True  # from now a late handler closes its connection at once
        self.lt.run(_stop(self.server))
        self.server = None


async def echo_handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(65536):
        w.write(data)
        await w.drain()


def id_handler(ident: str) -> Handler:
    """Say ``ident\\n`` on connect, then echo."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(ident.encode() + b"\n")
        await w.drain()
        await echo_handler(r, w)

    return handler


def http_handler(ident: str) -> Handler:
    """A keep-alive HTTP/1.1 responder answering every request with ``ident``."""
    body = ident.encode()
    resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )

    close_resp = resp.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            closing = b"connection: close" in head.lower()
            w.write(close_resp if closing else resp)
            if closing:
                # Let the client close first (as it does after a complete response):
                # closing first races the client's next read.
                await w.drain()
                await r.read()
                return
            await w.drain()

    return handler


def read_ident(addr: tuple[str, int], source: str | None = None, timeout: float = 5) -> str:
    """Connect (optionally from ``source``), read one line, close."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if source:
            s.bind((source, 0))
        s.connect(addr)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                break
            data += chunk
        return data.decode().strip()
    finally:
        s.close()


def socks5_connect(addr: tuple[str, int], target: tuple[str, int]) -> socket.socket:
    """A client socket through the socks5 server at ``addr`` to IPv4 ``target``
    (no authentication, CONNECT succeeded)."""
    c = socket.create_connection(addr, timeout=5)
    c.sendall(b"\x05\x01\x00")
    assert c.recv(2) == b"\x05\x00"
    c.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(target[0]) + target[1].to_bytes(2, "big"))
    reply = c.recv(10)
    assert reply[:2] == b"\x05\x00", reply
    return c


def execute_ok(ex: Any, line: str) -> Any:
    """Run a command line on executor ``ex`` (from stdio); it must not fail."""
    from vproxy.control.executor import Origin
    from vproxy.control.reply import ErrorReply

    r = ex.execute_line(line, Origin.STDIO)
    assert not isinstance(r, ErrorReply), f"{line}: {r}"
    return r


def config_lines(ex: Any) -> list[str]:
    """``list config`` of executor ``ex``: the commands that rebuild its state."""
    from vproxy.control.executor import Origin
    from vproxy.control.reply import Array, String

    r = ex.execute_line("System: list config", Origin.STDIO)
    assert isinstance(r, Array)
    return [item.value for item in r.items if isinstance(item, String)]


def fd_count(pid: int | None = None) -> int:
    return len(os.listdir(f"/proc/{pid or os.getpid()}/fd"))


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmRSS:\s+(\d+) kB", text)
    assert m
    return int(m.group(1))


class VproxyProcess:
    """``python -m vproxy ARGS`` in a subprocess; knows the port it printed."""

    LISTEN_RE = re.compile(rb"listening on (\S+):(\d+)")

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(ROOT / "src")
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vproxy", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=full_env,
            preexec_fn=preexec,
        )
        self.port = 0
        self.stderr_text = ""
        deadline = time.monotonic() + 15
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = self.LISTEN_RE.search(line)
            if m:
                self.port = int(m.group(2))
                break
        if not self.port:
            self.stop()
            raise AssertionError(f"vproxy did not start: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            self.stderr_text = self.proc.stderr.read().decode(errors="replace")
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@contextlib.contextmanager
def vproxy_process(
    *args: str,
    env: dict[str, str] | None = None,
    preexec: Callable[[], None] | None = None,
) -> Iterator[VproxyProcess]:
    p = VproxyProcess(*args, env=env, preexec=preexec)
    try:
        yield p
    finally:
        p.stop()


def source_of(module: ModuleType) -> Path:
    """A module's ``.py`` file, also when it was imported from its compiled form (the
    extension mypyc builds next to it: setup.py)."""
    assert module.__file__ is not None
    return Path(module.__file__).with_name(module.__name__.rpartition(".")[2] + ".py")


@contextlib.contextmanager
def manual_tcp_lb(
    elg_factory: Callable[..., Any], addresses: list[tuple[str, int]], workers: int = 1
) -> Iterator[tuple[Any, Any]]:
    """A started tcp-lb over servers ``s0``, ``s1``, ... at ``addresses``, marked UP
    by hand (no health checks: nothing but the relay is timed); yields ``(lb, group)``
    and stops it, with its sessions, at the end."""
    from vproxy import ServerGroup, TcpLB, Upstream

    group = ServerGroup("sg")
    for i, address in enumerate(addresses):
        group.set_healthy(group.add(f"s{i}", address, weight=10), True)
    ups = Upstream("u")
    ups.add(group)
    lb = TcpLB(
        "lb",
        ("127.0.0.1", 0),
        ups,
        acceptor_elg=elg_factory("a", 1),
        worker_elg=elg_factory("w", workers),
    ).start()
    try:
        yield lb, group
    finally:
        lb.stop(close_sessions=True)
        wait_until(lambda: not lb.sessions, 10)
