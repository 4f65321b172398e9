"""Command-line entry point: ``vproxy`` and ``python -m vproxy`` (SPEC §3.4).

Owns: reading the start-up words (``hello``, ``simple bind PORT backend H:P,...``),
starting what they name (and the access log, ``accessLog PATH|stdout``; ``workers N``
forks the worker processes of :mod:`vproxy.control.workers` before any thread
starts), saying in one line what runs where, and waiting for a signal to stop. A
start-up error is one line on stderr and a non-zero exit (2: wrong words, 1: could not
start). The words follow the original's style (``key value`` pairs, no dashes).

Must not: hold global state at import time or reach into components' internals.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vproxy.app.access_log import STDOUT, AccessLog
from vproxy.app.tcp_lb import DEFAULT_BUFFER_SIZE, DEFAULT_TIMEOUT_MS, start_tcp_lb
from vproxy.build import build_kind
from vproxy.component.health_check import HealthCheckConfig
from vproxy.control.application import Application
from vproxy.control.command import CommandError
from vproxy.control.executor import Executor, Origin
from vproxy.control.metrics import listener_kind
from vproxy.control.workers import MAX_WORKERS, Workers
from vproxy.net.event_loop import EventLoopGroup, loop_kind
from vproxy.net.server_sock import format_address, parse_address

__all__ = ["main"]

_log = logging.getLogger("vproxy")


class UsageError(Exception):
    """The start-up words are wrong; the message says which and what was expected."""


@dataclass(slots=True)
class SimpleArgs:
    """``vproxy simple`` settings."""

    port: int = 0
    host: str = "0.0.0.0"
    backends: list[tuple[str, int]] = field(default_factory=list)
    protocol: str = "tcp"
    gen: bool = False
    in_buffer_size: int = DEFAULT_BUFFER_SIZE
    out_buffer_size: int = DEFAULT_BUFFER_SIZE
    timeout: int = DEFAULT_TIMEOUT_MS
    access_log: str | None = None
    workers: int = 1


_ACCESS_LOG_WORDS = ("accessLog", "accesslog")


def _access_log_word(words: list[str], i: int) -> str | None:
    """The value of ``accessLog PATH|stdout|off``: a destination, or None for off."""
    if i + 1 >= len(words) or not words[i + 1]:
        raise UsageError(f"{words[i]} needs a file path, stdout or off")
    value = words[i + 1]
    return None if value == "off" else value


def _open_access_log(destination: str | None) -> AccessLog | None:
    """Open the access log, or raise :class:`StartError` with one clear line."""
    if destination is None:
        return None
    try:
        return AccessLog(destination)
    except OSError as exc:
        raise StartError(f"cannot open access log {destination}: {exc.strerror or exc}") from None


class StartError(Exception):
    """Something named by the start-up words could not be started (exit code 1)."""


def _int_word(words: list[str], i: int, key: str, low: int, high: int) -> int:
    if i + 1 >= len(words):
        raise UsageError(f"{key} needs a value")
    v = words[i + 1]
    if not v.isdigit() or not low <= int(v) <= high:
        raise UsageError(f"{key} {v!r}: expected an integer {low}..{high}")
    return int(v)


def parse_simple(words: list[str]) -> SimpleArgs:
    """Parse the words after ``simple``."""
    args = SimpleArgs()
    have_bind = False
    i = 0
    while i < len(words):
        w = words[i]
        if w == "bind":
            args.port = _int_word(words, i, "bind", 0, 65535)
            have_bind = True
            i += 2
        elif w in ("address", "addr"):
            if i + 1 >= len(words):
                raise UsageError("address needs a value (the ip to bind)")
            args.host = words[i + 1]
            i += 2
        elif w == "backend":
            if i + 1 >= len(words):
                raise UsageError("backend needs a value: host:port[,host:port...]")
            for item in words[i + 1].split(","):
                try:
                    args.backends.append(parse_address(item.strip()))
                except ValueError as exc:
                    raise UsageError(f"backend: {exc}") from None
            i += 2
        elif w == "protocol":
            if i + 1 >= len(words):
                raise UsageError("protocol needs a value")
            args.protocol = words[i + 1]
            i += 2
        elif w in ("in-buffer-size", "out-buffer-size"):
            v = _int_word(words, i, w, 256, 16 * 1024 * 1024)
            if w == "in-buffer-size":
                args.in_buffer_size = v
            else:
                args.out_buffer_size = v
            i += 2
        elif w == "timeout":
            args.timeout = _int_word(words, i, w, 1, 86_400_000)
            i += 2
        elif w == "gen":
            args.gen = True
            i += 1
        elif w in _ACCESS_LOG_WORDS:
            args.access_log = _access_log_word(words, i)
            i += 2
        elif w == "workers":
            args.workers = _int_word(words, i, w, 1, MAX_WORKERS)
            i += 2
        else:
            raise UsageError(
                f"unexpected word {w!r}: expected bind, backend, address, protocol, "
                "in-buffer-size, out-buffer-size, timeout, accesslog, workers or gen"
            )
    if not have_bind:
        raise UsageError("simple needs bind PORT")
    if not args.backends:
        raise UsageError("simple needs backend host:port[,host:port...]")
    return args


def simple_config(args: SimpleArgs) -> str:
    """The command-language configuration equivalent to ``simple`` (for ``gen``)."""
    lines = [
        "add server-group backend timeout 1000 period 2000 up 1 down 2 method wrr",
    ]
    for i, (h, p) in enumerate(args.backends):
        addr = format_address(h, p)
        lines.append(f"add server backend{i} to server-group backend address {addr} weight 10")
    lines += [
        "add upstream backend",
        "add server-group backend to upstream backend weight 10",
        # One loop accepts and relays: no thread hand-off per connection (a third
        # less CPU per short connection, docs/performance.md).
        f"add tcp-lb lb0 address {format_address(args.host, args.port)} upstream backend"
        " acceptor-elg (worker-elg)"
        f" protocol {args.protocol} in-buffer-size {args.in_buffer_size}"
        f" out-buffer-size {args.out_buffer_size} timeout {args.timeout}",
    ]
    return "\n".join(lines) + "\n"


def build_simple(args: SimpleArgs, workers: Workers | None = None) -> tuple[Application, Executor]:
    """An application running what ``simple`` describes (closed again on error).

    Args:
        args: The start-up words.
        workers: Worker processes to replicate the configuration to (``workers N``).

    Raises:
        CommandError: The configuration could not be applied (e.g. port in use).
        StartError: The access log could not be opened.
    """
    log = _open_access_log(args.access_log)
    app = Application.create_default()
    app.set_access_log(log)
    executor = Executor(app)
    if workers is not None:
        workers.attach(executor)
    try:
        executor.load_lines(enumerate(simple_config(args).splitlines(), 1), "simple")
    except BaseException:
        app.close()
        raise
    return app, executor


def _install_signals(on_signal: Callable[[int], None]) -> None:
    def handler(signum: int, frame: object) -> None:
        on_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


class _StopSignals:
    """SIGINT and SIGTERM (and SIGHUP, unless ``on_hup`` handles it) ask to stop.

    Made before anything listens: a signal that comes once the listeners answer, or
    during the start-up, stops the process cleanly (exit 0) instead of killing it.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.on_hup: Callable[[], None] | None = None
        _install_signals(self._on_signal)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP and self.on_hup is not None:
            self.on_hup()
        else:
            self.stop.set()

    def wait(self) -> int:
        """Until a signal asks to stop (at once if one already did)."""
        while not self.stop.wait(3600):
            pass
        return 0


