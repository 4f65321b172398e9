"""The RESP controller over real loopback sockets, with the real executor and
application, on uvloop and on asyncio (tier 10c). redis-cli itself is driven in
tests/conformance/test_redis_cli.py.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from helpers import assert_stop_leaves_no_client_connected, wait_until
from vproxy.control.application import Application
from vproxy.control.executor import Executor, Origin
from vproxy.control.reply import OK, Array, String
from vproxy.control.resp import MAX_UNAUTHENTICATED_REQUESTS, OUTPUT_HIGH_WATER, RespController

PASSWORD = "pw-for-tests"


@pytest.fixture
def app(loop_kind: str) -> Iterator[Application]:
    a = Application.create_default()
    try:
        yield a
    finally:
        a.close()


@pytest.fixture
def executor(app: Application) -> Executor:
    return Executor(app)


@pytest.fixture
def controller(app: Application, executor: Executor) -> Iterator[RespController]:
    c = RespController("r0", ("127.0.0.1", 0), PASSWORD, executor, app.control_el)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def cmd(*args: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Client:
    """A blocking RESP client that reads raw reply bytes."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(self.buf)
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self) -> object:
        """One reply: str for status, bytes for bulk, int, None, list, or ('ERR', text)."""
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return ("ERR", rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                if not self._fill():
                    raise EOFError(self.buf)
            data, self.buf = self.buf[:n], self.buf[n + 2 :]
            return data
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise AssertionError(f"bad reply line {line!r}")

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def call(self, *args: str) -> object:
        self.send(cmd(*args))
        return self.reply()


@pytest.fixture
def client(controller: RespController) -> Iterator[Client]:
    c = Client(controller.address)
    try:
        yield c
    finally:
        c.close()


def test_port_zero_gives_the_bound_address(controller: RespController) -> None:
    host, port = controller.address
    assert host == "127.0.0.1"
    assert port > 0
    assert controller.name == "r0"


def test_commands_change_the_real_application(
    client: Client, app: Application, executor: Executor
) -> None:
    assert client.call("list", "upstream") == ("ERR", "NOAUTH Authentication required.")
    assert "u1" not in app.upstreams
    assert client.call("AUTH", PASSWORD) == "OK"
    assert client.call("add", "upstream", "u1") == "OK"
    assert client.call("add", "upstream", "u2") == "OK"
    assert client.call("list", "upstream") == [b"u1", b"u2"]
    assert set(app.upstreams) == {"u1", "u2"}
    # the same state, seen from the console's side
    assert executor.execute_line("list upstream", Origin.STDIO) == Array(
        (String("u1"), String("u2"))
    )
    err = client.call("add", "upstream", "u1")
    assert isinstance(err, tuple)
    assert err[0] == "ERR"
    assert "u1" in err[1]


def test_system_commands_that_touch_files_are_refused(client: Client) -> None:
    assert client.call("AUTH", "default", PASSWORD) == "OK"
    reply = client.call("System:", "save", "/tmp/vproxy-resp-test-should-not-exist")
    assert isinstance(reply, tuple)
    assert "refused over resp" in reply[1]
    man = client.call("man")
    assert isinstance(man, bytes)
    assert b"vproxy command language" in man


def test_wrong_password(client: Client) -> None:
    assert client.call("AUTH", "guess") == ("ERR", "WRONGPASS invalid password")
    assert client.call("list", "upstream") == ("ERR", "NOAUTH Authentication required.")


def test_huge_multibulk_before_auth_closes(client: Client) -> None:
    client.send(b"*2147483647\r\n")
    assert client.reply() == ("ERR", "ERR Protocol error: invalid multibulk length")
    assert client.closed_by_peer()


def test_flood_before_auth_closes(client: Client) -> None:
    client.send(b"list upstream\r\n" * (MAX_UNAUTHENTICATED_REQUESTS + 6))  # one read
    replies = [client.reply() for _ in range(MAX_UNAUTHENTICATED_REQUESTS + 1)]
    assert replies[-2] == ("ERR", "NOAUTH Authentication required.")
    assert replies[-1] == ("ERR", "ERR too many commands before AUTH")
    assert client.closed_by_peer()


def test_big_flood_before_auth_closes(controller: RespController) -> None:
    # Closed with requests still unread, the socket is reset: replies may be lost.
    flood = Client(controller.address)
    try:
        try:
            flood.send(b"list upstream\r\n" * 50_000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        replies = 0
        with contextlib.suppress(EOFError, ConnectionResetError):
            while True:
                flood.reply()
                replies += 1
        assert replies <= MAX_UNAUTHENTICATED_REQUESTS + 1
    finally:
        flood.close()
    wait_until(lambda: controller.session_count == 0)


def test_pipelined_auth_and_commands(client: Client) -> None:
    client.send(cmd("AUTH", PASSWORD) + b"add upstream u1\r\n" + cmd("list", "upstream"))
    assert [client.reply() for _ in range(3)] == ["OK", "OK", [b"u1"]]


def test_quit(client: Client) -> None:
    assert client.call("QUIT") == "OK"
    assert client.closed_by_peer()


def test_client_that_does_not_read_is_paused_and_then_served(
    client: Client, controller: RespController
) -> None:
    client.send(cmd("AUTH", PASSWORD))
    assert client.reply() == "OK"
    n = 6000
    client.send(b"man\r\n" * n)  # 24 KB of requests, 18 MB of replies
    # The server stops producing replies near the high-water mark, once the socket
    # buffers are full, and stops reading.
    sessions = controller.el.call(lambda: list(controller._sessions))
    assert len(sessions) == 1
    session = sessions[0]
    wait_until(lambda: controller.el.call(lambda: session._reading_paused))
    time.sleep(0.2)
    buffered = controller.el.call(lambda: session._transport.get_write_buffer_size())  # type: ignore[union-attr]
    assert buffered <= OUTPUT_HIGH_WATER + 64 * 1024  # plus at most one man page
    replies = [client.reply() for _ in range(n)]
    assert all(isinstance(r, bytes) and b"vproxy command language" in r for r in replies)
    assert client.call("PING") == "PONG"


def test_bind_failure_raises_oserror(
    controller: RespController, executor: Executor, app: Application
) -> None:
    other = RespController("r1", controller.address, None, executor, app.control_el)
    with pytest.raises(OSError, match="in use"):
        other.start()
    other.stop()  # harmless after a failed start


def test_stop_closes_clients_and_frees_the_port(app: Application, executor: Executor) -> None:
    c = RespController("r0", ("127.0.0.1", 0), None, executor, app.control_el)
    c.start()
    address = c.address
    cl = Client(address)
    try:
        assert cl.call("PING") == "PONG"
        wait_until(lambda: c.session_count == 1)
        c.stop()
        assert cl.closed_by_peer()
        assert c.session_count == 0
        c.stop()  # twice is fine
    finally:
        cl.close()
    again = RespController("r0", address, None, executor, app.control_el)
    again.start()  # the same port binds again
    try:
        assert again.address == address
        with pytest.raises(RuntimeError):
            again.start()
    finally:
        again.stop()


def test_no_password_means_no_auth(app: Application, executor: Executor) -> None:
    c = RespController("open", ("127.0.0.1", 0), "", executor, app.control_el)
    c.start()
    cl = Client(c.address)
    try:
        assert cl.call("add", "upstream", "x") == "OK"
        assert cl.call("list", "upstream") == [b"x"]
    finally:
        cl.close()
        c.stop()


def test_added_by_a_system_command_and_stopped_by_app_close(loop_kind: str) -> None:
    app = Application.create_default()
    try:
        ex = Executor(app)
        add = "System: add resp-controller {} address 127.0.0.1:0 password s3"
        assert ex.execute_line(add.format("rc1"), Origin.STDIO) == OK
        ctrl = app.resp_controllers["rc1"]
        assert isinstance(ctrl, RespController)
        cl = Client(ctrl.address)
        try:
            assert cl.call("AUTH", "s3") == "OK"
            assert cl.call("list", "upstream") == []
            detail = ex.execute_line("System: list-detail resp-controller", Origin.STDIO)
            assert f"127.0.0.1:{ctrl.address[1]}" in str(detail)
            assert ex.execute_line("System: remove resp-controller rc1", Origin.STDIO) == OK
            assert "rc1" not in app.resp_controllers
            assert cl.closed_by_peer()
        finally:
            cl.close()
        assert ex.execute_line(add.format("rc2"), Origin.STDIO) == OK
        cl2 = Client(app.resp_controllers["rc2"].address)
        try:
            assert cl2.call("PING") == "PONG"
            app.close()
            assert cl2.closed_by_peer()
        finally:
            cl2.close()
    finally:
        app.close()


def test_start_and_stop_from_the_loop_thread(app: Application, executor: Executor) -> None:
    # What a command run on the control loop itself would do.
    c = RespController("in-loop", ("127.0.0.1", 0), None, executor, app.control_el)
    c.el.call(c.start)
    cl = Client(c.address)
    try:
        assert cl.call("PING") == "PONG"
        c.el.call(c.stop)
        assert cl.closed_by_peer()
    finally:
        cl.close()
    with pytest.raises(ConnectionRefusedError):
        Client(c.address)


def test_stop_while_clients_connect_leaves_none_open(app: Application, executor: Executor) -> None:
    def start() -> tuple[RespController, tuple[str, int]]:
        c = RespController("race", ("127.0.0.1", 0), None, executor, app.control_el)
        c.start()
        return c, c.address

    assert_stop_leaves_no_client_connected(start, lambda c: c.stop())
