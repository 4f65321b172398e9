"""Event loops and event-loop groups (SPEC §1 "event loop", "EventLoopWrapper/Group").

Owns: one OS thread per :class:`EventLoop`, each running an asyncio loop (uvloop when
importable), and named :class:`EventLoopGroup` collections that hand loops out
round-robin. Resources bound to a loop or group (listeners, health checks, sessions)
are told when the loop leaves so that nothing dangles.

Must not: know about commands, protocols or load-balancing policy.

Removing a loop from a group retires it: it gets no new work at once, long-lived
resources attached to it (server sockets, health checks) move to another loop of the
group, and sessions already running on it finish undisturbed; the thread ends when the
last of them is gone. ``force_close_sessions=True`` closes them instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

__all__ = [
    "EventLoop",
    "EventLoopError",
    "EventLoopGroup",
    "LoopResource",
    "loop_kind",
    "new_asyncio_loop",
]

_log = logging.getLogger("vproxy.net")

T = TypeVar("T")


class EventLoopError(Exception):
    """A loop or group was used in a way its state does not allow."""


def loop_kind() -> str:
    """Return which loop implementation new loops use: ``"uvloop"`` or ``"asyncio"``.

    uvloop is the default when importable; ``VPROXY_EVENT_LOOP=asyncio`` forces the
    standard loop (the test suite runs both).
    """
    wanted = os.environ.get("VPROXY_EVENT_LOOP", "").strip().lower()
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise EventLoopError("VPROXY_EVENT_LOOP=uvloop but uvloop is not installed") from None
        return "asyncio"
    return "uvloop"


def new_asyncio_loop() -> asyncio.AbstractEventLoop:
    """Create a fresh loop of the kind :func:`loop_kind` names."""
    if loop_kind() == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.SelectorEventLoop()


class LoopResource(Protocol):
    """Something bound to a loop that must hear when the loop goes away."""

    def on_event_loop_removed(self, loop: EventLoop) -> None:
        """Move to another loop, or close; called in the control thread."""


class EventLoop:
    """One named asyncio loop running in its own OS thread.

    All methods may be called from any thread; work meant for the loop is scheduled
    onto it thread-safely.
    """

    __slots__ = (
        "_closing",
        "_finished",
        "_resources",
        "_sessions",
        "_started",
        "_thread",
        "group",
        "loop",
        "name",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.group: EventLoopGroup | None = None
        self.loop = new_asyncio_loop()
        self._thread = threading.Thread(target=self._run, name=f"vproxy-el-{name}", daemon=True)
        self._started = threading.Event()
        self._closing = False
        self._finished = False
        self._resources: list[LoopResource] = []
        # Sessions (or any short-lived unit of work) running here; a retired loop
        # stops when this drops to zero. Only touched from the loop's own thread.
        self._sessions = 0

    def __repr__(self) -> str:
        return f"EventLoop({self.name!r})"

    # -- life cycle ---------------------------------------------------------------
    def start(self) -> None:
        """Start the loop's thread and wait until the loop runs."""
        if self._thread.is_alive() or self._closing:
            raise EventLoopError(f"event-loop {self.name} was already started")
        self._thread.start()
        self._started.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            self._closing = True
            self._finished = True  # late stop() calls must not cut the clean-up short
            try:
                _cancel_all(self.loop)
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            except RuntimeError:
                _log.debug("event-loop %s: clean-up interrupted", self.name)
            finally:
                self.loop.close()

    @property
    def running(self) -> bool:
        """True while the loop's thread is alive and the loop accepts work."""
        return self._thread.is_alive() and not self._closing

    @property
    def alive(self) -> bool:
        """True while the loop's thread runs (also while retiring)."""
        return self._thread.is_alive() and not self._finished

    @property
    def in_loop_thread(self) -> bool:
        """True when called from this loop's own thread."""
        return threading.current_thread() is self._thread

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop now: pending tasks are cancelled, transports closed."""
        self._closing = True
        if self._thread.is_alive() and not self._finished:
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:
                pass  # closed meanwhile
            if not self.in_loop_thread:
                self._thread.join(timeout)

    def retire(self, force_close_sessions: bool = False) -> None:
        """Take no more work; stop once the running sessions are done.

        Long-lived resources are told first (they move to another loop).
        """
        self._closing = True
        for res in list(self._resources):
            try:
                res.on_event_loop_removed(self)
            except Exception:
                _log.exception("resource %r failed to leave event-loop %s", res, self.name)
        self._resources.clear()
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop_when_idle, force_close_sessions)

    def _stop_when_idle(self, force: bool) -> None:
        if (force or self._sessions <= 0) and not self._finished:
            self.loop.stop()
        # else: session_done() stops the loop when the last session ends.

    def join(self, timeout: float | None = None) -> None:
        """Wait for the loop thread to end (after :meth:`stop` or :meth:`retire`)."""
        if not self.in_loop_thread:
            self._thread.join(timeout)

    # -- bound resources ------------------------------------------------------------
    def attach(self, resource: LoopResource) -> None:
        """Bind a long-lived resource; it is told when the loop is removed."""
        self._resources.append(resource)

    def detach(self, resource: LoopResource) -> None:
        """Unbind a resource (it closed by itself)."""
        try:
            self._resources.remove(resource)
        except ValueError:
            pass

    def session_started(self) -> None:
        """Count a session running on this loop (call from the loop thread)."""
        self._sessions += 1

    def session_done(self) -> None:
        """Uncount a session; a retired loop stops after its last one."""
        self._sessions -= 1
        if self._closing and self._sessions <= 0 and not self._finished:
            self.loop.stop()

    @property
    def session_count(self) -> int:
        """Sessions running on this loop now."""
        return self._sessions

    # -- scheduling -----------------------------------------------------------------
    def call_soon(self, callback: Callable[..., object], *args: object) -> None:
        """Run ``callback(*args)`` on the loop (from any thread)."""
        if self.in_loop_thread:
            self.loop.call_soon(callback, *args)
        else:
            self.loop.call_soon_threadsafe(callback, *args)

    def run_coroutine(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule a coroutine on the loop; returns a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run ``fn()`` on the loop and return its result (blocking the caller)."""
        if self.in_loop_thread:
            return fn()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def _runner() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(_runner)
        return fut.result(timeout)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