def _fork_workers(count: int, access_log: str | None) -> Workers | None:
    """Fork the worker processes of ``workers N`` (None for one process).

    Runs before anything starts a thread: the access log, event loops and
    controllers all come later.
    """
    if count <= 1:
        return None
    return Workers.fork(count, access_log)


def _say_workers(workers: Workers | None) -> None:
    if workers is not None:
        pids = ", ".join(str(p) for p in workers.pids)
        print(
            f"vproxy: {len(workers.pids) + 1} processes share the listeners"
            f" (master pid {os.getpid()}, workers {pids})",
            flush=True,
        )


def run_simple(args: SimpleArgs) -> int:
    """Start the one-line load balancer and serve until a signal."""
    if args.gen:
        sys.stdout.write(simple_config(args))
        return 0
    workers = _fork_workers(args.workers, args.access_log)
    try:
        return _run_simple(args, workers)
    finally:
        if workers is not None:
            workers.stop()


def _run_simple(args: SimpleArgs, workers: Workers | None) -> int:
    signals = _StopSignals()
    try:
        app, _ = build_simple(args, workers)
    except CommandError as exc:
        # The user typed no config lines: say what failed, not which generated line.
        cause = exc.__cause__
        message = cause.message if isinstance(cause, CommandError) else exc.message
        print(f"vproxy: {message}", file=sys.stderr)
        return 1
    lb = app.tcp_lbs["lb0"]
    print(
        f"vproxy: tcp-lb lb0 listening on {format_address(*lb.address)} -> "
        + ", ".join(format_address(h, p) for h, p in args.backends)
        + f" ({loop_kind()}, {build_kind()})",
        flush=True,
    )
    _say_workers(workers)
    log = app.access_log
    if log is not None:
        _say_access_log(log)

    def on_hup() -> None:
        if log is not None:
            log.reopen()
        if workers is not None:
            workers.send_signal(signal.SIGHUP)

    signals.on_hup = on_hup
    rc = signals.wait()
    if workers is not None:
        workers.stop()
    app.close()
    return rc


