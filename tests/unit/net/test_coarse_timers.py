"""CoarseTimers: per-loop bucketed deadlines (net/event_loop.py)."""

from __future__ import annotations

import asyncio
import sys
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


def test_emptied_buckets_give_back_their_table_and_long_deadlines_share_buckets() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        timers = CoarseTimers(loop)
        callbacks: list[Callable[[], None]] = [lambda: None for _ in range(1000)]
        keys = [timers.add(900.0, f) for f in callbacks]  # an idle timeout far ahead
        assert len(set(keys)) == 1  # added within a second: one bucket
        grown = sys.getsizeof(timers._buckets[keys[0]])
        for key, f in zip(keys, callbacks, strict=True):
            timers.cancel(key, f)
        assert len(timers) == 0
        assert sys.getsizeof(timers._buckets[keys[0]]) < grown / 10
        timers.cancel(keys[0], callbacks[0])  # again: a no-op
        # A second of sessions, each adding and cancelling its idle deadline: the
        # loop timers they need stay at about one per second, not one per session.
        start = len(timers._handles)
        t_end = loop.time() + 1.0
        while loop.time() < t_end:
            f = callbacks[0]
            timers.cancel(timers.add(900.0, f), f)
            await asyncio.sleep(0.005)
        assert len(timers._handles) - start <= 2
        # Short deadlines keep their 1/32 s precision.
        k1 = timers.add(0.5, callbacks[1])
        k2 = timers.add(0.5 + 2 * CoarseTimers.TICK, callbacks[2])
        assert k1 != k2

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
