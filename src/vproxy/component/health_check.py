"""Health checking (SPEC §1 "ConnectClient", "HealthCheckClient").

Owns: the pure up/down counting (:class:`HealthState`, edge-triggered), the check
settings (:class:`HealthCheckConfig`), a one-shot TCP connect probe
(:func:`connect_check`) and the periodic driver (:class:`HealthCheckClient`) that runs
on an event loop and reports changes.

Must not: pick servers or touch sessions; it only says UP or DOWN.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ConnectResult",
    "HealthCheckClient",
    "HealthCheckConfig",
    "HealthState",
    "connect_check",
]


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """How a server group checks its servers; times in milliseconds.

    Attributes:
        timeout: a connect that takes longer than this fails.
        period: a check starts every ``period`` ms.
        up: consecutive successes that turn a DOWN server UP.
        down: consecutive failures that turn an UP server DOWN.
    """

    timeout: int = 1000
    period: int = 5000
    up: int = 2
    down: int = 3

    def __post_init__(self) -> None:
        for field, value, low in (
            ("timeout", self.timeout, 1),
            ("period", self.period, 1),
            ("up", self.up, 1),
            ("down", self.down, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"health check {field} must be an integer >= {low}, got {value!r}")


class HealthState:
    """Counts consecutive results and reports only the edges.

    A new state starts DOWN (SPEC: servers start DOWN until checked healthy).
    :meth:`feed` returns ``True`` when the state just turned UP, ``False`` when it
    just turned DOWN, and ``None`` when nothing changed.
    """

    __slots__ = ("_run", "config", "healthy")

    def __init__(self, config: HealthCheckConfig, healthy: bool = False) -> None:
        self.config = config
        self.healthy = healthy
        self._run = 0  # consecutive results that disagree with the current state

    def reconfigure(self, config: HealthCheckConfig) -> None:
        """Use new settings; the count of disagreeing results starts again."""
        self.config = config
        self._run = 0

    def feed(self, ok: bool) -> bool | None:
        """Record one check result; return the new state on an edge, else None."""
        if ok == self.healthy:
            self._run = 0
            return None
        self._run += 1
        needed = self.config.up if ok else self.config.down
        if self._run >= needed:
            self.healthy = ok
            self._run = 0
            return ok
        return None


class ConnectResult(enum.Enum):
    """What one connect attempt came to."""

    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"


async def connect_check(host: str, port: int, timeout_ms: int) -> ConnectResult:
    """Connect once to ``host:port`` and close at once (SPEC "ConnectClient")."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            await loop.sock_connect(sock, (host, port))
    except TimeoutError:
        return ConnectResult.TIMEOUT
    except OSError:
        return ConnectResult.FAILED
    finally:
        sock.close()
    return ConnectResult.OK


class HealthCheckClient:
    """Checks one endpoint periodically on a loop and reports UP/DOWN edges.

    ``on_change(healthy)`` is called in the loop's thread, once per change. Checks
    start at a fixed rate (every ``period`` ms), so a dead endpoint is reported DOWN
    within ``down * period + timeout`` ms of its first failed check.
    """

    __slots__ = ("_on_change", "_task", "host", "last_latency_ms", "loop", "port", "state")

    def __init__(
        self,
        host: str,
        port: int,
        state: HealthState,
        on_change: Callable[[bool], None],
    ) -> None:
        self.host = host
        self.port = port
        self.state = state
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.last_latency_ms: float | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start checking; must run in ``loop``'s thread."""
        self.loop = loop
        self._task = loop.create_task(self._run())

    def stop(self) -> None:
        """Stop checking; must run in the loop's thread."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_start = loop.time()
        while True:
            cfg = self.state.config
            t0 = time.monotonic()
            result = await connect_check(self.host, self.port, cfg.timeout)
            ok = result is ConnectResult.OK
            self.last_latency_ms = (time.monotonic() - t0) * 1000 if ok else None
            edge = self.state.feed(ok)
            if edge is not None:
                self._on_change(edge)
            next_start += cfg.period / 1000
            delay = next_start - loop.time()
            if delay < 0:  # the check took longer than a period: start again now
                next_start = loop.time()
                delay = 0
            await asyncio.sleep(delay)