def _say_access_log(log: AccessLog) -> None:
    where = "standard output" if log.destination == STDOUT else log.destination
    print(f"vproxy: access log (JSON lines) -> {where}; SIGHUP reopens it", flush=True)


@dataclass(slots=True)
class MainArgs:
    """Start-up words of a full vproxy process (SPEC §3.4)."""

    load: list[str] = field(default_factory=list)
    resp_controller: tuple[tuple[str, int], str] | None = None
    http_controller: tuple[str, int] | None = None
    no_load_last: bool = False
    no_save: bool = False
    no_stdio: bool = False
    allow_system: bool = False
    access_log: str | None = None
    workers: int = 1


_FLAG_WORDS = {
    "noLoadLast": "no_load_last",
    "noSave": "no_save",
    "noStdIOController": "no_stdio",
    "allowSystemCommandInNonStdIOController": "allow_system",
}


def parse_main(words: list[str]) -> MainArgs:
    """Parse the start-up words of a full process."""
    args = MainArgs()
    i = 0

    def value(what: str) -> str:
        if i + 1 >= len(words):
            raise UsageError(f"{words[i]} needs {what}")
        return words[i + 1]

    def address(text: str) -> tuple[str, int]:
        try:
            return parse_address(text)
        except ValueError as exc:
            raise UsageError(f"{words[i]}: {exc}") from None

    while i < len(words):
        w = words[i]
        if w == "load":
            args.load.append(value("a file"))
            i += 2
        elif w == "resp-controller":
            addr = address(value("ADDRESS PASSWORD"))
            if i + 2 >= len(words):
                raise UsageError("resp-controller needs ADDRESS PASSWORD")
            args.resp_controller = (addr, words[i + 2])
            i += 3
        elif w == "http-controller":
            args.http_controller = address(value("ADDRESS"))
            i += 2
        elif w in _ACCESS_LOG_WORDS:
            args.access_log = _access_log_word(words, i)
            i += 2
        elif w in _FLAG_WORDS:
            setattr(args, _FLAG_WORDS[w], True)
            i += 1
        elif w == "workers":
            args.workers = _int_word(words, i, w, 1, MAX_WORKERS)
            i += 2
        else:
            raise UsageError(
                f"unexpected word {w!r}: expected load, resp-controller, http-controller, "
                "accessLog, workers, " + ", ".join(_FLAG_WORDS) + ", simple or hello"
            )
    return args


