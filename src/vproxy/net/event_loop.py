"""Event loops and event-loop groups (SPEC §1 "event loop", "EventLoopWrapper/Group").

Owns: one OS thread per :class:`EventLoop`, each running an asyncio loop (uvloop when
importable), each loop's :class:`FdWatcher` for raw sockets, and named
:class:`EventLoopGroup` collections that hand loops out round-robin. Resources bound
to a loop or group (listeners, health checks, sessions) are told when the loop leaves
so that nothing dangles.

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
import select
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol, TypeVar

__all__ = [
    "Abortable",
    "CoarseTimers",
    "Deadlined",
    "EventLoop",
    "EventLoopError",
    "EventLoopGroup",
    "FdWatcher",
    "LoopResource",
    "loop_kind",
    "new_asyncio_loop",
]

_log = logging.getLogger("vproxy.net")
# (Final: compiled, a module attribute read per call is a generic look-up)
_get_ident: Final = threading.get_ident

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


#: Event bits for :class:`FdWatcher` (the epoll values, also used by the fallback).
READABLE: Final = select.EPOLLIN if hasattr(select, "EPOLLIN") else 1
WRITABLE: Final = select.EPOLLOUT if hasattr(select, "EPOLLOUT") else 4

FdHandler = Callable[[int], object]


class FdWatcher:
    """Readiness of raw sockets for one loop; use it from the loop's thread only.

    ``add(fd, events, handler)`` watches ``fd`` for ``READABLE``/``WRITABLE``;
    ``handler(events)`` runs in the loop when it is ready (an error or hang-up is
    reported as both). A socket must be removed before it is closed.

    On Linux the sockets go into one private epoll set whose descriptor is the only
    thing the asyncio loop watches: adding, changing or removing a socket is then one
    ``epoll_ctl``, where uvloop's ``add_reader`` costs a poll handle and half a dozen
    system calls per socket. Each event, though, then costs a little more (a nested
    wake-up and a dispatch in Python), so a socket that turns out to be long-lived
    is :meth:`promote`-d to the loop's own ``add_reader``/``add_writer``
    (``docs/performance.md`` has the figures). Elsewhere, or with
    ``VPROXY_FD_WATCHER=loop``, every socket uses the loop's own.
    """

    __slots__ = ("_dead", "_ep", "_handlers", "_loop", "_masks", "_promoted", "epoll", "windows")

    #: events fetched per round (more wait for the next one: the set is level-triggered)
    BATCH: Final = 64

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handlers: dict[int, FdHandler] = {}
        # fds removed since the round began: a stale event of theirs in the batch
        # being handled must not reach a new socket that got the same number.
        self._dead: set[int] = set()
        self._masks: dict[int, int] = {}  # sockets the loop itself watches
        self._promoted: set[int] = set()
        self._ep: Any = None
        use_epoll = os.environ.get("VPROXY_FD_WATCHER", "").strip().lower() != "loop"
        if use_epoll and hasattr(select, "epoll"):
            self._ep = select.epoll()
            loop.add_reader(self._ep.fileno(), self._dispatch)
        #: True when sockets are in our own epoll set (``kind == "epoll"``)
        self.epoll = self._ep is not None
        #: read windows of the relays on this loop, by size (net/connection.py): a
        #: relay sends what it read on before its next read, so they share them
        self.windows: dict[int, tuple[memoryview, dict[int, memoryview]]] = {}

    @property
    def kind(self) -> str:
        """``"epoll"`` or ``"loop"`` (the fallback)."""
        return "epoll" if self._ep is not None else "loop"

    def _dispatch(self) -> None:
        dead = self._dead
        dead.clear()
        handlers = self._handlers
        for fd, events in self._ep.poll(0, self.BATCH):
            if dead and fd in dead:
                continue
            handler = handlers.get(fd)
            if handler is None:
                continue
            try:
                handler(events)
            except Exception as exc:
                self._loop.call_exception_handler(
                    {"message": f"fd {fd} handler failed", "exception": exc}
                )

    def add(self, fd: int, events: int, handler: FdHandler) -> None:
        """Start watching ``fd``."""
        if self._ep is not None:
            self._ep.register(fd, events)
            self._handlers[fd] = handler
        else:
            self._set(fd, events, handler)

    def modify(self, fd: int, events: int, handler: FdHandler) -> None:
        """Watch ``fd`` for other ``events`` (and/or with another handler)."""
        if self._ep is not None and fd not in self._promoted:
            self._ep.modify(fd, events)
            self._handlers[fd] = handler
        else:
            self._set(fd, events, handler)

    def set_handler(self, fd: int, handler: FdHandler) -> None:
        """Same events, another handler."""
        if self._ep is not None and fd not in self._promoted:
            self._handlers[fd] = handler
        else:
            self._set(fd, self._masks.get(fd, 0), handler)

    def remove(self, fd: int) -> None:
        """Stop watching ``fd`` (call it before closing the socket)."""
        if self._ep is not None and fd not in self._promoted:
            if self._handlers.pop(fd, None) is not None:
                self._dead.add(fd)
                try:
                    self._ep.unregister(fd)
                except (OSError, ValueError):
                    pass
        else:
            self._set(fd, 0, None)
            self._promoted.discard(fd)

    def remove_closing(self, fd: int) -> None:
        """Stop watching ``fd`` that the caller closes right after, and holds no copy of.

        Closing the last descriptor of a socket takes it out of the epoll set: no
        ``epoll_ctl`` is needed, only forgetting the handler.
        """
        if self._ep is not None and fd not in self._promoted:
            if self._handlers.pop(fd, None) is not None:
                self._dead.add(fd)
        else:
            self.remove(fd)

    def promote(self, fd: int, events: int, handler: FdHandler) -> None:
        """Hand a long-lived ``fd`` (watched for ``events``) to the loop's own watch."""
        if self._ep is None or fd in self._promoted:
            return
        if self._handlers.pop(fd, None) is not None:
            self._dead.add(fd)
            self._ep.unregister(fd)
        self._promoted.add(fd)
        self._set(fd, events, handler)

    def _set(self, fd: int, events: int, handler: FdHandler | None) -> None:
        loop = self._loop
        old = self._masks.pop(fd, 0)
        if events & READABLE:
            loop.add_reader(fd, handler, READABLE)  # type: ignore[arg-type]
        elif old & READABLE:
            loop.remove_reader(fd)
        if events & WRITABLE:
            loop.add_writer(fd, handler, WRITABLE)  # type: ignore[arg-type]
        elif old & WRITABLE:
            loop.remove_writer(fd)
        if events:
            self._masks[fd] = events

    def close(self) -> None:
        """Stop watching everything (the loop is ending)."""
        handlers, self._handlers = self._handlers, {}
        if not self._loop.is_closed():
            for fd in list(self._masks):
                self._set(fd, 0, None)
            if self._ep is not None:
                self._loop.remove_reader(self._ep.fileno())
        if self._ep is not None:
            self._ep.close()
        self._promoted.clear()
        handlers.clear()