class EventLoopGroup:
    """A named set of event loops handed out round-robin by :meth:`next`.

    Loops may be added and removed while traffic flows. Resources bound to the group
    (e.g. a tcp-lb's workers) are told when the group is closed.
    """

    def __init__(self, name: str, loops: int = 0) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loops: list[EventLoop] = []
        self._cursor = 0
        self._resources: list[Any] = []
        self._closed = False
        for i in range(loops):
            self.add(f"{name}-{i}")

    def __repr__(self) -> str:
        return f"EventLoopGroup({self.name!r}, loops={[el.name for el in self._loops]})"

    @property
    def loops(self) -> tuple[EventLoop, ...]:
        """A snapshot of the group's loops."""
        return tuple(self._loops)

    def get(self, name: str) -> EventLoop:
        """The loop called ``name``; :class:`KeyError` if there is none."""
        for el in self._loops:
            if el.name == name:
                return el
        raise KeyError(name)

    def add(self, name: str) -> EventLoop:
        """Create, start and add a loop called ``name``."""
        with self._lock:
            if self._closed:
                raise EventLoopError(f"event-loop-group {self.name} is closed")
            if any(el.name == name for el in self._loops):
                raise EventLoopError(f"event-loop {name} already exists in {self.name}")
            el = EventLoop(name)
            el.group = self
            el.start()
            self._loops.append(el)
            return el

    def remove(self, name: str, force_close_sessions: bool = False) -> None:
        """Remove a loop: it gets no new work; its resources move to another loop."""
        with self._lock:
            el = self.get(name)
            self._loops.remove(el)
        el.retire(force_close_sessions)

    def next(self) -> EventLoop:
        """The next running loop, round-robin; :class:`EventLoopError` if none."""
        loops = self._loops
        n = len(loops)
        for _ in range(n):
            i = self._cursor % n
            self._cursor = i + 1
            el = loops[i]
            if el.running:
                return el
        raise EventLoopError(f"event-loop-group {self.name} has no running event-loop")

    def close(self) -> None:
        """Stop every loop of the group."""
        with self._lock:
            self._closed = True
            loops, self._loops = self._loops, []
        for el in loops:
            el.stop()