def run_main(args: MainArgs) -> int:
    """Run a full vproxy process until shutdown or a signal."""
    workers = _fork_workers(args.workers, args.access_log)
    try:
        return _run_main(args, workers)
    finally:
        if workers is not None:
            workers.stop()


def _run_main(args: MainArgs, workers: Workers | None) -> int:
    from vproxy.control.persist import ConfigFileError, default_last_path, read_config

    log = _open_access_log(args.access_log)
    app = Application.create_default()
    app.set_access_log(log)  # before anything is loaded: every listener logs
    executor = Executor(app, allow_system_in_non_stdio=args.allow_system)
    if workers is not None:
        workers.attach(executor)
    last = default_last_path()
    # Handlers first: a SIGHUP during start-up must not kill the process.
    hup = threading.Event()

    def on_signal(signum: int) -> None:
        if signum == signal.SIGHUP:
            hup.set()
        else:
            app.shutdown_requested.set()

    _install_signals(on_signal)

    try:
        files = [Path(f) for f in args.load]
        if not files and not args.no_load_last and last.exists():
            files = [last]
        for f in files:
            lines = read_config(f)
            executor.load_lines(((ln.number, ln.text) for ln in lines), str(f))
            print(f"vproxy: loaded {f} ({len(lines)} commands)", flush=True)
        if args.resp_controller is not None:
            addr, password = args.resp_controller
            _start_controller(executor, "resp-controller", addr, password)
        if args.http_controller is not None:
            _start_controller(executor, "http-controller", args.http_controller, None)
    except (CommandError, ConfigFileError) as exc:
        msg = exc.message if isinstance(exc, CommandError) else str(exc)
        print(f"vproxy: {msg}", file=sys.stderr)
        if files and files[0] == last:
            print("vproxy: start with noLoadLast to ignore the saved state", file=sys.stderr)
        app.close()
        return 1

    def save(reason: str) -> None:
        if args.no_save:
            return
        try:
            executor.save(last)
            _log.info("saved the configuration to %s (%s)", last, reason)
        except CommandError as exc:
            _log.error("autosave failed: %s", exc.message)

    for lb in app.listeners():
        print(
            f"vproxy: {listener_kind(lb)} {lb.name} listening on {format_address(*lb.address)}",
            flush=True,
        )
    for kind, table in (("resp", app.resp_controllers), ("http", app.http_controllers)):
        for c in table.values():
            where = format_address(*c.address)
            extra = ""
            if kind == "http":
                extra = f"; dashboard http://{where}/ui/, metrics http://{where}/metrics"
            print(f"vproxy: {kind}-controller listening on {where}{extra}", flush=True)
    _say_workers(workers)
    if log is not None:
        _say_access_log(log)
    stdio = None
    if not args.no_stdio and _stdin_is_console():
        from vproxy.control.stdio import StdIOController

        # Our own reader on a copy of fd 0: the console thread may sit in readline()
        # when we exit, and the interpreter must not try to close a reader that
        # thread holds (it aborts). A bad byte must not drop a buffer of lines.
        raw = io.FileIO(os.dup(sys.stdin.fileno()), "rb")
        stdin = io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8", errors="replace")
        stdio = StdIOController(executor, stdin, sys.stdout, on_eof=None)
        stdio.start()
    next_save = time.monotonic() + AUTOSAVE_SECONDS
    while not app.shutdown_requested.wait(0.5):
        if hup.is_set():
            hup.clear()
            if log is not None:
                log.reopen()
            if workers is not None:
                workers.send_signal(signal.SIGHUP)
            save("SIGHUP")
        if time.monotonic() >= next_save:
            save("hourly")
            next_save = time.monotonic() + AUTOSAVE_SECONDS
    save("shutdown")
    if workers is not None:
        workers.stop()
    app.close()
    if stdio is not None:
        stdio.stop()
        if stdio.running:
            # The console thread is blocked reading stdin and cannot be woken: leave
            # without the interpreter's clean-up, everything of ours is closed.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    return 0


AUTOSAVE_SECONDS = 3600