class Deadlined(Protocol):
    """Something with deadlines in a loop's :class:`CoarseTimers` (a session)."""

    def on_deadline(self, key: int) -> None:
        """The deadline(s) of bucket ``key`` passed; ignore a key no longer held."""


class CoarseTimers:
    """Per-session deadlines of one loop, rounded up to :attr:`TICK` seconds.

    Connect and idle timeouts need no precision, and almost all of them are
    cancelled: a loop timer per session (create, then cancel) cost more than the
    rest of setting up a ``Connection: close`` session's timers. Here a deadline is
    its owner's entry in the bucket of its tick, and one loop timer serves a whole
    bucket: :meth:`add` and :meth:`cancel` are a dict operation each. When a
    bucket's time comes, each owner in it hears ``on_deadline(key)`` once, at most
    one tick late, never early. Use it from the loop's thread only.

    The entries are the owners themselves (a session), not callbacks: a bound
    method made for each add and cancel, its hash and ``dict.pop`` were half of
    the cost. The last four buckets looked up are kept aside with their keys, so
    that the adds and cancels of a busy loop, which land in the buckets of the
    moment (one per timeout setting in use: a socks5 tunnel's handshake, connect,
    idle and half-closed deadlines), skip the table and the boxing of its integer
    key. An owner is in a bucket at most once: it tells its deadlines apart by the
    key :meth:`add` returned.

    A bucket emptied by cancels keeps its loop timer until it fires, but gives back
    the table it grew to (a dict keeps the size it once had: ~32 buckets a second
    kept a whole idle timeout long grew a busy process by megabytes). Deadlines
    :attr:`LONG_DELAY` or more ahead (idle timeouts, 15 minutes by default) share
    one-second buckets, so at most one bucket per second of the longest timeout
    waits, empty or not.
    """

    __slots__ = (
        "_b0",
        "_b1",
        "_b2",
        "_b3",
        "_buckets",
        "_firing",
        "_firing_key",
        "_handles",
        "_k0",
        "_k1",
        "_k2",
        "_k3",
        "_loop",
        "_slot",
        "_time",
    )

    #: bucket width in seconds
    TICK: Final = 1 / 32
    #: deadlines at least this far ahead (idle timeouts) go to buckets LONG_TICKS
    #: ticks wide: at most a second late, and one loop timer serves a second of
    #: sessions instead of a 32nd
    LONG_DELAY: Final = 10.0
    LONG_TICKS: Final = 32

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._time = loop.time
        self._buckets: dict[int, dict[Deadlined, None]] = {}
        self._handles: dict[int, asyncio.TimerHandle] = {}
        self._firing: dict[Deadlined, None] | None = None
        self._firing_key = -1
        # The last four buckets looked up, by key (-1: none); _slot: the next to reuse.
        self._k0 = self._k1 = self._k2 = self._k3 = -1
        self._b0: dict[Deadlined, None] = {}
        self._b1: dict[Deadlined, None] = {}
        self._b2: dict[Deadlined, None] = {}
        self._b3: dict[Deadlined, None] = {}
        self._slot = 0

    def add(self, delay: float, owner: Deadlined) -> int:
        """Tell ``owner`` in ``delay`` seconds (or up to a tick later; a second for
        delays of :attr:`LONG_DELAY` or more).

        Returns the key it will be told with, and to :meth:`cancel` it with.
        """
        key = int((self._time() + delay) / self.TICK) + 1
        if delay >= self.LONG_DELAY:
            key = -(-key // self.LONG_TICKS) * self.LONG_TICKS  # rounded up
        bucket = self._recent(key)
        if bucket is None:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = {}
                self._handles[key] = self._loop.call_at(key * self.TICK, self._fire, key)
            self._remember(key, bucket)
        bucket[owner] = None
        return key

    def cancel(self, key: int, owner: Deadlined) -> None:
        """Forget ``owner``'s deadline of ``key`` (no-op if it was told or cancelled)."""
        bucket = self._recent(key)
        if bucket is None:
            found = self._buckets.get(key)
            if found is None:
                firing = self._firing
                if key == self._firing_key and firing is not None and owner in firing:
                    del firing[owner]
                return
            bucket = found
            self._remember(key, bucket)
        if owner in bucket:
            del bucket[owner]
            if not bucket:
                # Kept with its loop timer (the next session's deadline is likely to
                # land in it: dropping and re-creating a loop timer per connect cost
                # more than the rest of the timers), but without the table it grew to.
                bucket.clear()

    def _fire(self, key: int) -> None:
        self._handles.pop(key, None)
        bucket = self._buckets.pop(key, None)
        self._forget(key)
        if not bucket:
            return
        # Out of the table, so that what the owners add goes to later buckets;
        # still reachable by cancel() while they are told.
        self._firing, self._firing_key = bucket, key
        try:
            while bucket:
                owner = next(iter(bucket))
                del bucket[owner]
                try:
                    owner.on_deadline(key)
                except Exception as exc:
                    self._loop.call_exception_handler(
                        {"message": "timer callback failed", "exception": exc}
                    )
        finally:
            self._firing, self._firing_key = None, -1

    def _recent(self, key: int) -> dict[Deadlined, None] | None:
        if key == self._k0:
            return self._b0
        if key == self._k1:
            return self._b1
        if key == self._k2:
            return self._b2
        if key == self._k3:
            return self._b3
        return None

    def _remember(self, key: int, bucket: dict[Deadlined, None]) -> None:
        slot = self._slot
        self._slot = (slot + 1) & 3
        if slot == 0:
            self._k0, self._b0 = key, bucket
        elif slot == 1:
            self._k1, self._b1 = key, bucket
        elif slot == 2:
            self._k2, self._b2 = key, bucket
        else:
            self._k3, self._b3 = key, bucket

    def _forget(self, key: int) -> None:
        # (a bucket that fired is out of the table: no add may land in it again)
        if key == self._k0:
            self._k0, self._b0 = -1, {}
        elif key == self._k1:
            self._k1, self._b1 = -1, {}
        elif key == self._k2:
            self._k2, self._b2 = -1, {}
        elif key == self._k3:
            self._k3, self._b3 = -1, {}

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())


