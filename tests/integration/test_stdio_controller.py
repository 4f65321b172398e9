"""The console controller reading real pipes and a pty, with the real executor."""

from __future__ import annotations

import io
import os
import pty
import threading
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import pytest

from helpers import wait_until
from vproxy.control.application import Application
from vproxy.control.executor import Executor, Origin
from vproxy.control.reply import ErrorReply, Reply, Status
from vproxy.control.stdio import MAX_LINE, StdIOController


class Output(io.StringIO):
    """A stdout that many threads may read while the console writes."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        with self._lock:
            return super().write(s)

    def text(self) -> str:
        with self._lock:
            return self.getvalue()


class Pipe:
    """A pipe whose read end is a text stream, like a piped stdin."""

    def __init__(self) -> None:
        r, w = os.pipe()
        self.reader: TextIO = open(r, encoding="utf-8", closefd=True)  # noqa: SIM115
        self.w = w

    def write(self, data: str | bytes) -> None:
        os.write(self.w, data.encode() if isinstance(data, str) else data)

    def close_writer(self) -> None:
        if self.w >= 0:
            os.close(self.w)
            self.w = -1

    def close(self) -> None:
        self.close_writer()
        self.reader.close()


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    try:
        yield p
    finally:
        p.close()


class Console:
    """A started controller plus what it printed and how often input ended."""

    def __init__(self, executor: object, stdin: TextIO, **kw: int) -> None:
        self.out = Output()
        self.eofs = 0
        self.ctrl = StdIOController(
            executor,  # type: ignore[arg-type]
            stdin,
            self.out,
            on_eof=self._eof,
            **kw,
        )
        self.ctrl.start()

    def _eof(self) -> None:
        self.eofs += 1

    def finish(self) -> str:
        self.ctrl.join(10)
        assert not self.ctrl.running
        return self.out.text()


def test_lines_are_run_and_replies_printed_like_redis_cli(app: Application, pipe: Pipe) -> None:
    console = Console(Executor(app), pipe.reader)
    pipe.write("add upstream u1\n\n   \nadd upstream u2\r\nlist upstream\nbogus\n")
    pipe.write("list-detail upstream u9\nlist upstream")  # last line without a newline
    pipe.close_writer()
    out = console.finish()
    lines = out.splitlines()
    assert lines[:4] == ["OK", "OK", '1) "u1"', '2) "u2"']
    assert lines[4].startswith('(error) ERR unknown action "bogus" at position 1')
    assert lines[5].startswith("(error) ERR ")
    assert lines[6:] == ['1) "u1"', '2) "u2"']
    assert "> " not in out  # not a terminal: no prompt
    assert console.eofs == 1
    assert set(app.upstreams) == {"u1", "u2"}


def test_console_may_run_system_commands(app: Application, pipe: Pipe, tmp_path: Path) -> None:
    target = tmp_path / "saved.conf"
    console = Console(Executor(app), pipe.reader)
    pipe.write(f"add upstream keep\nSystem: save {target}\n")
    pipe.close_writer()
    assert console.finish().splitlines() == ["OK", "OK"]
    assert "add upstream keep" in target.read_text()


def test_prompt_on_a_terminal(app: Application) -> None:
    master, slave = pty.openpty()
    stdin = open(slave, encoding="utf-8", closefd=True)  # noqa: SIM115
    try:
        console = Console(Executor(app), stdin)
        wait_until(lambda: console.out.text() == "> ")
        os.write(master, b"add upstream t1\n")
        wait_until(lambda: console.out.text() == "> OK\n> ")
        os.close(master)  # the terminal goes away: end of input
        master = -1
        console.finish()
        assert console.eofs == 1
    finally:
        if master >= 0:
            os.close(master)
        stdin.close()
    assert "t1" in app.upstreams


class FakeExecutor:
    def __init__(self) -> None:
        self.lines: list[tuple[str, Origin]] = []

    def execute_line(self, line: str, origin: Origin) -> Reply:
        self.lines.append((line, origin))
        if line == "boom":
            raise RuntimeError("bug")
        return Status("OK")

    def execute_words(self, words: Sequence[str], origin: Origin) -> Reply:
        return ErrorReply("not used")


def test_long_lines_are_refused_without_being_buffered(pipe: Pipe) -> None:
    ex = FakeExecutor()
    big = b"x" * (8 * 1024 * 1024) + b"\n"  # allocated before tracing starts
    tracemalloc.start()
    try:
        console = Console(ex, pipe.reader)

        def feed() -> None:
            view = memoryview(big)
            for i in range(0, len(view), 65536):
                pipe.write(bytes(view[i : i + 65536]))
            pipe.write(b"x" * MAX_LINE + b"\n")  # exactly at the limit: accepted
            pipe.write(b"y" * (MAX_LINE + 1) + b"\r\n")  # one more: refused
            pipe.write(b"after\n")
            pipe.close_writer()

        writer = threading.Thread(target=feed)
        writer.start()
        writer.join(30)
        out = console.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    too_long = f"(error) ERR line too long: at most {MAX_LINE} characters"
    assert out.splitlines() == [too_long, "OK", too_long, "OK"]
    assert [len(line) for line, _ in ex.lines] == [MAX_LINE, len("after")]
    assert peak < 2 * 1024 * 1024  # a few lines' worth, never the 8 MiB line


def test_small_max_line(pipe: Pipe) -> None:
    ex = FakeExecutor()
    console = Console(ex, pipe.reader, max_line=4)
    pipe.write("abcd\nabcde\nab\r\n")
    pipe.close_writer()
    out = console.finish()
    assert out.splitlines() == ["OK", "(error) ERR line too long: at most 4 characters", "OK"]
    assert ex.lines == [("abcd", Origin.STDIO), ("ab", Origin.STDIO)]
    with pytest.raises(ValueError, match="max_line"):
        StdIOController(ex, pipe.reader, io.StringIO(), max_line=0)


def test_executor_failure_is_reported_and_the_console_goes_on(pipe: Pipe) -> None:
    ex = FakeExecutor()
    console = Console(ex, pipe.reader)
    pipe.write("boom\nafter\n")
    pipe.close_writer()
    assert console.finish().splitlines() == ["(error) ERR internal error: RuntimeError", "OK"]


def test_invalid_text_is_an_error_not_the_end(pipe: Pipe) -> None:
    ex = FakeExecutor()
    console = Console(ex, pipe.reader)
    pipe.write(b"\xff\xfe\n")
    wait_until(lambda: "not valid text" in console.out.text())
    pipe.write(b"after\n")
    pipe.close_writer()
    out = console.finish()
    assert out.splitlines()[0].startswith("(error) ERR the line is not valid text")
    assert out.splitlines()[1:] == ["OK"]
    assert ex.lines == [("after", Origin.STDIO)]


def test_eof_ends_the_thread_without_spinning(pipe: Pipe) -> None:
    ex = FakeExecutor()
    console = Console(ex, pipe.reader)
    pipe.close_writer()
    console.finish()
    assert console.eofs == 1
    assert ex.lines == []


def test_stop_while_waiting_for_input(pipe: Pipe) -> None:
    ex = FakeExecutor()
    console = Console(ex, pipe.reader)
    pipe.write("first\n")
    wait_until(lambda: console.out.text() == "OK\n")
    console.ctrl.stop()
    pipe.write("second\n")  # wakes the reader, which sees the stop and does not run it
    console.finish()
    assert ex.lines == [("first", Origin.STDIO)]
    assert console.eofs == 0  # stopped, not ended
    with pytest.raises(RuntimeError):
        console.ctrl.start()


def test_output_gone_ends_the_thread(pipe: Pipe) -> None:
    class Closed(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError

    ex = FakeExecutor()
    ctrl = StdIOController(ex, pipe.reader, Closed())
    ctrl.start()
    pipe.write("one\ntwo\n")
    ctrl.join(10)
    assert not ctrl.running
    assert ex.lines == [("one", Origin.STDIO)]
