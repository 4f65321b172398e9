"""Pure tests of the health up/down counting (SPEC §1 "HealthCheckClient").

No sockets and no clock: results are fed to :class:`HealthState` by hand and the
edges it reports are checked against a declarative model of the rule.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vproxy.component.health_check import HealthCheckConfig, HealthState


def expected_edges(results: list[bool], up: int, down: int, start: bool) -> list[tuple[int, bool]]:
    """Where the edges must be, stated declaratively (not by replaying a counter).

    From the last edge (or the start) in state ``s``, the next edge is at the first
    index ``i`` whose last ``n`` results (all after that edge) are ``not s``, where
    ``n`` is ``up`` when ``s`` is DOWN and ``down`` when it is UP.
    """
    edges: list[tuple[int, bool]] = []
    state, since = start, 0  # results before index `since` cannot count any more
    for i in range(len(results)):
        n = up if not state else down
        first = i - n + 1
        if first >= since and all(results[j] is (not state) for j in range(first, i + 1)):
            state = not state
            edges.append((i, state))
            since = i + 1
    return edges


configs = st.builds(
    HealthCheckConfig,
    up=st.integers(1, 6),
    down=st.integers(1, 6),
)


@settings(max_examples=2000, deadline=None)
@given(cfg=configs, results=st.lists(st.booleans(), max_size=120), start=st.booleans())
def test_edges_match_the_declarative_rule(
    cfg: HealthCheckConfig, results: list[bool], start: bool
) -> None:
    state = HealthState(cfg, healthy=start)
    got: list[tuple[int, bool]] = []
    for i, ok in enumerate(results):
        before = state.healthy
        edge = state.feed(ok)
        if edge is None:
            assert state.healthy == before  # no silent change
        else:
            assert edge == state.healthy != before  # an edge is a real change
            got.append((i, edge))
    assert got == expected_edges(results, cfg.up, cfg.down, start)


@settings(max_examples=2000, deadline=None)
@given(cfg=configs, results=st.lists(st.booleans(), max_size=120))
def test_edges_alternate_and_need_full_runs(cfg: HealthCheckConfig, results: list[bool]) -> None:
    state = HealthState(cfg)
    assert state.healthy is False  # servers start DOWN
    edges = [(i, e) for i, ok in enumerate(results) if (e := state.feed(ok)) is not None]
    # edges only, alternating, and the first one is UP
    assert [e for _, e in edges] == [k % 2 == 0 for k in range(len(edges))]
    prev = -1
    for i, e in edges:
        n = cfg.up if e else cfg.down
        run = results[i - n + 1 : i + 1]
        assert i - n + 1 > prev  # the run lies wholly after the previous edge
        assert run == [e] * n  # exactly n agreeing results ...
        # ... and no more: one more agreeing result before the run would have made
        # the edge come a step earlier
        assert i - n == prev or results[i - n] is not e
        prev = i
    assert state.healthy == (bool(edges) and edges[-1][1])


@pytest.mark.parametrize(("up", "down"), [(1, 1), (2, 3), (5, 1)])
def test_up_after_exactly_up_successes_down_after_exactly_down_failures(up: int, down: int) -> None:
    state = HealthState(HealthCheckConfig(up=up, down=down))
    for _ in range(up - 1):
        assert state.feed(True) is None
    assert state.feed(True) is True
    assert state.healthy is True
    for _ in range(5):
        assert state.feed(True) is None  # level, not edge: no repeat
    for _ in range(down - 1):
        assert state.feed(False) is None
    assert state.feed(False) is False
    assert state.feed(False) is None  # and it stays DOWN


def test_an_interrupted_run_starts_again() -> None:
    state = HealthState(HealthCheckConfig(up=3, down=3))
    assert [state.feed(ok) for ok in (True, True, False, True, True)] == [None] * 5
    assert state.feed(True) is True


def test_reconfigure_restarts_the_count() -> None:
    state = HealthState(HealthCheckConfig(up=3))
    state.feed(True)
    state.feed(True)
    state.reconfigure(HealthCheckConfig(up=2))
    assert state.feed(True) is None  # the two earlier successes no longer count
    assert state.feed(True) is True


def test_config_defaults() -> None:
    cfg = HealthCheckConfig()
    assert (cfg.timeout, cfg.period, cfg.up, cfg.down) == (1000, 5000, 2, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.up = 5  # type: ignore[misc]


@pytest.mark.parametrize("field", ["timeout", "period", "up", "down"])
@pytest.mark.parametrize("bad", [0, -1, True, False, 1.5, "2", None])
def test_config_rejects_bad_values(field: str, bad: object) -> None:
    with pytest.raises(ValueError, match=rf"health check {field} must be an integer >= 1"):
        HealthCheckConfig(**{field: bad})  # type: ignore[arg-type]


@given(
    timeout=st.integers(1, 10**6),
    period=st.integers(1, 10**6),
    up=st.integers(1, 100),
    down=st.integers(1, 100),
)
def test_config_accepts_every_positive_integer(
    timeout: int, period: int, up: int, down: int
) -> None:
    cfg = HealthCheckConfig(timeout=timeout, period=period, up=up, down=down)
    assert (cfg.timeout, cfg.period, cfg.up, cfg.down) == (timeout, period, up, down)
