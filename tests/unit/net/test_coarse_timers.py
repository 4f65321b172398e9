"""CoarseTimers: per-loop bucketed deadlines (net/event_loop.py)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from vproxy.net.event_loop import CoarseTimers


class Owner:
    """A deadline owner that records when it is told, and runs ``then``."""

    def __init__(
        self, name: str, fired: list[tuple[str, int]], then: Callable[[], None] | None = None
    ) -> None:
        self.name = name
        self.fired = fired
        self.then = then

    def on_deadline(self, key: int) -> None:
        self.fired.append((self.name, key))
        if self.then is not None:
            self.then()


def test_deadlines_fire_once_not_early_and_cancels_hold() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        timers = CoarseTimers(loop)
        fired: list[tuple[str, int]] = []
        at: dict[str, float] = {}
        t0 = loop.time()

        def owner(name: str) -> Owner:
            return Owner(name, fired, lambda: at.setdefault(name, loop.time() - t0))

        a, b, c = owner("a"), owner("b"), owner("c")
        ka = timers.add(0.05, a)
        kb = timers.add(0.05, b)
        kc = timers.add(0.2, c)
        timers.cancel(kb, b)
        assert len(timers) == 2
        await asyncio.sleep(0.35)
        assert fired == [("a", ka), ("c", kc)]  # each told once, with its key
        assert at["a"] >= 0.05
        assert at["c"] >= 0.2
        assert at["c"] < 0.2 + CoarseTimers.TICK + 0.1
        assert len(timers) == 0

    asyncio.run(run())


def test_an_owner_holds_deadlines_in_several_buckets() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        timers = CoarseTimers(loop)
        fired: list[tuple[str, int]] = []
        s = Owner("s", fired)
        # Start right after a tick boundary (of now + 0.02): the adds below, within
        # microseconds, then land in the buckets they mean to, not in the next ones.
        tick = CoarseTimers.TICK
        await asyncio.sleep(tick - (loop.time() + 0.02) % tick + 0.002)
        k1 = timers.add(0.02, s)
        k2 = timers.add(0.02 + 3 * CoarseTimers.TICK, s)
        k3 = timers.add(0.02 + 6 * CoarseTimers.TICK, s)
        assert len({k1, k2, k3}) == 3
        assert timers.add(0.02, s) == k1  # the same bucket again: still one entry
        assert len(timers) == 3
        timers.cancel(k2, s)  # not the bucket used last: found in the table
        timers.cancel(k2, s)  # again: a no-op
        await asyncio.sleep(0.02 + 6 * CoarseTimers.TICK + 0.15)
        assert fired == [("s", k1), ("s", k3)]
        # A bucket that fired is not the one added to next, even with its key.
        k4 = timers.add(0.0, s)
        assert k4 > k3
        timers.cancel(k4, s)
        assert len(timers) == 0

    asyncio.run(run())


def test_more_buckets_in_use_than_are_kept_aside() -> None:
    # Six deadlines of six different ticks: the four buckets kept aside are the
    # last four; cancels of the others find theirs in the table (and replace one
    # kept aside), and none is mixed up.
    async def run() -> None:
        loop = asyncio.get_running_loop()
        timers = CoarseTimers(loop)
        fired: list[tuple[str, int]] = []
        owners = [Owner(str(i), fired) for i in range(6)]
        keys = [timers.add(0.02 + i * 2 * CoarseTimers.TICK, o) for i, o in enumerate(owners)]
        assert len(set(keys)) == 6
        for i in (0, 3, 5, 2):  # looked up, kept aside, kept aside, pushed out by 0
            timers.cancel(keys[i], owners[i])
        assert len(timers) == 2
        await asyncio.sleep(0.02 + 12 * CoarseTimers.TICK + 0.15)
        assert fired == [("1", keys[1]), ("4", keys[4])]
        assert len(timers) == 0

    asyncio.run(run())


def test_emptied_buckets_give_back_their_table_and_long_deadlines_share_buckets() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        timers = CoarseTimers(loop)
        fired: list[tuple[str, int]] = []
        owners = [Owner(str(i), fired) for i in range(1000)]
        keys = [timers.add(900.0, o) for o in owners]  # an idle timeout far ahead
        assert len(set(keys)) == 1  # added within a second: one bucket
        grown = sys.getsizeof(timers._buckets[keys[0]])
        for key, o in zip(keys, owners, strict=True):
            timers.cancel(key, o)
        assert len(timers) == 0
        assert sys.getsizeof(timers._buckets[keys[0]]) < grown / 10
        timers.cancel(keys[0], owners[0])  # again: a no-op
        # A second of sessions, each adding and cancelling its idle deadline: the
        # loop timers they need stay at about one per second, not one per session.
        start = len(timers._handles)
        t_end = loop.time() + 1.0
        while loop.time() < t_end:
            o = owners[0]
            timers.cancel(timers.add(900.0, o), o)
            await asyncio.sleep(0.005)
        assert len(timers._handles) - start <= 2
        # Short deadlines keep their 1/32 s precision.
        k1 = timers.add(0.5, owners[1])
        k2 = timers.add(0.5 + 2 * CoarseTimers.TICK, owners[2])
        assert k1 != k2
        assert fired == []

    asyncio.run(run())


def test_owners_may_add_and_cancel_while_their_bucket_fires() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        timers = CoarseTimers(loop)
        order: list[tuple[str, int]] = []
        keys: dict[str, int] = {}
        third = Owner("third", order)
        second = Owner("second", order)

        def first_then() -> None:
            timers.cancel(keys["second"], second)  # same bucket, not told yet
            keys["third"] = timers.add(0.0, third)  # goes to a later bucket

        first = Owner("first", order, first_then)
        keys["first"] = timers.add(0.01, first)
        keys["second"] = timers.add(0.01, second)
        await asyncio.sleep(0.2)
        assert order == [("first", keys["first"]), ("third", keys["third"])]
        assert keys["third"] > keys["first"]

    asyncio.run(run())


def test_a_failing_owner_does_not_stop_the_others() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        timers = CoarseTimers(loop)
        fired: list[tuple[str, int]] = []

        def boom() -> None:
            raise RuntimeError("boom")

        bad, good = Owner("bad", fired, boom), Owner("good", fired)
        key = timers.add(0.01, bad)
        timers.add(0.01, good)
        await asyncio.sleep(0.15)
        assert fired == [("bad", key), ("good", key)]
        assert len(errors) == 1
        assert isinstance(errors[0]["exception"], RuntimeError)

    asyncio.run(run())
