"""Fixtures shared by every tier: loop kinds, test backends, event-loop groups."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator

import pytest

from helpers import LoopThread
from vproxy.control.application import Application
from vproxy.net.event_loop import EventLoopGroup

LOOP_KINDS = ["uvloop", "asyncio"]


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once on uvloop and once on the standard asyncio loop."""
    kind: str = request.param
    monkeypatch.setenv("VPROXY_EVENT_LOOP", kind)
    return kind


@pytest.fixture
def backend_loop() -> Iterator[LoopThread]:
    """An asyncio loop thread for test backends (not vproxy code)."""
    lt = LoopThread()
    yield lt
    lt.close()
    # A transport of this loop left open would be reported by whichever later test the
    # garbage collector happens to run in: collect now, so it is reported here.
    gc.collect()


@pytest.fixture
def elg_factory() -> Iterator[Callable[[str, int], EventLoopGroup]]:
    """Create event-loop groups that are all closed at teardown."""
    made: list[EventLoopGroup] = []

    def make(name: str, loops: int = 1) -> EventLoopGroup:
        g = EventLoopGroup(name, loops=loops)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


@pytest.fixture
def app() -> Iterator[Application]:
    """A default application (its loop groups), closed at teardown."""
    a = Application.create_default()
    try:
        yield a
    finally:
        a.close()
