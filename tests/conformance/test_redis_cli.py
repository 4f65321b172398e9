"""The real redis-cli (7.x) against the RESP controller (SPEC §3.2, tier 10d).

Covers the three ways operators use it: one command on the command line, commands
piped on stdin, and the interactive prompt (driven through a pty), which asks for
``COMMAND DOCS`` on connect and must not abort on our answer.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pexpect
import pytest

from vproxy.control.application import Application
from vproxy.control.executor import Executor
from vproxy.control.resp import RespController

REDIS_CLI = shutil.which("redis-cli")
PASSWORD = "cli-pw"

pytestmark = pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")


@pytest.fixture
def app(loop_kind: str) -> Iterator[Application]:
    a = Application.create_default()
    try:
        yield a
    finally:
        a.close()


@pytest.fixture
def port(app: Application) -> Iterator[int]:
    c = RespController("cli", ("127.0.0.1", 0), PASSWORD, Executor(app), app.control_el)
    c.start()
    try:
        yield c.address[1]
    finally:
        c.stop()


def base(port: int, password: str | None = PASSWORD) -> list[str]:
    assert REDIS_CLI is not None
    args = [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port)]
    if password is not None:
        args += ["-a", password, "--no-auth-warning"]
    return args


def run(
    port: int, *words: str, password: str | None = PASSWORD, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*base(port, password), *words],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_single_commands(port: int, app: Application) -> None:
    man = run(port, "man")
    assert man.returncode == 0
    assert "vproxy command language" in man.stdout
    assert run(port, "add", "upstream", "u1").stdout == "OK\n"
    assert run(port, "add", "upstream", "u2").stdout == "OK\n"
    assert run(port, "list", "upstream").stdout == "u1\nu2\n"
    assert set(app.upstreams) == {"u1", "u2"}
    err = run(port, "list", "bogus")
    assert err.stdout.startswith('ERR unknown resource type "bogus"')
    assert run(port, "PING").stdout == "PONG\n"


def test_quoted_words_survive(port: int, app: Application) -> None:
    # redis-cli sends each shell word as one bulk string; the executor sees it whole.
    out = run(port, "man", "server group")
    assert out.stdout.startswith('ERR unexpected word "server group" at position 2')


def test_wrong_or_missing_password_is_refused(port: int, app: Application) -> None:
    wrong = run(port, "add", "upstream", "nope", password="not-it")
    assert "AUTH failed: WRONGPASS invalid password" in wrong.stderr
    assert wrong.stdout.startswith("NOAUTH Authentication required.")
    missing = run(port, "add", "upstream", "nope", password=None)
    assert missing.stdout.startswith("NOAUTH Authentication required.")
    assert "nope" not in app.upstreams


def test_select_and_hello_do_not_break_the_connection(port: int) -> None:
    assert run(port, "-n", "0", "PING").stdout == "PONG\n"
    other = run(port, "-n", "3", "PING")  # one database only: redis-cli warns, goes on
    assert "SELECT 3 failed: ERR DB index is out of range" in other.stderr
    assert other.stdout == "PONG\n"
    resp3 = run(port, "-3", "PING")  # no RESP3: redis-cli stays on RESP2
    assert "HELLO 3 failed: ERR unknown command 'HELLO'" in resp3.stderr
    assert resp3.stdout == "PONG\n"


def test_commands_piped_on_stdin(port: int, app: Application) -> None:
    out = run(port, stdin="ping\nadd upstream u1\nlist upstream\nbogus\nman\n")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[:3] == ["PONG", "OK", "u1"]
    assert lines[3].startswith('ERR unknown action "bogus"')
    assert "vproxy command language" in out.stdout
    assert set(app.upstreams) == {"u1"}


def test_system_commands_refused_over_resp(port: int) -> None:
    out = run(port, "System:", "shutdown")
    assert "refused over resp" in out.stdout


def spawn(port: int, password: str | None = PASSWORD) -> pexpect.spawn:
    args = base(port, password)
    return pexpect.spawn(args[0], args[1:], encoding="utf-8", timeout=10, dimensions=(40, 200))


def test_interactive_session(port: int, app: Application) -> None:
    cli = spawn(port)
    try:
        cli.expect(r"127\.0\.0\.1:\d+> ")  # connected; COMMAND DOCS did not abort it
        # linenoise reads the terminal raw: Enter is CR
        cli.send("add upstream u9\r")
        cli.expect(r"\r\nOK\r\n")
        cli.send("list upstream\r")
        cli.expect(r'1\) "u9"')
        cli.send("list bogus\r")
        cli.expect(r'\(error\) ERR unknown resource type "bogus"')
        cli.send("man upstream\r")
        cli.expect("upstream")
        cli.send("ping\r")
        cli.expect("PONG")
        assert cli.isalive()
        cli.send("quit\r")
        cli.expect(pexpect.EOF)
    finally:
        cli.close(force=True)
    assert cli.exitstatus == 0
    assert "u9" in app.upstreams


def test_interactive_auth_after_connect(port: int, app: Application) -> None:
    cli = spawn(port, password=None)
    try:
        cli.expect(r"127\.0\.0\.1:\d+> ")
        cli.send("list upstream\r")
        cli.expect(r"\(error\) NOAUTH Authentication required\.")
        cli.send("auth wrong\r")
        cli.expect(r"\(error\) WRONGPASS invalid password")
        cli.send(f"auth {PASSWORD}\r")
        cli.expect(r"\r\nOK\r\n")
        cli.send("add upstream late\r")
        cli.expect(r"\r\nOK\r\n")
        cli.send("quit\r")
        cli.expect(pexpect.EOF)
    finally:
        cli.close(force=True)
    assert "late" in app.upstreams
