"""CoarseTimers: per-loop bucketed deadlines (net/event_loop.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from vproxy.net.event_loop import CoarseTimers


def test_deadlines_fire_once_not_early_and_cancels_hold() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        timers = CoarseTimers(loop)
        fired: list[tuple[str, float]] = []
        t0 = loop.time()

        def cb(name: str) -> Callable[[], None]:
            def f() -> None:
                fired.append((name, loop.time() - t0))

            return f

        a, b, c = cb("a"), cb("b"), cb("c")
        timers.add(0.05, a)
        kb = timers.add(0.05, b)
        timers.add(0.2, c)
        timers.cancel(kb, b)
        assert len(timers) == 2
        await asyncio.sleep(0.35)
        assert [n for n, _ in fired] == ["a", "c"]
        assert fired[0][1] >= 0.05
        assert fired[1][1] >= 0.2
        assert fired[1][1] < 0.2 + CoarseTimers.TICK + 0.1
        assert len(timers) == 0

    asyncio.run(run())


def test_an_emptied_bucket_is_dropped_with_its_loop_timer() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        timers = CoarseTimers(loop)
        callbacks: list[Callable[[], None]] = [lambda: None for _ in range(1000)]
        keys = [timers.add(900.0, f) for f in callbacks]  # an idle timeout far ahead
        for key, f in zip(keys, callbacks, strict=True):
            timers.cancel(key, f)
        assert len(timers) == 0
        assert not timers._buckets
        assert not timers._handles
        timers.cancel(keys[0], callbacks[0])  # again: a no-op

    asyncio.run(run())


def test_callbacks_may_add_and_cancel_while_their_bucket_fires() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        timers = CoarseTimers(loop)
        order: list[str] = []
        keys: dict[str, int] = {}

        def second() -> None:
            order.append("second")

        def first() -> None:
            order.append("first")
            timers.cancel(keys["second"], second)  # same bucket, not run yet
            timers.add(0.0, third)  # goes to a later bucket

        def third() -> None:
            order.append("third")

        keys["first"] = timers.add(0.01, first)
        keys["second"] = timers.add(0.01, second)
        await asyncio.sleep(0.2)
        assert order == ["first", "third"]

    asyncio.run(run())