class Abortable(Protocol):
    """A unit of work on a loop (a session) that can be closed at once."""

    def abort(self) -> None:
        """Close now, dropping buffered data; called in the loop thread."""


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
        "_ident",
        "_live",
        "_resources",
        "_runner",
        "_sessions",
        "_started",
        "_thread_running",
        "_timers",
        "_watcher",
        "group",
        "loop",
        "name",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.group: EventLoopGroup | None = None
        self.loop = new_asyncio_loop()
        self._runner = threading.Thread(target=self._run, name=f"vproxy-el-{name}", daemon=True)
        self._started = threading.Event()
        self._closing = False
        self._finished = False
        # Kept by the loop thread itself so that the per-connection checks (running,
        # in_loop_thread) cost an attribute read, not Thread.is_alive() and
        # threading.current_thread().
        self._thread_running = False
        self._ident = -1
        self._resources: list[LoopResource] = []
        # Sessions (or any short-lived unit of work) running here; a retired loop
        # stops when this drops to zero. Only touched from the loop's own thread.
        self._sessions = 0
        # The sessions among them that were named: aborted when the loop stops, so
        # that their sockets do not outlive it.
        self._live: set[Abortable] = set()
        self._watcher: FdWatcher | None = None
        self._timers: CoarseTimers | None = None

    def __repr__(self) -> str:
        return f"EventLoop({self.name!r})"

    # -- life cycle ---------------------------------------------------------------
    def start(self) -> None:
        """Start the loop's thread and wait until the loop runs."""
        if self._runner.is_alive() or self._closing:
            raise EventLoopError(f"event-loop {self.name} was already started")
        self._runner.start()
        self._started.wait()

    def _run(self) -> None:
        self._ident = threading.get_ident()
        self._thread_running = True
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            self._closing = True
            self._finished = True  # late stop() calls must not cut the clean-up short
            self._abort_live()
            if self._watcher is not None:
                self._watcher.close()
            try:
                _cancel_all(self.loop)
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            except RuntimeError:
                _log.debug("event-loop %s: clean-up interrupted", self.name)
            finally:
                self.loop.close()
                self._thread_running = False
                self._ident = -1  # thread ids are reused once a thread ends

    @property
    def running(self) -> bool:
        """True while the loop's thread is alive and the loop accepts work."""
        return self._thread_running and not self._closing

    @property
    def alive(self) -> bool:
        """True while the loop's thread runs (also while retiring)."""
        return self._thread_running and not self._finished

    @property
    def watcher(self) -> FdWatcher:
        """This loop's :class:`FdWatcher` (made on first use, in the loop's thread)."""
        w = self._watcher
        if w is None:
            w = self._watcher = FdWatcher(self.loop)
        return w

    @property
    def timers(self) -> CoarseTimers:
        """This loop's :class:`CoarseTimers` (made on first use, in the loop's thread)."""
        t = self._timers
        if t is None:
            t = self._timers = CoarseTimers(self.loop)
        return t

    @property
    def in_loop_thread(self) -> bool:
        """True when called from this loop's own thread."""
        return _get_ident() == self._ident

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop now: pending tasks are cancelled, transports closed."""
        self._closing = True
        if self._runner.is_alive() and not self._finished:
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:
                pass  # closed meanwhile
            if not self.in_loop_thread:
                self._runner.join(timeout)

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
        if self._runner.is_alive():
            self.loop.call_soon_threadsafe(self._stop_when_idle, force_close_sessions)

    def _stop_when_idle(self, force: bool) -> None:
        if force:
            self._abort_live()
        if (force or self._sessions <= 0) and not self._finished:
            self.loop.stop()
        # else: session_done() stops the loop when the last session ends.

    def join(self, timeout: float | None = None) -> None:
        """Wait for the loop thread to end (after :meth:`stop` or :meth:`retire`)."""
        if not self.in_loop_thread:
            self._runner.join(timeout)

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

    def session_started(self, session: Abortable | None = None) -> None:
        """Count a session running on this loop (call from the loop thread).

        A ``session`` given here is aborted if the loop stops before it ends (pass
        the same object to :meth:`session_done`).
        """
        self._sessions += 1
        if session is not None:
            self._live.add(session)

    def session_done(self, session: Abortable | None = None) -> None:
        """Uncount a session; a retired loop stops after its last one."""
        self._sessions -= 1
        if session is not None:
            self._live.discard(session)
        if self._closing and self._sessions <= 0 and not self._finished:
            self.loop.stop()

    def _abort_live(self) -> None:
        for session in list(self._live):
            try:
                session.abort()
            except Exception:
                _log.exception("event-loop %s: aborting %r failed", self.name, session)
        self._live.clear()

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