def _stdin_is_console() -> bool:
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return sys.stdin.isatty() or stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _start_controller(
    executor: Executor, kind: str, addr: tuple[str, int], secret: str | None
) -> None:
    from vproxy.control.command import Action, ControllerType, SystemCommand, SystemOp
    from vproxy.control.command.values import Address

    params: dict[str, Any] = {"address": Address(addr[0], addr[1])}
    if secret is not None:
        params["password"] = secret
    cmd = SystemCommand(
        SystemOp.CONTROLLER,
        controller=ControllerType(kind),
        action=Action.ADD,
        name=kind,
        params=params,
    )
    executor.run_or_raise(cmd, Origin.STDIO)


def run_hello(once: bool) -> int:
    """Start two demo backends, a tcp-lb over them and a client; show they work."""
    from vproxy.app.demo import DemoBackends

    signals = None if once else _StopSignals()
    elg = EventLoopGroup("hello", loops=1)
    backends = DemoBackends(elg.next(), count=2)
    print(f"vproxy hello: demo backends on {', '.join(backends.addresses_text)}")
    lb = start_tcp_lb(
        ("127.0.0.1", 0),
        backends.addresses,
        name="hello",
        health_check=HealthCheckConfig(timeout=500, period=200, up=1, down=2),
    )
    lb_text = format_address(*lb.address)
    print(
        f"vproxy hello: tcp-lb 'hello' listening on {lb_text}"
        f" (wrr over both, {loop_kind()}, {build_kind()})"
    )
    group = lb.upstream.groups[0].group
    deadline = time.monotonic() + 5
    while len(group.healthy_servers) < len(backends.addresses) and time.monotonic() < deadline:
        time.sleep(0.05)
    seen: dict[str, int] = {}
    for _ in range(6):
        try:
            who = _hello_request(lb.address)
        except OSError as exc:
            who = f"(error: {exc})"
        seen[who] = seen.get(who, 0) + 1
        print(f"vproxy hello: client request -> answered by {who}")
    ok = len(seen) == len(backends.addresses)
    print(f"vproxy hello: {'OK' if ok else 'FAILED'}: {len(seen)} backends answered, {seen}")
    if ok and signals is not None:
        print(f"vproxy hello: try `curl http://{lb_text}/`; Ctrl-C stops", flush=True)
        signals.wait()
    lb.stop(close_sessions=True)
    lb.acceptor_elg.close()
    lb.worker_elg.close()
    elg.close()
    return 0 if ok else 1


def _hello_request(address: tuple[str, int]) -> str:
    with socket.create_connection(address, timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: hello\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    body = data.partition(b"\r\n\r\n")[2].decode(errors="replace").strip()
    return body.rsplit(" ", 1)[-1] if body else "(nothing)"


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vproxy",
        description="vproxy for Python: a TCP load balancer and proxy toolkit.",
        epilog=(
            "commands:\n"
            "  [load FILE]... [resp-controller ADDR PASSWORD] [http-controller ADDR]\n"
            "         [accessLog PATH|stdout] [noLoadLast] [noSave] [noStdIOController]\n"
            "         [allowSystemCommandInNonStdIOController] [workers N]   run vproxy\n"
            "  hello [once]                      demo: backends + tcp-lb + client\n"
            "  simple bind PORT backend H:P[,H:P...] [address IP] [protocol P]\n"
            "         [in-buffer-size N] [out-buffer-size N] [timeout MS]\n"
            "         [accesslog PATH|stdout] [workers N] [gen]\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("words", nargs="*", help="start-up words (see commands)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run vproxy with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = _build_parser()
    ns = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    words: list[str] = ns.words
    try:
        if words and words[0] == "hello":
            if words[1:] not in ([], ["once"]):
                raise UsageError("hello takes only the word once")
            return run_hello(once=bool(words[1:]))
        if words and words[0] == "simple":
            return run_simple(parse_simple(words[1:]))
        return run_main(parse_main(words))
    except UsageError as exc:
        print(f"vproxy: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"vproxy: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
