"""Server groups (SPEC §1 "ServerGroup").

Owns: the named set of servers with their weight and health flag, the balancing
methods (``wrr`` smooth weighted round robin, ``wlc`` weighted least connections,
``source`` consistent hashing of the client address) as pure code, and the health
checks that flip the flags (driven on an event-loop group).

Must not: open client sessions or relay bytes; callers ask :meth:`ServerGroup.next`
for a server and report the sessions they open with :meth:`Server.session_opened`.

Thread model: ``next`` is called from worker-loop threads, changes come from the
control thread and health edges from a health-check loop. Reads use immutable
snapshots; the few mutations take ``ServerGroup._lock``.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from vproxy.component.health_check import HealthCheckClient, HealthCheckConfig, HealthState

if TYPE_CHECKING:
    from vproxy.net.event_loop import EventLoop, EventLoopGroup

__all__ = [
    "EdgeObserver",
    "HealthListener",
    "Method",
    "Server",
    "ServerGroup",
    "ServerGroupError",
    "SmoothWrr",
    "pick_source",
    "pick_wlc",
    "set_edge_observer",
    "set_local_health_checks",
]

_log = logging.getLogger("vproxy.component")

MAX_WEIGHT: Final = 10_000


class ServerGroupError(ValueError):
    """A change to a server group was refused (duplicate name, bad weight...)."""


class Method(enum.Enum):
    """How a server group picks the next server."""

    WRR = "wrr"
    WLC = "wlc"
    SOURCE = "source"


class Server:
    """One backend endpoint of a server group.

    ``sessions`` holds the live sessions using the server (set operations are atomic
    under the GIL, so worker threads may add and discard without a lock); closed
    sessions fold their byte counts into ``closed_bytes_in/out``. ``state_since`` and
    ``drained_from`` are the control plane's notes (the health book's): when the
    server last changed state (or was added), the weight it had before a drain.
    """

    __slots__ = (
        "_hash_key",
        "_health_client",
        "_stats_lock",
        "closed_bytes_in",
        "closed_bytes_out",
        "connect_failures",
        "current_weight",
        "drained_from",
        "group",
        "health",
        "host",
        "name",
        "port",
        "sessions",
        "state_since",
        "weight",
    )

    def __init__(
        self, name: str, host: str, port: int, weight: int, group: ServerGroup | None
    ) -> None:
        _check_weight(weight)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ServerGroupError(f"port must be an integer 1..65535, got {port!r}")
        try:
            self.host = str(ipaddress.ip_address(host))
        except ValueError:
            raise ServerGroupError(f"server address must be an IP address, got {host!r}") from None
        self.name = name
        self.port = port
        self.weight = weight
        self.group = group
        self.current_weight = 0  # smooth WRR state
        self.health = HealthState(group.health_config if group else HealthCheckConfig())
        self.sessions: set[Any] = set()
        self.closed_bytes_in = 0
        self.closed_bytes_out = 0
        self.connect_failures = 0
        self._stats_lock = threading.Lock()
        self._health_client: HealthCheckClient | None = None
        self._hash_key = f"{name}\x00{self.host}:{port}".encode()
        self.state_since: float | None = None  # epoch seconds (the health book's)
        self.drained_from: int | None = None  # weight before a drain (the health book's)

    def __repr__(self) -> str:
        state = "UP" if self.healthy else "DOWN"
        return f"Server({self.name!r}, {self.address_text}, w={self.weight}, {state})"

    @property
    def healthy(self) -> bool:
        """True while the last health edge was UP."""
        return self.health.healthy

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` for connecting."""
        return (self.host, self.port)

    @property
    def address_text(self) -> str:
        """``ip:port``, with brackets for IPv6."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def active(self) -> int:
        """Live sessions on this server now."""
        return len(self.sessions)

    def session_opened(self, session: object) -> None:
        """Count a session that just connected to this server."""
        self.sessions.add(session)

    def session_closed(self, session: object, bytes_in: int, bytes_out: int) -> None:
        """Uncount a session and keep its byte counts."""
        self.sessions.discard(session)
        with self._stats_lock:
            self.closed_bytes_in += bytes_in
            self.closed_bytes_out += bytes_out

    def connect_failed(self) -> None:
        """Count a failed connect (the passive failure seen by the proxy)."""
        with self._stats_lock:
            self.connect_failures += 1


def _method(method: Method | str) -> Method:
    try:
        return Method(method)
    except ValueError:
        names = ", ".join(m.value for m in Method)
        raise ServerGroupError(f"method must be one of {names}, got {method!r}") from None


def _check_weight(weight: int) -> None:
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= MAX_WEIGHT:
        raise ServerGroupError(f"weight must be an integer 0..{MAX_WEIGHT}, got {weight!r}")


# -- the balancing methods, pure ------------------------------------------------------
class SmoothWrr:
    """Smooth weighted round robin (the nginx algorithm).

    Over any ``sum(weights)`` consecutive picks each item is returned exactly
    ``weight`` times, and picks of one item are spread out rather than bunched.
    Items with weight 0 are never returned. Not thread-safe: callers lock.
    """

    __slots__ = ("_current", "_items", "_total", "_weights")

    def __init__(self, items: Sequence[Any], weights: Sequence[int]) -> None:
        pairs = [(i, w) for i, w in zip(items, weights, strict=True) if w > 0]
        self._items = [i for i, _ in pairs]
        self._weights = [w for _, w in pairs]
        self._current = [0] * len(pairs)
        self._total = sum(self._weights)

    def next(self) -> Any | None:
        """The next item, or None when every weight is 0."""
        if not self._items:
            return None
        cur = self._current
        best = 0
        for i, w in enumerate(self._weights):
            cur[i] += w
            if cur[i] > cur[best]:
                best = i
        cur[best] -= self._total
        return self._items[best]


def pick_wlc(servers: Sequence[Server], start: int = 0) -> Server | None:
    """Weighted least connections: the server with the fewest sessions per weight.

    Ties go to the first server at or after ``start`` (callers rotate it so equal
    servers share the load). Servers with weight 0 are never returned.
    """
    best: Server | None = None
    best_active = 0
    best_weight = 1
    n = len(servers)
    for k in range(n):
        s = servers[(start + k) % n]
        if s.weight <= 0:
            continue
        active = len(s.sessions)
        # active/weight < best_active/best_weight, without division
        if best is None or active * best_weight < best_active * s.weight:
            best, best_active, best_weight = s, active, s.weight
    return best


def _unit_hash(key: bytes) -> float:
    """Map bytes to a float in (0, 1), uniformly."""
    return _unit(hashlib.blake2b(key, digest_size=8).digest())


def _unit(digest: bytes) -> float:
    """An 8-byte digest as a float in (0, 1)."""
    # 52 bits so that h + 0.5 is exact: with all 64 bits the top hashes rounded to
    # 1.0 and log(1.0) == 0 made pick_source divide by zero.
    h = int.from_bytes(digest, "big") >> 12
    return (h + 0.5) / 4503599627370496.0  # 2**52


def pick_source(servers: Iterable[Server], source: str) -> Server | None:
    """Consistent hashing of the client address (weighted rendezvous hashing).

    Each server scores ``-weight / ln(u)`` with ``u`` a hash of (server, client);
    the best score wins. Adding or removing a server moves only the clients that
    it wins or held, so clients stay put when other servers come and go.
    """
    src = source.encode()
    best: Server | None = None
    best_score = -1.0
    for s in servers:
        if s.weight <= 0:
            continue
        score = -s.weight / math.log(_unit_hash(s._hash_key + b"\x00" + src))
        if score > best_score:
            best, best_score = s, score
    return best


HealthListener = Callable[[Server, bool], None]
EdgeObserver = Callable[["ServerGroup", Server, bool], None]

# Process-wide (``workers N``): a worker process runs no health checks of its own (its
# master checks and sends it the edges), and the master watches every group's edges.
_local_checks = True
_edge_observer: EdgeObserver | None = None


def set_local_health_checks(enabled: bool) -> None:
    """Whether servers added from now on in this process are health-checked here.

    A worker process of ``workers N`` turns them off: the master's checks decide,
    and it sets the flags with :meth:`ServerGroup.set_healthy`.
    """
    global _local_checks
    _local_checks = enabled


def set_edge_observer(observer: EdgeObserver | None) -> None:
    """Call ``observer(group, server, healthy)`` on every UP/DOWN edge of any group
    of this process (after the group's own listeners); None stops it."""
    global _edge_observer
    _edge_observer = observer


#: bumped whenever a group's annotations are replaced (what upstreams cache by hint
#: depends on them)
annotations_epoch = 0


class ServerGroup:
    """A named set of servers and the method that picks among the healthy ones."""

    def __init__(
        self,
        name: str,
        *,
        method: Method | str = Method.WRR,
        health_check: HealthCheckConfig | None = None,
        event_loop_group: EventLoopGroup | None = None,
        annotations: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.method = _method(method)
        self.health_config = health_check or HealthCheckConfig()
        # The health check's timeout is also the connect timeout of every session to
        # these servers; kept here as a plain int (read per session, where reading it
        # through the config dataclass was a generic attribute look-up).
        self.connect_timeout_ms: int = self.health_config.timeout
        self.event_loop_group = event_loop_group
        self._annotations: dict[str, str] = dict(annotations or {})
        self._lock = threading.Lock()
        self._servers: dict[str, Server] = {}
        self._healthy: tuple[Server, ...] = ()
        # A healthy server with a weight above 0 exists (kept by _rebuild, read for
        # every connection by the upstream).
        self.pickable = False
        self._only: Server | None = None
        self._wrr = SmoothWrr((), ())
        self._wlc_cursor = 0
        self._listeners: list[HealthListener] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"ServerGroup({self.name!r}, {self.method.value}, {list(self._servers.values())})"

    @property
    def annotations(self) -> dict[str, str]:
        """Free-form key/values (``host`` names the group for hint matching).

        Replace the whole dict to change them (upstreams cache what hints match).
        """
        return self._annotations

    @annotations.setter
    def annotations(self, value: dict[str, str]) -> None:
        global annotations_epoch
        self._annotations = dict(value)
        annotations_epoch += 1

    # -- reading ----------------------------------------------------------------------
    @property
    def servers(self) -> tuple[Server, ...]:
        """Every server, in the order they were added."""
        return tuple(self._servers.values())

    @property
    def healthy_servers(self) -> tuple[Server, ...]:
        """The servers that are UP now."""
        return self._healthy

    def get(self, name: str) -> Server:
        """The server called ``name``; :class:`KeyError` if absent."""
        return self._servers[name]

    def next(self, source: str | None = None) -> Server | None:
        """A healthy server by the group's method, or None when none is usable.

        Args:
            source: the client's IP address, used by ``source``.
        """
        only = self._only
        if only is not None:
            return only
        healthy = self._healthy
        if not healthy:
            return None
        method = self.method
        if method is Method.WRR:
            with self._lock:
                picked: Server | None = self._wrr.next()
                return picked
        if method is Method.WLC:
            self._wlc_cursor += 1
            return pick_wlc(healthy, self._wlc_cursor)
        return pick_source(healthy, source or "")

    # -- health -------------------------------------------------------------------------
    def add_health_listener(self, listener: HealthListener) -> None:
        """Call ``listener(server, healthy)`` on every UP/DOWN edge."""
        self._listeners.append(listener)

    def remove_health_listener(self, listener: HealthListener) -> None:
        """Stop calling ``listener``."""
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    def set_healthy(self, server: Server, healthy: bool) -> None:
        """Force a server's flag (used by health checks and by tests)."""
        if server.health.healthy == healthy:
            return
        server.health.healthy = healthy
        self._on_edge(server, healthy)

    def _on_edge(self, server: Server, healthy: bool) -> None:
        with self._lock:
            if self._servers.get(server.name) is not server:
                return  # removed meanwhile
            self._rebuild()
        _log.info(
            "server %s (%s) in server-group %s is %s",
            server.name,
            server.address_text,
            self.name,
            "UP" if healthy else "DOWN",
        )
        for listener in list(self._listeners):
            try:
                listener(server, healthy)
            except Exception:
                _log.exception("health listener failed")
        observer = _edge_observer
        if observer is not None:
            try:
                observer(self, server, healthy)
            except Exception:
                _log.exception("health edge observer failed")

    def _rebuild(self) -> None:
        """Recompute the healthy snapshot and the WRR state (lock held)."""
        healthy = tuple(s for s in self._servers.values() if s.health.healthy)
        self._healthy = healthy
        pickable = [s for s in healthy if s.weight > 0]
        self.pickable = bool(pickable)
        # One server to pick: every method picks it (no lock, no WRR step).
        self._only = pickable[0] if len(pickable) == 1 else None
        self._wrr = SmoothWrr(healthy, [s.weight for s in healthy])

    # -- changing -----------------------------------------------------------------------
    def add(self, name: str, address: tuple[str, int], weight: int = 10) -> Server:
        """Add a server; it starts DOWN and is health-checked at once."""
        with self._lock:
            if self._closed:
                raise ServerGroupError(f"server-group {self.name} is closed")
            if name in self._servers:
                raise ServerGroupError(f"server {name} already exists in server-group {self.name}")
            # built first so the duplicate check compares normalised addresses
            # (``::1`` and ``0:0::1`` are the same server)
            server = Server(name, address[0], address[1], weight, self)
            for s in self._servers.values():
                if s.address == server.address:
                    raise ServerGroupError(
                        f"server {s.name} in server-group {self.name} already has address "
                        f"{s.address_text}"
                    )
            self._servers[name] = server
        self._start_check(server)
        return server

    def remove(self, name: str) -> Server:
        """Remove a server; sessions already on it go on until they end."""
        with self._lock:
            server = self._servers.pop(name, None)
            if server is None:
                raise KeyError(name)
            self._rebuild()
        self._stop_check(server)
        return server

    def update_server(self, name: str, *, weight: int) -> None:
        """Change a server's weight (0 drains it: no new sessions)."""
        _check_weight(weight)
        with self._lock:
            self._servers[name].weight = weight
            self._rebuild()

    def set_method(self, method: Method | str) -> None:
        """Change how the next server is picked."""
        m = _method(method)
        with self._lock:
            self.method = m
            self._rebuild()

    def set_health_config(self, config: HealthCheckConfig) -> None:
        """Change the health-check settings; counting restarts for the new ones."""
        with self._lock:
            self.health_config = config
            self.connect_timeout_ms = config.timeout
            for s in self._servers.values():
                s.health.reconfigure(config)

    def close(self) -> None:
        """Stop all health checks."""
        with self._lock:
            self._closed = True
            servers = list(self._servers.values())
        for s in servers:
            self._stop_check(s)

    # -- health-check driving ---------------------------------------------------------------
    def _start_check(self, server: Server) -> None:
        elg = self.event_loop_group
        if elg is None or not _local_checks:
            return
        el = elg.next()

        def on_change(healthy: bool) -> None:
            self._on_edge(server, healthy)

        client = HealthCheckClient(server.host, server.port, server.health, on_change)
        server._health_client = client
        _attach(el, _CheckMover(self, server, el))
        el.call_soon(client.start, el.loop)

    def _stop_check(self, server: Server) -> None:
        client = server._health_client
        server._health_client = None
        if client is not None and client.loop is not None and not client.loop.is_closed():
            try:
                client.loop.call_soon_threadsafe(client.stop)
            except RuntimeError:
                pass  # the loop closed meanwhile


class _CheckMover:
    """Moves a server's health check to another loop when its loop is removed."""

    __slots__ = ("el", "group", "server")

    def __init__(self, group: ServerGroup, server: Server, el: EventLoop) -> None:
        self.group = group
        self.server = server
        self.el = el

    def on_event_loop_removed(self, loop: EventLoop) -> None:
        group, server = self.group, self.server
        if group._servers.get(server.name) is not server or server._health_client is None:
            return
        group._stop_check(server)
        try:
            group._start_check(server)
        except Exception:
            _log.warning("health check of %s has no event loop left", server.name)


def _attach(el: EventLoop, res: _CheckMover) -> None:
    el.attach(res)
