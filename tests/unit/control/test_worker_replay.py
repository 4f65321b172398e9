"""The order a restarted worker gets its configuration and health flags in.

A worker that starts listening (SO_REUSEPORT) before it knows which servers are UP
closes the connections the kernel hands it meanwhile: every server is DOWN there
until told. The flags go right before the first listener line.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vproxy.control.application import Application
from vproxy.control.executor import Executor, Origin
from vproxy.control.reply import ErrorReply
from vproxy.control.workers import replay_plan

UP = {"health": ["g", "s", True]}


@pytest.fixture
def executor() -> Iterator[Executor]:
    app = Application.create_default()
    ex = Executor(app)
    try:
        yield ex
    finally:
        app.close()


def test_flags_come_after_the_servers_and_before_the_first_listener(executor: Executor) -> None:
    for line in (
        "add server-group g timeout 500 period 60000 up 1 down 2",
        "add server s to server-group g address 127.0.0.1:9 weight 10",
        "add upstream u",
        "add server-group g to upstream u weight 10",
        "add security-group sg default allow",
        "add socks5-server s5 address 127.0.0.1:0 upstream u",
        "add tcp-lb l address 127.0.0.1:0 upstream u security-group sg",
    ):
        assert not isinstance(executor.execute_line(line, Origin.STDIO), ErrorReply), line
    lines = executor.config_lines()
    plan = replay_plan(lines, [UP])
    assert [step for step in plan if isinstance(step, str)] == lines
    at = plan.index(UP)
    assert all(not str(step).startswith(("add tcp-lb", "add socks5-server")) for step in plan[:at])
    assert str(plan[at + 1]).startswith(("add tcp-lb ", "add socks5-server "))
    assert any(str(step).startswith("add server s ") for step in plan[:at])


def test_without_a_listener_the_flags_come_last() -> None:
    lines = ["add upstream u", "add server-group g timeout 500 period 60000 up 1 down 2"]
    assert replay_plan(lines, [UP]) == [*lines, UP]
    assert replay_plan(lines, []) == lines
    assert replay_plan([], [UP]) == [UP]


_lines = st.lists(
    st.sampled_from(
        [
            "add upstream u",
            "add server s to server-group g address 127.0.0.1:9 weight 10",
            "add tcp-lb l address 127.0.0.1:0 upstream u",
            "add socks5-server s5 address 127.0.0.1:0 upstream u",
            "add security-group sg default allow",
        ]
    ),
    max_size=12,
)


@given(lines=_lines, n=st.integers(0, 3))
def test_plan_keeps_every_line_in_order_and_puts_the_flags_before_any_listener(
    lines: list[str], n: int
) -> None:
    health: list[dict[str, Any]] = [{"health": ["g", f"s{i}", True]} for i in range(n)]
    plan = replay_plan(lines, health)
    assert [step for step in plan if isinstance(step, str)] == lines
    assert [step for step in plan if not isinstance(step, str)] == health
    if health:
        first = plan.index(health[0])
        assert plan[first : first + n] == health  # together
        assert not any(
            isinstance(step, str) and step.startswith(("add tcp-lb ", "add socks5-server "))
            for step in plan[:first]
        )
        assert first + n == len(plan) or str(plan[first + n]).startswith(
            ("add tcp-lb ", "add socks5-server ")
        )
