"""RespSession on a mock transport: scripted bytes in, bytes out (STYLE rule 10b).

No sockets and no loop: the protocol's callbacks are called directly, and the mock
transport plays the part of asyncio's (write buffer, flow control, close).
"""

from __future__ import annotations

import logging
import tracemalloc
from collections.abc import Sequence

import pytest

from vproxy.control.executor import Origin
from vproxy.control.reply import Array, ErrorReply, Reply, Status, String
from vproxy.control.resp import (
    MAX_UNAUTHENTICATED_REQUESTS,
    OUTPUT_HIGH_WATER,
    OUTPUT_LOW_WATER,
    RespSession,
)

PASSWORD = "s3cret-pw"


class FakeExecutor:
    """Answers a few fixed commands and records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Origin]] = []
        self.big = 40 * 1024
        self.on_execute: object = None

    def execute_words(self, words: Sequence[str], origin: Origin) -> Reply:
        self.calls.append((list(words), origin))
        if callable(self.on_execute):
            self.on_execute()
        if list(words) == ["list", "upstream"]:
            return Array((String("u1"), String("u2")))
        if words[0] == "big":
            return String("x" * self.big)
        if words[0] == "boom":
            raise RuntimeError("bug")
        if words[0] == "echo":
            return String(" ".join(words[1:]))
        if words[0] == "add":
            return Status("OK")
        return ErrorReply(f'unknown action "{words[0]}"')


class MockTransport:
    """Enough of asyncio.Transport for a protocol, with a write buffer that only
    empties when the test says the client read it (``client_reads``)."""

    def __init__(self, protocol: RespSession) -> None:
        self.protocol = protocol
        self.sent = bytearray()  # everything written, read or not
        self.buffered = 0  # written but not yet read by the client
        self.high = 64 * 1024
        self.low = 16 * 1024
        self.closed = False
        self.aborted = False
        self.reading = True
        self.writing_paused = False

    # -- asyncio.Transport ------------------------------------------------------------
    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.sent += data
        self.buffered += len(data)
        if self.buffered > self.high and not self.writing_paused:
            self.writing_paused = True
            self.protocol.pause_writing()

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        assert high is not None
        assert low is not None
        self.high, self.low = high, low

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    # -- test side --------------------------------------------------------------------
    def client_reads(self, n: int | None = None) -> None:
        self.buffered -= self.buffered if n is None else min(n, self.buffered)
        if self.writing_paused and self.buffered <= self.low:
            self.writing_paused = False
            self.protocol.resume_writing()

    def take(self) -> bytes:
        out = bytes(self.sent)
        self.sent.clear()
        self.buffered = 0
        return out


def session(
    password: str | None = PASSWORD, **kw: int
) -> tuple[RespSession, MockTransport, FakeExecutor]:
    ex = FakeExecutor()
    s = RespSession(ex, password, **kw)  # type: ignore[arg-type]
    t = MockTransport(s)
    s.connection_made(t)  # type: ignore[arg-type]
    return s, t, ex


def cmd(*args: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


AUTH = cmd("AUTH", PASSWORD)
NOAUTH = b"-NOAUTH Authentication required.\r\n"
WRONGPASS = b"-WRONGPASS invalid password\r\n"


# -- without a password ------------------------------------------------------------------


def test_no_password_runs_commands_as_words_from_resp() -> None:
    s, t, ex = session(None)
    assert s.authenticated
    s.data_received(cmd("list", "upstream"))
    assert t.take() == b"*2\r\n$2\r\nu1\r\n$2\r\nu2\r\n"
    assert ex.calls == [(["list", "upstream"], Origin.RESP)]
    assert t.protocol is s
    assert t.get_extra_info("peername")
    assert t.high == OUTPUT_HIGH_WATER
    assert t.low == OUTPUT_LOW_WATER


def test_inline_commands_are_split_like_redis() -> None:
    s, t, ex = session(None)
    s.data_received(b'echo "a b" c\r\nlist upstream\n')
    assert t.take() == b"$5\r\na b c\r\n*2\r\n$2\r\nu1\r\n$2\r\nu2\r\n"
    assert [c[0] for c in ex.calls] == [["echo", "a b", "c"], ["list", "upstream"]]


def test_auth_without_a_configured_password_is_an_error() -> None:
    s, t, _ = session(None)
    s.data_received(cmd("AUTH", "x"))
    assert t.take().startswith(b"-ERR AUTH <password> called without any password")
    assert not t.closed


def test_command_errors_are_error_replies_and_keep_the_connection() -> None:
    s, t, _ = session(None)
    s.data_received(cmd("bogus", "x") + cmd("add", "upstream", "u1"))
    assert t.take() == b'-ERR unknown action "bogus"\r\n+OK\r\n'
    assert not t.closed


# -- authentication --------------------------------------------------------------------


def test_commands_before_auth_get_noauth_and_reach_no_executor() -> None:
    s, t, ex = session()
    assert not s.authenticated
    s.data_received(cmd("list", "upstream"))
    s.data_received(b"man\r\n")
    assert t.take() == NOAUTH * 2
    assert ex.calls == []


def test_auth_flow_wrong_then_right() -> None:
    s, t, ex = session()
    s.data_received(cmd("AUTH", "nope"))
    assert t.take() == WRONGPASS
    assert not s.authenticated
    s.data_received(AUTH)
    assert t.take() == b"+OK\r\n"
    assert s.authenticated
    s.data_received(cmd("list", "upstream"))
    assert t.take() == b"*2\r\n$2\r\nu1\r\n$2\r\nu2\r\n"
    assert ex.calls == [(["list", "upstream"], Origin.RESP)]


@pytest.mark.parametrize(
    ("request_bytes", "reply"),
    [
        (cmd("auth", "default", PASSWORD), b"+OK\r\n"),  # redis 6 form, any case
        (cmd("AUTH", "admin", PASSWORD), WRONGPASS),  # only the default user
        (cmd("AUTH", "default", "nope"), WRONGPASS),
        (cmd("AUTH", PASSWORD[:-1]), WRONGPASS),  # a prefix is not the password
        (cmd("AUTH", PASSWORD + "x"), WRONGPASS),
        (cmd("AUTH"), b"-ERR wrong number of arguments for 'auth' command\r\n"),
        (cmd("AUTH", "a", "b", "c"), b"-ERR wrong number of arguments for 'auth' command\r\n"),
        (f"AUTH {PASSWORD}\r\n".encode(), b"+OK\r\n"),  # inline
    ],
)
def test_auth_forms(request_bytes: bytes, reply: bytes) -> None:
    s, t, _ = session()
    s.data_received(request_bytes)
    assert t.take() == reply
    assert s.authenticated == (reply == b"+OK\r\n")


def test_non_ascii_password() -> None:
    s, t, _ = session("pässwörd")
    s.data_received(cmd("AUTH", "pässwörd".encode()))
    assert t.take() == b"+OK\r\n"


def test_ping_and_quit_work_before_auth() -> None:
    s, t, ex = session()
    s.data_received(b"PING\r\n" + cmd("ping", "hi"))
    assert t.take() == b"+PONG\r\n$2\r\nhi\r\n"
    s.data_received(cmd("QUIT") + cmd("list", "upstream"))
    assert t.take() == b"+OK\r\n"  # nothing after QUIT is run
    assert t.closed
    assert ex.calls == []


def test_the_password_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="vproxy")
    s, t, _ = session()
    s.data_received(cmd("AUTH", "guess-" + PASSWORD))
    s.data_received(cmd("AUTH", "default", PASSWORD))
    s.data_received(cmd("boom"))
    assert t.take() == WRONGPASS + b"+OK\r\n" + b"-ERR internal error, see the vproxy log\r\n"
    assert caplog.records  # something was logged...
    assert PASSWORD not in caplog.text  # ...but not the password


# -- limits before auth ----------------------------------------------------------------


def test_huge_multibulk_before_auth_is_refused_without_allocating() -> None:
    s, t, _ = session()
    tracemalloc.start()
    try:
        s.data_received(b"*2147483647\r\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert t.take() == b"-ERR Protocol error: invalid multibulk length\r\n"
    assert t.closed
    assert peak < 256 * 1024


def test_huge_multibulk_refused_before_its_crlf() -> None:
    s, t, _ = session()
    s.data_received(b"*21474")  # more than 8 arguments: refused at once
    assert t.take() == b"-ERR Protocol error: invalid multibulk length\r\n"
    assert t.closed


def test_big_bulk_before_auth_is_refused_but_fine_after() -> None:
    s, t, _ = session()
    s.data_received(b"*2\r\n$2000\r\n")
    assert t.take() == b"-ERR Protocol error: invalid bulk length\r\n"
    assert t.closed

    s, t, ex = session()
    s.data_received(AUTH + cmd("echo", "y" * 2000))
    assert t.take() == b"+OK\r\n$2000\r\n" + b"y" * 2000 + b"\r\n"
    assert len(ex.calls) == 1


def test_long_inline_before_auth_is_refused() -> None:
    s, t, _ = session()
    s.data_received(b"a" * 1500)
    assert t.take() == b"-ERR Protocol error: too big inline request\r\n"
    assert t.closed


def test_flood_of_commands_before_auth_is_closed() -> None:
    s, t, _ = session()
    s.data_received(b"list upstream\r\n" * (MAX_UNAUTHENTICATED_REQUESTS + 10))
    out = t.take()
    assert out == NOAUTH * MAX_UNAUTHENTICATED_REQUESTS + b"-ERR too many commands before AUTH\r\n"
    assert t.closed
    s.data_received(AUTH)  # a late AUTH changes nothing
    assert t.take() == b""


def test_auth_then_limits_are_wider() -> None:
    s, t, _ = session()
    words = ["echo", *(["w"] * 20)]
    s.data_received(AUTH + cmd(*words))
    assert t.take() == b"+OK\r\n$39\r\n" + b" ".join([b"w"] * 20) + b"\r\n"


# -- framing ---------------------------------------------------------------------------

SCRIPT = (
    b"PING\r\n"
    + cmd("list", "upstream")
    + AUTH
    + cmd("list", "upstream")
    + b"echo 'x y'\r\n"
    + cmd("COMMAND", "DOCS")
    + cmd("bogus")
)
EXPECTED = (
    b"+PONG\r\n"
    + NOAUTH
    + b"+OK\r\n"
    + b"*2\r\n$2\r\nu1\r\n$2\r\nu2\r\n"
    + b"$3\r\nx y\r\n"
    + b"-ERR unknown command 'COMMAND': vproxy speaks its own command language, try 'man'\r\n"
    + b'-ERR unknown action "bogus"\r\n'
)


def test_pipelined_in_one_read() -> None:
    s, t, ex = session()
    s.data_received(SCRIPT)
    assert t.take() == EXPECTED
    assert not t.closed
    assert t.reading
    assert len(ex.calls) == 3


def test_byte_at_a_time() -> None:
    s, t, _ = session()
    for i in range(len(SCRIPT)):
        s.data_received(SCRIPT[i : i + 1])
    assert t.take() == EXPECTED
    assert not t.closed


def test_complete_requests_before_a_protocol_error_run_first() -> None:
    s, t, ex = session(None)
    s.data_received(cmd("list", "upstream") + b"*1\r\nxx\r\n" + cmd("list", "upstream"))
    assert (
        t.take() == b"*2\r\n$2\r\nu1\r\n$2\r\nu2\r\n-ERR Protocol error: expected '$', got 'x'\r\n"
    )
    assert t.closed
    assert len(ex.calls) == 1


def test_invalid_utf8_argument_is_an_error_reply() -> None:
    s, t, ex = session(None)
    s.data_received(cmd("list", b"\xff\xfe"))
    assert t.take() == b"-ERR argument 2 is not valid UTF-8\r\n"
    assert ex.calls == []
    assert not t.closed


# -- redis-cli housekeeping -------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "reply"),
    [
        (cmd("SELECT", "0"), b"+OK\r\n"),
        (cmd("select", "3"), b"-ERR DB index is out of range\r\n"),
        (cmd("SELECT"), b"-ERR wrong number of arguments for 'select' command\r\n"),
        (cmd("CLIENT", "SETNAME", "cli"), b"+OK\r\n"),
        (cmd("CLIENT", "SETINFO", "lib-name", "x"), b"+OK\r\n"),
        (cmd("client", "getname"), b"$-1\r\n"),
        (cmd("CLIENT", "ID"), b":1\r\n"),
        (cmd("PING", "a", "b"), b"-ERR wrong number of arguments for 'ping' command\r\n"),
    ],
)
def test_housekeeping_commands(request_bytes: bytes, reply: bytes) -> None:
    s, t, ex = session(None)
    s.data_received(request_bytes)
    assert t.take() == reply
    assert ex.calls == []


@pytest.mark.parametrize(
    "request_bytes", [cmd("COMMAND", "DOCS"), cmd("COMMAND"), cmd("HELLO", "3")]
)
def test_command_docs_and_hello_get_an_error_not_an_array(request_bytes: bytes) -> None:
    s, t, ex = session(None)
    s.data_received(request_bytes)
    assert t.take().startswith(b"-ERR unknown command")
    assert ex.calls == []
    assert not t.closed


def test_client_unknown_subcommand() -> None:
    s, t, _ = session(None)
    s.data_received(cmd("CLIENT", "KILL", "x"))
    assert t.take().startswith(b"-ERR unknown subcommand 'KILL'")


def test_hello_before_auth_is_unknown_not_noauth() -> None:
    s, t, _ = session()
    s.data_received(cmd("HELLO", "3", "AUTH", "default", PASSWORD))
    assert t.take().startswith(b"-ERR unknown command 'HELLO'")


# -- output flow control ---------------------------------------------------------------


def test_client_that_does_not_read_pauses_the_session() -> None:
    s, t, ex = session(None)
    s.data_received(cmd("big") * 10)  # 10 replies of 40 KiB; high water is 64 KiB
    assert len(ex.calls) == 2  # the second reply crossed the high-water mark
    assert not t.reading
    s.data_received(b"")  # nothing runs while paused
    assert len(ex.calls) == 2
    t.client_reads(50 * 1024)  # not yet down to the low-water mark
    assert len(ex.calls) == 2
    t.client_reads()
    assert len(ex.calls) == 4
    while t.writing_paused:
        t.client_reads()
    assert len(ex.calls) == 10
    assert t.reading
    assert len(t.take()) == 10 * (40 * 1024 + len(b"$40960\r\n\r\n"))


def test_eof_with_pending_requests_closes_after_them() -> None:
    s, t, ex = session(None)
    s.data_received(cmd("big") * 4)
    assert len(ex.calls) == 2
    assert s.eof_received() is True  # keep the transport: requests wait
    while t.writing_paused:
        t.client_reads()
    assert len(ex.calls) == 4
    assert t.closed


def test_eof_when_idle_lets_the_transport_close() -> None:
    s, _, _ = session(None)
    assert not s.eof_received()


def test_reply_over_the_hard_limit_drops_the_client() -> None:
    s, t, ex = session(None, hard_output_limit=100 * 1024)
    ex.big = 150 * 1024
    s.data_received(cmd("big"))
    assert t.aborted
    assert t.take() == b""


def test_close_while_a_command_runs_still_sends_its_reply() -> None:
    s, t, ex = session(None)
    ex.on_execute = s.close  # e.g. "remove resp-controller" of this very controller
    s.data_received(cmd("add", "upstream", "u1") + cmd("add", "upstream", "u2"))
    assert t.take() == b"+OK\r\n"
    assert t.closed
    assert len(ex.calls) == 1


def test_connection_lost_leaves_the_sessions_set() -> None:
    sessions: set[RespSession] = set()
    s = RespSession(FakeExecutor(), None, sessions)
    t = MockTransport(s)
    s.connection_made(t)  # type: ignore[arg-type]
    assert sessions == {s}
    s.connection_lost(None)
    assert sessions == set()
    s.data_received(cmd("list", "upstream"))  # late bytes are ignored
    assert t.take() == b""
    s.close()  # and closing again is harmless
