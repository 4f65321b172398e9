"""Applies parsed commands to the application (SPEC §3.1); the only code that changes state.

Owns: what each (resource type, action) does, the checks that come before any change
(every reference exists, nothing in use is removed, values fit), the typed replies,
the current configuration as a replayable command list (``list config``), the
``System:`` commands and who may run them, and the read-only views the HTTP
controller serves (:meth:`Executor.status`, :meth:`Executor.metrics_text`).

All-or-nothing: a handler checks everything it needs first and changes state only
afterwards, so an error reply means nothing changed. Commands run one at a time
under ``Application.lock``, whichever controller sends them.

Must not: do socket I/O itself (components do), or know how a controller speaks.
"""

from __future__ import annotations

import enum
import itertools
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypedDict, TypeVar

from vproxy.app.accept_gate import DEFAULT_MAX_CONNECTIONS
from vproxy.app.l7 import UnknownProtocol, check_protocol
from vproxy.app.l7.base import L7End, L7Limits, L7Session
from vproxy.app.listener import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_HANDSHAKE_TIMEOUT_MS,
    DEFAULT_TIMEOUT_MS,
    Listener,
    ListenerError,
)
from vproxy.app.socks5_server import Socks5Server
from vproxy.app.tcp_lb import AnySession, TcpLB
from vproxy.component.cert_key import CertKey, CertKeyError
from vproxy.component.health_check import HealthCheckConfig
from vproxy.component.security_group import (
    SecurityGroup,
    SecurityGroupError,
    SecurityGroupRule,
)
from vproxy.component.server_group import Method, Server, ServerGroup, ServerGroupError
from vproxy.component.upstream import Upstream
from vproxy.control.application import (
    ACCEPTOR_ELG,
    CONTROL_ELG,
    DEFAULT_ELGS,
    WORKER_ELG,
    Application,
)
from vproxy.control.command import (
    Action,
    Command,
    CommandError,
    ConflictError,
    InUseError,
    NotFoundError,
    Ref,
    ResourceType,
    SystemCommand,
    SystemOp,
    format_command,
    man,
    parse,
    parse_words,
)
from vproxy.control.command.values import Address, NamePattern, PortRange
from vproxy.control.metrics import (
    AppCollector,
    listener_kind,
    render_metrics,
    server_bytes,
    status_snapshot,
)
from vproxy.control.persist import ConfigFileError, read_config, save_atomic
from vproxy.control.reply import OK, Array, ErrorReply, Integer, JsonValue, Reply, String
from vproxy.net.connection import Connection, Session
from vproxy.net.event_loop import EventLoop, EventLoopError, EventLoopGroup
from vproxy.net.server_sock import format_address

__all__ = ["LOCAL_ONLY", "Executor", "Origin", "Peers", "UnsupportedError"]

_log = logging.getLogger("vproxy.control")

Detail = dict[str, Any]

MAX_STATUS_SESSIONS = 200
"""Sessions listed in :meth:`Executor.status` (the total is always given)."""


class Origin(enum.Enum):
    """Where a command came from; decides which System commands it may run."""

    STDIO = "stdio"
    RESP = "resp"
    HTTP = "http"
    FILE = "file"


L7_LIMIT_PARAMS: dict[str, str] = {
    "request-head-timeout": "head_timeout",
    "max-head-size": "max_head_size",
    "max-headers": "max_headers",
    "max-concurrent-streams": "max_concurrent_streams",
    "max-pipelined": "max_pipelined",
}
"""tcp-lb parameters that set a field of its :class:`L7Limits`."""


LOCAL_ONLY = frozenset(
    {
        ResourceType.CONNECTION,
        ResourceType.SESSION,
        ResourceType.DNS_CACHE,
        ResourceType.BYTES_IN,
        ResourceType.BYTES_OUT,
        ResourceType.ACCEPTED_CONN_COUNT,
    }
)
"""Resource types whose commands are about this process's live objects, never replicated."""

LIVE = frozenset({ResourceType.CONNECTION, ResourceType.SESSION})
"""Live objects that ``list``, ``list-detail`` and ``force-remove`` find in the peers too."""


class Peers(Protocol):
    """Other processes that hold a replica of the state (``workers N``)."""

    def check(self, cmd: Command) -> None:
        """Refuse (raise :class:`CommandError`) what the peers could not apply."""

    def replicate(self, cmd: Command) -> None:
        """Apply ``cmd``, which has just succeeded here, in every peer (in order)."""

    def listener_counters(self, listeners: Sequence[TcpLB | Socks5Server]) -> tuple[int, int, int]:
        """(accepted, bytes from clients, bytes from servers) of these listeners in the peers."""
        ...

    def server_counters(self, server: Server) -> tuple[int, int]:
        """(bytes from the server, bytes toward it) in the peers."""
        ...

    def collector(self, app: Application) -> AppCollector:
        """The metrics collector that adds the peers' counters to ``app``'s."""
        ...

    def loop_sessions(self) -> dict[tuple[str, str], int]:
        """Live sessions in the peers by (event-loop-group, event-loop)."""
        ...

    def sum_status(self, snap: dict[str, JsonValue]) -> None:
        """Add the peers' counters and live sessions to the status JSON ``snap``."""

    def live_details(self, cmd: Command) -> list[Detail]:
        """The peers' connections or sessions that ``cmd`` (a ``list``/``list-detail``
        of a :data:`LIVE` type) is about, described as ``list-detail`` does."""
        ...

    def abort_live(self, cmd: Command) -> bool:
        """Run ``cmd`` (a ``force-remove`` of a :data:`LIVE` type) in the peers; True
        when one of them had a match."""
        ...


class UnsupportedError(CommandError):
    """The command is valid but this build does not provide that resource yet."""

    http_status = 501


class ForbiddenError(CommandError):
    """The command may not be run from where it came."""

    http_status = 403


class _ListenerOptions(TypedDict):
    """What ``add tcp-lb`` and ``add socks5-server`` both take from their command."""

    acceptor_elg: EventLoopGroup
    worker_elg: EventLoopGroup
    in_buffer_size: int
    out_buffer_size: int
    timeout: int
    security_group: SecurityGroup | None
    max_connections: int
    handshake_timeout: int
    half_closed_timeout: int | None


class _ListenerChanges(TypedDict):
    """What ``update tcp-lb`` and ``update socks5-server`` both may change (None: kept)."""

    upstream: Upstream | None
    acceptor_elg: EventLoopGroup | None
    worker_elg: EventLoopGroup | None
    security_group: SecurityGroup | bool | None  # False: kept, None: removed
    in_buffer_size: int | None
    out_buffer_size: int | None
    timeout: int | None
    max_connections: int | None
    handshake_timeout: int | None
    half_closed_timeout: int | None


_L = TypeVar("_L", bound=Listener)
_L_co = TypeVar("_L_co", bound=Listener, covariant=True)


class _MakeListener(Protocol[_L_co]):
    def __call__(
        self, name: str, addr: tuple[str, int], ups: Upstream, options: _ListenerOptions
    ) -> _L_co: ...


_T = TypeVar("_T")


def _find(table: dict[str, _T], kind: str, name: str) -> _T:
    """``table[name]``, else "KIND NAME not found"."""
    found = table.get(name)
    if found is None:
        raise NotFoundError(f"{kind} {name} not found")
    return found


def _addr(a: tuple[str, int] | Address) -> str:
    if isinstance(a, Address):
        return format_address(a.host, a.port)
    return format_address(a[0], a[1])


def _conn_name(c: Connection | L7End, fallback_peer: Any = None) -> str:
    """``remote/local`` as in the original, e.g. ``127.0.0.1:40000/127.0.0.1:18080``."""
    t = c.transport
    peer = sock = None
    if t is not None:
        try:
            peer = t.get_extra_info("peername")
            sock = t.get_extra_info("sockname")
        except Exception:
            peer = sock = None
    peer = peer or fallback_peer
    p = format_address(peer[0], peer[1]) if peer else "?"
    s = format_address(sock[0], sock[1]) if sock else "?"
    return f"{p}/{s}"


class Executor:
    """Runs commands against an :class:`Application` and returns typed replies."""

    def __init__(
        self,
        app: Application,
        *,
        allow_system_in_non_stdio: bool = False,
        controller_factory: ControllerFactory | None = None,
    ) -> None:
        self.app = app
        self.allow_system_in_non_stdio = allow_system_in_non_stdio
        self.controller_factory = controller_factory or default_controller_factory
        self._collector = AppCollector(app)
        self.peers: Peers | None = None

    def set_peers(self, peers: Peers) -> None:
        """Replicate every successful change to ``peers``; add their counters to ours."""
        with self.app.lock:
            self.peers = peers
            self._collector = peers.collector(self.app)

    # -- entry points -----------------------------------------------------------------
    def execute_line(self, line: str, origin: Origin) -> Reply:
        """Parse and run one command line."""
        try:
            cmd = parse(line)
        except CommandError as exc:
            return _error(exc)
        return self.execute(cmd, origin)

    def execute_words(self, words: Sequence[str], origin: Origin) -> Reply:
        """Parse and run one command given as words (RESP arguments)."""
        try:
            cmd = parse_words(list(words))
        except CommandError as exc:
            return _error(exc)
        return self.execute(cmd, origin)

    def execute(self, cmd: Command | SystemCommand, origin: Origin) -> Reply:
        """Run a parsed command; command errors come back as :class:`ErrorReply`."""
        try:
            with self.app.lock:
                if isinstance(cmd, SystemCommand):
                    return self._system(cmd, origin)
                return self._run(cmd)
        except CommandError as exc:
            return _error(exc)
        except Exception as exc:  # a bug: answer, log, keep serving
            _log.exception("command failed: %s", _safe_line(cmd))
            return ErrorReply(f"internal error: {type(exc).__name__}: {exc}", http_status=500)

    def detail(self, cmd: Command) -> list[Detail]:
        """Structured ``list-detail`` (JSON-able dicts) for the HTTP controller.

        Raises:
            CommandError: as :meth:`execute` would report it.
        """
        with self.app.lock:
            return self._describe_all(cmd, self._select(cmd))

    def status(self) -> dict[str, JsonValue]:
        """What the dashboard shows (``/api/v1/status``): read-only, read now.

        :func:`~vproxy.control.metrics.status_snapshot` plus up to
        :data:`MAX_STATUS_SESSIONS` live sessions (``sessions_total`` counts them all),
        each with the name of its client connection, as ``force-remove connection``
        takes it. With peers, their counters and live sessions are added to the
        figures (the sessions listed are this process's).
        """
        snap = self._local_status()
        if self.peers is not None:
            self.peers.sum_status(snap)  # not under the lock: it waits for the peers
        return snap

    def _local_status(self) -> dict[str, JsonValue]:
        with self.app.lock:
            snap = status_snapshot(self.app)
            sessions: list[JsonValue] = []
            total = 0
            for lb in self.app.listeners():
                live = list(lb.sessions)
                total += len(live)
                room = MAX_STATUS_SESSIONS - len(sessions)
                for sess in sorted(itertools.islice(live, max(room, 0)), key=lambda x: x.id):
                    server = sess.server
                    sessions.append(
                        {
                            "id": sess.id,
                            "listener_kind": listener_kind(lb),
                            "listener": lb.name,
                            "client": _addr(sess.client[:2]),
                            "connection": _conn_name(sess.front, sess.client),
                            "server": server.name if server is not None else None,
                            "group": server.group.name
                            if server is not None and server.group is not None
                            else None,
                            "bytes_in": sess.front.bytes_in,
                            "bytes_out": sess.back.bytes_in,
                        }
                    )
            snap["sessions"] = sessions
            snap["sessions_total"] = total
            return snap

    def metrics_text(self) -> bytes:
        """The Prometheus text exposition (``/metrics``)."""
        return render_metrics(self._collector)

    def run_or_raise(self, cmd: Command | SystemCommand, origin: Origin) -> Reply:
        """Like :meth:`execute` but raises :class:`CommandError` on failure."""
        with self.app.lock:
            if isinstance(cmd, SystemCommand):
                return self._system(cmd, origin)
            return self._run(cmd)

    # -- dispatch ---------------------------------------------------------------------
    def _run(self, cmd: Command) -> Reply:
        t, a = cmd.type, cmd.action
        if t in _UNSUPPORTED:
            raise UnsupportedError(
                f"{t.value} is not available in this build of vproxy ({_UNSUPPORTED[t]})"
            )
        if a in (Action.LIST, Action.LIST_DETAIL):
            return self._list(cmd)
        handler = _HANDLERS.get((t, a))
        if handler is None:
            raise UnsupportedError(f"{a.value} {t.value} is not supported")
        if self.peers is None or t in LOCAL_ONLY:
            return handler(self, cmd)
        self.peers.check(cmd)
        reply = handler(self, cmd)
        self.peers.replicate(cmd)  # under the lock: peers see changes in our order
        return reply

    # -- lookups ----------------------------------------------------------------------
    def _elg(self, name: str) -> EventLoopGroup:
        return _find(self.app.event_loop_groups, "event-loop-group", name)

    def _el(self, name: str, group: str) -> EventLoop:
        g = self._elg(group)
        try:
            return g.get(name)
        except KeyError:
            raise NotFoundError(
                f"event-loop {name} not found in event-loop-group {group}"
            ) from None

    def _ups(self, name: str) -> Upstream:
        return _find(self.app.upstreams, "upstream", name)

    def _sg(self, name: str) -> ServerGroup:
        return _find(self.app.server_groups, "server-group", name)

    def _svr(self, name: str, group: str) -> Server:
        g = self._sg(group)
        try:
            return g.get(name)
        except KeyError:
            raise NotFoundError(f"server {name} not found in server-group {group}") from None

    def _lb(self, name: str) -> TcpLB:
        return _find(self.app.tcp_lbs, "tcp-lb", name)

    def _s5(self, name: str) -> Socks5Server:
        return _find(self.app.socks5_servers, "socks5-server", name)

    def _secg(self, name: str) -> SecurityGroup:
        return _find(self.app.security_groups, "security-group", name)

    def _ck(self, name: str) -> CertKey:
        return _find(self.app.cert_keys, "cert-key", name)

    def _listener(self, t: ResourceType, name: str) -> TcpLB | Socks5Server:
        if t is ResourceType.SOCKS5_SERVER:
            return self._s5(name)
        return self._lb(name)

    @staticmethod
    def _name(cmd: Command) -> str:
        if not isinstance(cmd.name, str):
            raise CommandError(f"{cmd.action.value} {cmd.type.value} needs a name")
        return cmd.name

    @staticmethod
    def _parent(cmd: Command, index: int = 0) -> str:
        return cmd.parents[index].name

    # -- event-loop-group / event-loop ------------------------------------------------
    def _add_elg(self, cmd: Command) -> Reply:
        name = self._name(cmd)
        if name in self.app.event_loop_groups:
            raise ConflictError(f"event-loop-group {name} already exists")
        self.app.event_loop_groups[name] = EventLoopGroup(name)
        return OK

    def _remove_elg(self, cmd: Command) -> Reply:
        name = self._name(cmd)
        g = self._elg(name)
        if name in DEFAULT_ELGS:
            raise InUseError(f"event-loop-group {name} is a default group and cannot be removed")
        users = self.app.users_of_elg(name)
        if users:
            raise InUseError(f"event-loop-group {name} is used by {', '.join(users)}")
        del self.app.event_loop_groups[name]
        g.close()
        return OK

    def _add_el(self, cmd: Command) -> Reply:
        name, group = self._name(cmd), self._parent(cmd)
        g = self._elg(group)
        for other in self.app.event_loop_groups.values():
            if any(el.name == name for el in other.loops):
                raise ConflictError(
                    f"event-loop {name} already exists (in event-loop-group {other.name})"
                )
        try:
            g.add(name)
        except EventLoopError as exc:
            raise ConflictError(str(exc)) from exc
        return OK

    def _remove_el(self, cmd: Command) -> Reply:
        name, group = self._name(cmd), self._parent(cmd)
        g = self._elg(group)
        self._el(name, group)
        if len(g.loops) == 1 and self.app.users_of_elg(group):
            raise InUseError(
                f"event-loop {name} is the last loop of event-loop-group {group}, which is used "
                f"by {', '.join(self.app.users_of_elg(group))}"
            )
        g.remove(name, force_close_sessions=cmd.action is Action.FORCE_REMOVE)
        return OK

    # -- upstream -------------------------------------------------------------------------
    def _add_ups(self, cmd: Command) -> Reply:
        name = self._name(cmd)
        if name in self.app.upstreams:
            raise ConflictError(f"upstream {name} already exists")
        self.app.upstreams[name] = Upstream(name)
        return OK

    def _remove_ups(self, cmd: Command) -> Reply:
        name = self._name(cmd)
        u = self._ups(name)
        users = [_kind(x) for x in self.app.listeners() if x.upstream is u]
        if users:
            raise InUseError(f"upstream {name} is used by {', '.join(users)}")
        del self.app.upstreams[name]
        return OK

    # -- server-group ---------------------------------------------------------------------
    def _add_sg(self, cmd: Command) -> Reply:
        name = self._name(cmd)
        if cmd.parents:  # add server-group G to upstream U weight W
            u = self._ups(self._parent(cmd))
            g = self._sg(name)
            if any(h.group is g for h in u.groups):
                raise ConflictError(f"server-group {name} is already in upstream {u.name}")
            u.add(g, _int(cmd, "weight", 10))
            return OK
        if name in self.app.server_groups:
            raise ConflictError(f"server-group {name} already exists")
        hc = _health(cmd, None)
        elg = self._elg(_str(cmd, "event-loop-group", CONTROL_ELG))
        method = Method(_str(cmd, "method", "wrr"))
        g = ServerGroup(
            name,
            method=method,
            health_check=hc,
            event_loop_group=elg,
            annotations=_annotations(cmd),
        )
        self.app.server_groups[name] = g
        self.app.health_book.watch(g)
        return OK

    def _update_sg(self, cmd: Command) -> Reply:
        name = self._name(cmd)
        g = self._sg(name)
        if cmd.parents:
            u = self._ups(self._parent(cmd))
            if not any(h.group is g for h in u.groups):
                raise NotFoundError(f"server-group {name} is not in upstream {u.name}")
            if "weight" in cmd.params:
                u.update(name, weight=_int(cmd, "weight", 10))
            return OK
        hc = _health(cmd, g.health_config)
        method = Method(_str(cmd, "method", g.method.value))
        annotations = _annotations(cmd) if "annotations" in cmd.params else None
        if hc != g.health_config:
            g.set_health_config(hc)
        if method is not g.method:
            g.set_method(method)
        if annotations is not None:
            g.annotations = annotations
        return OK

    def _remove_sg(self, cmd: Command) -> Reply:
        name = self._name(cmd)
        g = self._sg(name)
        if cmd.parents:  # remove server-group G from upstream U
            u = self._ups(self._parent(cmd))
            if not any(h.group is g for h in u.groups):
                raise NotFoundError(f"server-group {name} is not in upstream {u.name}")
            u.remove(name)
            return OK
        holders = self.app.upstreams_of_group(name)
        if holders and cmd.action is not Action.FORCE_REMOVE:
            raise InUseError(
                f"server-group {name} is used by upstream {', '.join(u.name for u in holders)}"
            )
        for u in holders:
            u.remove(name)
        del self.app.server_groups[name]
        self.app.health_book.unwatch(g)
        g.close()
        return OK

    # -- server -------------------------------------------------------------------------
    def _add_svr(self, cmd: Command) -> Reply:
        name, group = self._name(cmd), self._parent(cmd)
        g = self._sg(group)
        addr = cmd.params["address"]
        assert isinstance(addr, Address)
        if name in {s.name for s in g.servers}:
            raise ConflictError(f"server {name} already exists in server-group {group}")
        try:
            server = g.add(name, (addr.host, addr.port), weight=_int(cmd, "weight", 10))
        except ServerGroupError as exc:
            raise CommandError(str(exc)) from exc
        self.app.health_book.server_added(server)
        return OK

    def _update_svr(self, cmd: Command) -> Reply:
        name, group = self._name(cmd), self._parent(cmd)
        s = self._svr(name, group)
        if "weight" in cmd.params:
            s_group = s.group
            assert s_group is not None
            old = s.weight
            s_group.update_server(name, weight=_int(cmd, "weight", s.weight))
            self.app.health_book.weight_changed(s, old, s.weight)
        return OK

    def _remove_svr(self, cmd: Command) -> Reply:
        name, group = self._name(cmd), self._parent(cmd)
        s = self._svr(name, group)
        self._sg(group).remove(name)
        if cmd.action is Action.FORCE_REMOVE:
            for sess in list(s.sessions):
                _abort(sess)
        return OK

    # -- tcp-lb -------------------------------------------------------------------------
    def _lb_refs(
        self, cmd: Command, lb: Listener | None
    ) -> tuple[Upstream | None, EventLoopGroup | None, EventLoopGroup | None]:
        proto = cmd.params.get("protocol")
        if proto is not None:
            try:
                check_protocol(str(proto))
            except UnknownProtocol as exc:
                raise CommandError(str(exc)) from None
        ups = self._ups(_str(cmd, "upstream", "")) if "upstream" in cmd.params else None
        aelg = (
            self._elg(_str(cmd, "acceptor-elg", ""))
            if "acceptor-elg" in cmd.params
            else (None if lb else self._elg(ACCEPTOR_ELG))
        )
        welg = (
            self._elg(_str(cmd, "event-loop-group", ""))
            if "event-loop-group" in cmd.params
            else (None if lb else self._elg(WORKER_ELG))
        )
        for g in (aelg, welg):
            if g is not None and not g.loops:
                raise CommandError(f"event-loop-group {g.name} has no event-loop")
        return ups, aelg, welg

    def _cert_keys_param(self, cmd: Command) -> list[CertKey] | None:
        """The cert-key parameter: the named cert-keys, or None when not given."""
        if "cert-key" not in cmd.params:
            return None
        names = cmd.params["cert-key"]
        assert isinstance(names, tuple)
        return [self._ck(str(n)) for n in names]

    def _secg_param(self, cmd: Command) -> SecurityGroup | bool:
        """The security-group parameter: a group, or False when not given."""
        if "security-group" not in cmd.params:
            return False
        return self._secg(_str(cmd, "security-group", ""))

    def _add_listener(self, cmd: Command, table: dict[str, _L], make: _MakeListener[_L]) -> Reply:
        """``add tcp-lb`` and ``add socks5-server``: ``make`` builds the listener."""
        name, kind = self._name(cmd), cmd.type.value
        if name in table:
            raise ConflictError(f"{kind} {name} already exists")
        ups, aelg, welg = self._lb_refs(cmd, None)
        if ups is None or aelg is None or welg is None:
            raise CommandError(f"add {kind} needs upstream")
        secg = self._secg_param(cmd)
        addr = cmd.params["address"]
        assert isinstance(addr, Address)
        options: _ListenerOptions = {
            "acceptor_elg": aelg,
            "worker_elg": welg,
            "in_buffer_size": _int(cmd, "in-buffer-size", DEFAULT_BUFFER_SIZE),
            "out_buffer_size": _int(cmd, "out-buffer-size", DEFAULT_BUFFER_SIZE),
            "timeout": _int(cmd, "timeout", DEFAULT_TIMEOUT_MS),
            "security_group": secg if isinstance(secg, SecurityGroup) else None,
            "max_connections": _int(cmd, "max-connections", DEFAULT_MAX_CONNECTIONS),
            "handshake_timeout": _int(cmd, "handshake-timeout", DEFAULT_HANDSHAKE_TIMEOUT_MS),
            "half_closed_timeout": _opt_int(cmd, "half-closed-timeout"),
        }
        try:
            listener = make(name, (addr.host, addr.port), ups, options)
        except ListenerError as exc:
            raise CommandError(str(exc)) from exc
        listener.access_log = self.app.access_log
        try:
            listener.start()
        except OSError as exc:
            raise ConflictError(f"cannot listen on {_addr(addr)}: {exc.strerror or exc}") from exc
        table[name] = listener
        return OK

    def _listener_changes(self, cmd: Command, listener: Listener) -> _ListenerChanges:
        """What ``update tcp-lb`` and ``update socks5-server`` both may change."""
        ups, aelg, welg = self._lb_refs(cmd, listener)
        return {
            "upstream": ups,
            "acceptor_elg": aelg,
            "worker_elg": welg,
            "security_group": self._secg_param(cmd),
            "in_buffer_size": _opt_int(cmd, "in-buffer-size"),
            "out_buffer_size": _opt_int(cmd, "out-buffer-size"),
            "timeout": _opt_int(cmd, "timeout"),
            "max_connections": _opt_int(cmd, "max-connections"),
            "handshake_timeout": _opt_int(cmd, "handshake-timeout"),
            "half_closed_timeout": _opt_int(cmd, "half-closed-timeout"),
        }

    def _add_lb(self, cmd: Command) -> Reply:
        def make(
            name: str, addr: tuple[str, int], ups: Upstream, options: _ListenerOptions
        ) -> TcpLB:
            return TcpLB(
                name,
                addr,
                ups,
                protocol=_str(cmd, "protocol", "tcp"),
                cert_keys=self._cert_keys_param(cmd) or (),
                l7_limits=_l7_limits(cmd, L7Limits()),
                **options,
            )

        return self._add_listener(cmd, self.app.tcp_lbs, make)

    def _update_lb(self, cmd: Command) -> Reply:
        lb = self._lb(self._name(cmd))
        changes = self._listener_changes(cmd, lb)
        try:
            lb.update(
                cert_keys=self._cert_keys_param(cmd),
                protocol=_opt_str(cmd, "protocol"),
                l7_limits=_l7_limits(cmd, lb.l7_limits),
                **changes,
            )
        except (ListenerError, EventLoopError) as exc:
            raise CommandError(str(exc)) from exc
        return OK

    def _remove_lb(self, cmd: Command) -> Reply:
        name = self._name(cmd)
        lb = self._lb(name)
        del self.app.tcp_lbs[name]
        lb.stop(close_sessions=cmd.action is Action.FORCE_REMOVE)
        return OK

    # -- socks5-server -------------------------------------------------------------------
    def _add_s5(self, cmd: Command) -> Reply:
        def make(
            name: str, addr: tuple[str, int], ups: Upstream, options: _ListenerOptions
        ) -> Socks5Server:
            return Socks5Server(
                name, addr, ups, allow_non_backend="allow-non-backend" in cmd.flags, **options
            )

        return self._add_listener(cmd, self.app.socks5_servers, make)

    def _update_s5(self, cmd: Command) -> Reply:
        s5 = self._s5(self._name(cmd))
        changes = self._listener_changes(cmd, s5)
        allow: bool | None = None
        if "allow-non-backend" in cmd.flags:
            allow = True
        elif "deny-non-backend" in cmd.flags:
            allow = False
        try:
            s5.update(allow_non_backend=allow, **changes)
        except (ListenerError, EventLoopError) as exc:
            raise CommandError(str(exc)) from exc
        return OK

    def _remove_s5(self, cmd: Command) -> Reply:
        name = self._name(cmd)
        s5 = self._s5(name)
        del self.app.socks5_servers[name]
        s5.stop(close_sessions=cmd.action is Action.FORCE_REMOVE)
        return OK

    # -- security-group / security-group-rule -------------------------------------------
    def _add_secg(self, cmd: Command) -> Reply:
        name = self._name(cmd)
        if name in self.app.security_groups:
            raise ConflictError(f"security-group {name} already exists")
        default = _str(cmd, "default", "allow")
        self.app.security_groups[name] = SecurityGroup(name, default_allow=default == "allow")
        return OK

    def _update_secg(self, cmd: Command) -> Reply:
        g = self._secg(self._name(cmd))
        if "default" in cmd.params:
            g.set_default(_str(cmd, "default", "allow") == "allow")
        return OK

    def _remove_secg(self, cmd: Command) -> Reply:
        name = self._name(cmd)
        g = self._secg(name)
        users = [_kind(x) for x in self.app.listeners() if x.security_group is g]
        if users:
            raise InUseError(f"security-group {name} is used by {', '.join(users)}")
        del self.app.security_groups[name]
        return OK

    def _add_secgr(self, cmd: Command) -> Reply:
        name, group = self._name(cmd), self._parent(cmd)
        g = self._secg(group)
        if any(r.name == name for r in g.rules):
            raise ConflictError(f"security-group-rule {name} already exists in {group}")
        pr = cmd.params["port-range"]
        try:
            rule = SecurityGroupRule(
                name,
                str(cmd.params["network"]),
                _str(cmd, "protocol", "TCP"),
                pr.low,  # type: ignore[union-attr]
                pr.high,  # type: ignore[union-attr]
                allow=_str(cmd, "default", "deny") == "allow",
            )
            g.add_rule(rule)
        except SecurityGroupError as exc:
            raise CommandError(str(exc)) from exc
        return OK

    def _remove_secgr(self, cmd: Command) -> Reply:
        name, group = self._name(cmd), self._parent(cmd)
        g = self._secg(group)
        try:
            g.remove_rule(name)
        except (KeyError, SecurityGroupError):
            raise NotFoundError(
                f"security-group-rule {name} not found in security-group {group}"
            ) from None
        return OK

    # -- cert-key -------------------------------------------------------------------------
    def _add_ck(self, cmd: Command) -> Reply:
        name = self._name(cmd)
        if name in self.app.cert_keys:
            raise ConflictError(f"cert-key {name} already exists")
        certs = cmd.params["cert"]
        key = cmd.params["key"]
        try:
            ck = CertKey(name, [str(c) for c in certs], str(key))  # type: ignore[union-attr]
        except CertKeyError as exc:
            raise CommandError(str(exc)) from exc
        self.app.cert_keys[name] = ck
        return OK

    def _remove_ck(self, cmd: Command) -> Reply:
        name = self._name(cmd)
        ck = self._ck(name)
        users = [f"tcp-lb {lb.name}" for lb in self.app.tcp_lbs.values() if ck in lb.cert_keys]
        if users:
            raise InUseError(f"cert-key {name} is used by {', '.join(users)}")
        del self.app.cert_keys[name]
        return OK

    # -- observables --------------------------------------------------------------------
    def _sessions_of(self, cmd: Command) -> list[AnySession]:
        """Sessions under the parent chain of an observable command."""
        ps = cmd.parents
        if not ps:
            raise CommandError(f"{cmd.type.value} needs a parent (in tcp-lb NAME, ...)")
        head = ps[0]
        if head.type is ResourceType.SERVER_SOCK:
            ps = ps[1:]
            head = ps[0]
        if head.type in (ResourceType.TCP_LB, ResourceType.SOCKS5_SERVER):
            return list(self._listener(head.type, head.name).sessions)
        if head.type is ResourceType.EVENT_LOOP:
            el = self._el(head.name, ps[1].name)
            return [s for lb in self.app.listeners() for s in list(lb.sessions) if s.el is el]
        if head.type is ResourceType.SERVER:
            srv = self._svr(head.name, ps[1].name)
            return [s for s in list(srv.sessions) if isinstance(s, Session)]
        raise UnsupportedError(f"{cmd.type.value} in {head.type.value} is not available")

    def _connections_of(self, cmd: Command) -> list[tuple[str, Connection | L7End, AnySession]]:
        out = []
        by_server = bool(cmd.parents) and cmd.parents[0].type is ResourceType.SERVER
        for s in self._sessions_of(cmd):
            if not by_server:
                out.append((_conn_name(s.front, s.client), s.front, s))
            if isinstance(s, Session):
                out.append((_conn_name(s.back), s.back, s))
        return out

    def _server_socks_of(self, cmd: Command) -> list[TcpLB | Socks5Server]:
        head = cmd.parents[0]
        if head.type in (ResourceType.TCP_LB, ResourceType.SOCKS5_SERVER):
            return [self._listener(head.type, head.name)]
        if head.type is ResourceType.EVENT_LOOP:
            el = self._el(head.name, cmd.parents[1].name)
            return [
                lb
                for lb in self.app.listeners()
                if lb.server_sock is not None and lb.server_sock.el is el
            ]
        raise UnsupportedError(f"server-sock in {head.type.value} is not available")

    def _counter(self, cmd: Command) -> Reply:
        """bytes-in, bytes-out and accepted-conn-count."""
        head = cmd.parents[0]
        incoming = cmd.type is ResourceType.BYTES_IN
        if head.type is ResourceType.SERVER_SOCK:
            lbs = [
                lb
                for lb in self._server_socks_of(_strip_first(cmd))
                if format_address(*lb.address) == head.name
            ]
            if not lbs:
                raise NotFoundError(f"server-sock {head.name} not found")
            acc, b_in, b_out = self.peers.listener_counters(lbs) if self.peers else (0, 0, 0)
            if cmd.type is ResourceType.ACCEPTED_CONN_COUNT:
                return Integer(acc + sum(lb.accepted for lb in lbs))
            if incoming:
                return Integer(b_in + sum(lb.bytes_from_clients for lb in lbs))
            return Integer(b_out + sum(lb.bytes_from_servers for lb in lbs))
        if head.type is ResourceType.SERVER:
            srv = self._svr(head.name, cmd.parents[1].name)
            from_server, to_server = server_bytes(srv)
            if self.peers is not None:
                more_from, more_to = self.peers.server_counters(srv)
                from_server, to_server = from_server + more_from, to_server + more_to
            return Integer(from_server if incoming else to_server)
        if head.type is ResourceType.CONNECTION:
            sub = _strip_first(cmd)
            for name, conn, _ in self._connections_of(sub):
                if name == head.name:
                    return Integer(conn.bytes_in if incoming else conn.bytes_out)
            raise NotFoundError(f"connection {head.name} not found")
        raise UnsupportedError(f"{cmd.type.value} in {head.type.value} is not available")

    def abort_live(self, cmd: Command) -> bool:
        """Close the connections or sessions of this process that ``cmd`` (a
        ``force-remove`` of a :data:`LIVE` type) matches; True when one matched."""
        pattern = cmd.name
        hit = False
        if cmd.type is ResourceType.CONNECTION:
            for name, _, sess in self._connections_of(cmd):
                if _matches(pattern, name):
                    _abort(sess)
                    hit = True
        else:
            for sess in self._sessions_of(cmd):
                if _matches(pattern, _session_name(sess)):
                    _abort(sess)
                    hit = True
        return hit

    def _force_remove_live(self, cmd: Command) -> Reply:
        hit = self.abort_live(cmd)
        if self.peers is not None:
            hit = self.peers.abort_live(cmd) or hit
        if not hit and isinstance(cmd.name, str):
            raise NotFoundError(f"{cmd.type.value} {cmd.name} not found")
        return OK

    def _force_remove_dns(self, cmd: Command) -> Reply:
        return OK  # no names are resolved, so the cache is always empty

    # -- list / list-detail --------------------------------------------------------------
    def _select(self, cmd: Command) -> list[Any]:
        """The objects a list / list-detail command is about, in a stable order."""
        objs = self._select_all(cmd)
        name = cmd.name if isinstance(cmd.name, str) else None
        if name is not None:
            objs = [o for o in objs if _obj_name(cmd.type, o) == name]
            if not objs:
                raise NotFoundError(f"{cmd.type.value} {name} not found")
        return objs

    def _select_all(self, cmd: Command) -> list[Any]:
        """The objects of ``cmd``'s type under its parents, whatever its name."""
        t = cmd.type
        objs: list[Any]
        if t is ResourceType.EVENT_LOOP_GROUP:
            objs = list(self.app.event_loop_groups.values())
        elif t is ResourceType.EVENT_LOOP:
            objs = list(self._elg(self._parent(cmd)).loops)
        elif t is ResourceType.UPSTREAM:
            objs = list(self.app.upstreams.values())
        elif t is ResourceType.SERVER_GROUP:
            if cmd.parents:
                objs = list(self._ups(self._parent(cmd)).groups)
            else:
                objs = list(self.app.server_groups.values())
        elif t is ResourceType.SERVER:
            objs = list(self._sg(self._parent(cmd)).servers)
        elif t is ResourceType.TCP_LB:
            objs = list(self.app.tcp_lbs.values())
        elif t is ResourceType.SOCKS5_SERVER:
            objs = list(self.app.socks5_servers.values())
        elif t is ResourceType.SECURITY_GROUP:
            objs = list(self.app.security_groups.values())
        elif t is ResourceType.SECURITY_GROUP_RULE:
            objs = list(self._secg(self._parent(cmd)).rules)
        elif t is ResourceType.CERT_KEY:
            objs = list(self.app.cert_keys.values())
        elif t is ResourceType.SERVER_SOCK:
            objs = [lb.server_sock for lb in self._server_socks_of(cmd) if lb.server_sock]
        elif t is ResourceType.CONNECTION:
            objs = self._connections_of(cmd)
        elif t is ResourceType.SESSION:
            objs = self._sessions_of(cmd)
        elif t is ResourceType.DNS_CACHE:
            objs = []
        else:
            raise UnsupportedError(f"list {t.value} is not supported")
        return objs

    def live_details(self, cmd: Command) -> list[Detail]:
        """This process's connections or sessions that ``cmd`` (a ``list`` or
        ``list-detail`` of a :data:`LIVE` type) is about, described; none is no error."""
        t = cmd.type
        objs = self._select_all(cmd)
        if isinstance(cmd.name, str):
            objs = [o for o in objs if _obj_name(t, o) == cmd.name]
        return [self._describe(t, o) for o in objs]

    def _list_live(self, cmd: Command, peers: Peers) -> Reply:
        """list / list-detail of connections or sessions, here and in the peers."""
        details = self.live_details(cmd) + peers.live_details(cmd)
        if not details and isinstance(cmd.name, str):
            raise NotFoundError(f"{cmd.type.value} {cmd.name} not found")
        if cmd.action is Action.LIST:
            return Array(tuple(String(str(d["name"])) for d in details))
        return Array(tuple(String(_detail_line(d)) for d in details))

    def _list(self, cmd: Command) -> Reply:
        t = cmd.type
        if t in (ResourceType.BYTES_IN, ResourceType.BYTES_OUT, ResourceType.ACCEPTED_CONN_COUNT):
            return self._counter(cmd)
        if t in LIVE and self.peers is not None:
            return self._list_live(cmd, self.peers)
        objs = self._select(cmd)
        if cmd.action is Action.LIST:
            return Array(tuple(String(_obj_name(t, o)) for o in objs))
        return Array(tuple(String(_detail_line(d)) for d in self._describe_all(cmd, objs)))

    def _describe_all(self, cmd: Command, objs: list[Any]) -> list[Detail]:
        """``objs`` (selected for ``cmd``) described; an event loop's sessions are
        those of every process (the peers have the same loops: the config is theirs)."""
        details = [self._describe(cmd.type, o) for o in objs]
        if cmd.type is ResourceType.EVENT_LOOP and self.peers is not None and details:
            group = self._parent(cmd)
            more = self.peers.loop_sessions()
            for d in details:
                n = d["sessions"]
                if isinstance(n, int):
                    d["sessions"] = n + more.get((group, str(d["name"])), 0)
        return details

    def _describe(self, t: ResourceType, o: Any) -> Detail:
        """A JSON-able description of one object (list-detail, HTTP)."""
        if t is ResourceType.EVENT_LOOP_GROUP:
            assert isinstance(o, EventLoopGroup)
            return {"name": o.name, "event-loops": [el.name for el in o.loops]}
        if t is ResourceType.EVENT_LOOP:
            assert isinstance(o, EventLoop)
            return {"name": o.name, "sessions": o.session_count}
        if t is ResourceType.UPSTREAM:
            assert isinstance(o, Upstream)
            return {
                "name": o.name,
                "server-groups": [{"name": h.group.name, "weight": h.weight} for h in o.groups],
            }
        if t is ResourceType.SERVER_GROUP:
            weight = None
            if not isinstance(o, ServerGroup):  # a GroupHandle inside an upstream
                weight, o = o.weight, o.group
            hc = o.health_config
            d: Detail = {
                "name": o.name,
                "timeout": hc.timeout,
                "period": hc.period,
                "up": hc.up,
                "down": hc.down,
                "method": o.method.value,
                "event-loop-group": o.event_loop_group.name if o.event_loop_group else None,
                "annotations": dict(o.annotations),
                "servers": [s.name for s in o.servers],
            }
            if weight is not None:
                d["weight"] = weight
            return d
        if t is ResourceType.SERVER:
            assert isinstance(o, Server)
            return {
                "name": o.name,
                "address": o.address_text,
                "weight": o.weight,
                "currently-up": o.healthy,
                "active-sessions": o.active,
                "connect-failures": o.connect_failures,
            }
        if t is ResourceType.TCP_LB:
            assert isinstance(o, TcpLB)
            return {
                "name": o.name,
                "address": format_address(*o.address),
                "upstream": o.upstream.name,
                "acceptor-elg": o.acceptor_elg.name,
                "event-loop-group": o.worker_elg.name,
                "in-buffer-size": o.in_buffer_size,
                "out-buffer-size": o.out_buffer_size,
                "timeout": o.timeout,
                "protocol": o.protocol,
                "security-group": o.security_group.name if o.security_group else None,
                "cert-key": [ck.name for ck in o.cert_keys],
                "max-connections": o.max_connections,
                "handshake-timeout": o.handshake_timeout,
                "half-closed-timeout": o.half_closed_timeout,
                **{p: getattr(o.l7_limits, f) for p, f in L7_LIMIT_PARAMS.items()},
                "sessions": len(o.sessions),
                "accepted": o.accepted,
                "refused": o.refused,
            }
        if t is ResourceType.SOCKS5_SERVER:
            assert isinstance(o, Socks5Server)
            return {
                "name": o.name,
                "address": format_address(*o.address),
                "upstream": o.upstream.name,
                "acceptor-elg": o.acceptor_elg.name,
                "event-loop-group": o.worker_elg.name,
                "in-buffer-size": o.in_buffer_size,
                "out-buffer-size": o.out_buffer_size,
                "timeout": o.timeout,
                "security-group": o.security_group.name if o.security_group else None,
                "allow-non-backend": o.allow_non_backend,
                "max-connections": o.max_connections,
                "handshake-timeout": o.handshake_timeout,
                "half-closed-timeout": o.half_closed_timeout,
                "sessions": len(o.sessions),
                "accepted": o.accepted,
                "refused": o.refused,
            }
        if t is ResourceType.SECURITY_GROUP:
            assert isinstance(o, SecurityGroup)
            return {
                "name": o.name,
                "default": "allow" if o.default_allow else "deny",
                "rules": [r.name for r in o.rules],
            }
        if t is ResourceType.SECURITY_GROUP_RULE:
            assert isinstance(o, SecurityGroupRule)
            return {
                "name": o.name,
                "network": str(o.network),
                "protocol": o.protocol,
                "port-range": f"{o.port_low},{o.port_high}",
                "default": "allow" if o.allow else "deny",
            }
        if t is ResourceType.CERT_KEY:
            assert isinstance(o, CertKey)
            return {
                "name": o.name,
                "cert": list(o.cert_paths),
                "key": o.key_path,
                "names": list(o.names),
                "not-after": o.not_after.isoformat(),
            }
        if t is ResourceType.SERVER_SOCK:
            return {
                "name": format_address(*o.address),
                "accepted": o.accepted,
                "event-loop": o.el.name if o.el else None,
            }
        if t is ResourceType.CONNECTION:
            name, conn, _ = o
            return {"name": name, "bytes-in": conn.bytes_in, "bytes-out": conn.bytes_out}
        if t is ResourceType.SESSION:
            assert isinstance(o, Session)
            return {
                "name": _session_name(o),
                "front": _conn_name(o.front, o.client),
                "back": _conn_name(o.back),
                "server": o.server.name if o.server is not None else None,
            }
        raise UnsupportedError(f"list-detail {t.value} is not supported")

    # -- configuration as commands ---------------------------------------------------------
    def config_lines(self) -> list[str]:
        """The current state as commands that rebuild it in a fresh process."""
        app = self.app
        out: list[Command] = []
        for gname, g in app.event_loop_groups.items():
            default_loop = Application.default_loop_name(gname)
            if gname not in DEFAULT_ELGS:
                out.append(Command(Action.ADD, ResourceType.EVENT_LOOP_GROUP, gname))
            names = [el.name for el in g.loops]
            for el_name in names:
                if el_name != default_loop:
                    out.append(_child(Action.ADD, ResourceType.EVENT_LOOP, el_name, g))
            if default_loop is not None and default_loop not in names:
                out.append(_child(Action.REMOVE, ResourceType.EVENT_LOOP, default_loop, g))
        for sg in app.server_groups.values():
            hc = sg.health_config
            params: dict[str, Any] = {
                "timeout": hc.timeout,
                "period": hc.period,
                "up": hc.up,
                "down": hc.down,
                "method": sg.method.value,
            }
            if sg.event_loop_group is not None:
                params["event-loop-group"] = sg.event_loop_group.name
            if sg.annotations:
                params["annotations"] = dict(sg.annotations)
            out.append(Command(Action.ADD, ResourceType.SERVER_GROUP, sg.name, params=params))
            for s in sg.servers:
                out.append(
                    _child(
                        Action.ADD,
                        ResourceType.SERVER,
                        s.name,
                        sg,
                        params={"address": Address(s.host, s.port), "weight": s.weight},
                    )
                )
        for u in app.upstreams.values():
            out.append(Command(Action.ADD, ResourceType.UPSTREAM, u.name))
            for h in u.groups:
                out.append(
                    _child(
                        Action.ADD,
                        ResourceType.SERVER_GROUP,
                        h.group.name,
                        u,
                        params={"weight": h.weight},
                    )
                )
        for secg in app.security_groups.values():
            out.append(
                Command(
                    Action.ADD,
                    ResourceType.SECURITY_GROUP,
                    secg.name,
                    params={"default": "allow" if secg.default_allow else "deny"},
                )
            )
            for r in secg.rules:
                out.append(
                    Command(
                        Action.ADD,
                        ResourceType.SECURITY_GROUP_RULE,
                        r.name,
                        parents=(Ref(ResourceType.SECURITY_GROUP, secg.name),),
                        params={
                            "network": r.network,
                            "protocol": r.protocol,
                            "port-range": PortRange(r.port_low, r.port_high),
                            "default": "allow" if r.allow else "deny",
                        },
                    )
                )
        for ck in app.cert_keys.values():
            out.append(
                Command(
                    Action.ADD,
                    ResourceType.CERT_KEY,
                    ck.name,
                    params={"cert": tuple(ck.cert_paths), "key": ck.key_path},
                )
            )
        for lb in app.tcp_lbs.values():
            host, port = lb.address
            params = {
                "address": Address(host, port),
                "upstream": lb.upstream.name,
                "acceptor-elg": lb.acceptor_elg.name,
                "event-loop-group": lb.worker_elg.name,
                "in-buffer-size": lb.in_buffer_size,
                "out-buffer-size": lb.out_buffer_size,
                "timeout": lb.timeout,
                "protocol": lb.protocol,
            }
            if lb.security_group is not None:
                params["security-group"] = lb.security_group.name
            if lb.cert_keys:
                params["cert-key"] = tuple(ck.name for ck in lb.cert_keys)
            params.update(_listener_limits(lb))
            defaults = L7Limits()
            for p, f in L7_LIMIT_PARAMS.items():
                if getattr(lb.l7_limits, f) != getattr(defaults, f):
                    params[p] = getattr(lb.l7_limits, f)
            out.append(Command(Action.ADD, ResourceType.TCP_LB, lb.name, params=params))
        for s5 in app.socks5_servers.values():
            host, port = s5.address
            params = {
                "address": Address(host, port),
                "upstream": s5.upstream.name,
                "acceptor-elg": s5.acceptor_elg.name,
                "event-loop-group": s5.worker_elg.name,
                "in-buffer-size": s5.in_buffer_size,
                "out-buffer-size": s5.out_buffer_size,
                "timeout": s5.timeout,
            }
            if s5.security_group is not None:
                params["security-group"] = s5.security_group.name
            params.update(_listener_limits(s5))
            flags = frozenset({"allow-non-backend" if s5.allow_non_backend else "deny-non-backend"})
            out.append(
                Command(Action.ADD, ResourceType.SOCKS5_SERVER, s5.name, params=params, flags=flags)
            )
        return [format_command(c) for c in out]

    def load_lines(self, lines: Iterable[tuple[int, str]], source: str) -> None:
        """Run config lines in order; stop at the first failure.

        Every line is parsed before anything runs, so a syntax error applies nothing.

        Raises:
            CommandError: naming the file and line that failed.
        """
        parsed: list[tuple[int, Command]] = []
        for number, text in lines:
            try:
                cmd = parse(text)
            except CommandError as exc:
                raise CommandError(f"{source}:{number}: {exc.message}") from exc
            if isinstance(cmd, SystemCommand):
                raise CommandError(f"{source}:{number}: System commands are not allowed in a file")
            parsed.append((number, cmd))
        with self.app.lock:
            for number, cmd in parsed:
                try:
                    self._run(cmd)
                except CommandError as exc:
                    raise type(exc)(
                        f"{source}:{number}: {exc.message} (lines before it were applied)"
                    ) from exc

    # -- System: ----------------------------------------------------------------------
    def _system(self, cmd: SystemCommand, origin: Origin) -> Reply:
        op = cmd.op
        if op is SystemOp.MAN:
            return String(man(cmd.topic, cmd.topic_action))
        remote = origin in (Origin.RESP, Origin.HTTP)
        if origin is Origin.FILE:
            raise ForbiddenError("System commands are not allowed in a config file")
        if remote and (cmd.privileged or not self.allow_system_in_non_stdio):
            why = (
                "it touches files or the process: use the console"
                if cmd.privileged
                else "start vproxy with allowSystemCommandInNonStdIOController to allow it"
            )
            raise ForbiddenError(f"System command refused over {origin.value}: {why}")
        if op is SystemOp.LIST_CONFIG:
            return Array(tuple(String(line) for line in self.config_lines()))
        if op is SystemOp.SAVE:
            assert cmd.path is not None
            self.save(Path(cmd.path))
            return OK
        if op is SystemOp.LOAD:
            assert cmd.path is not None
            try:
                lines = read_config(Path(cmd.path))
            except ConfigFileError as exc:
                raise CommandError(str(exc)) from exc
            self.load_lines(((ln.number, ln.text) for ln in lines), cmd.path)
            return OK
        if op is SystemOp.SHUTDOWN:
            self.app.shutdown_requested.set()
            return OK
        if op is SystemOp.CONTROLLER:
            return self._controller(cmd)
        raise UnsupportedError(f"System command {op.value} is not supported")

    def save(self, path: Path) -> None:
        """Write ``list config`` to ``path`` atomically."""
        text = "".join(line + "\n" for line in self.config_lines())
        try:
            save_atomic(path, text)
        except OSError as exc:
            raise CommandError(f"cannot save to {path}: {exc.strerror or exc}") from exc

    def _controller(self, cmd: SystemCommand) -> Reply:
        kind = cmd.controller
        assert kind is not None
        table = (
            self.app.resp_controllers
            if kind.value == "resp-controller"
            else self.app.http_controllers
        )
        a = cmd.action
        if a is Action.LIST:
            return Array(tuple(String(n) for n in table))
        if a is Action.LIST_DETAIL:
            return Array(
                tuple(
                    String(f"{n} -> {kind.value} {format_address(*c.address)}")
                    for n, c in table.items()
                )
            )
        name = cmd.name
        if name is None:
            raise CommandError(f"{a.value if a else '?'} {kind.value} needs a name")
        if a is Action.REMOVE or a is Action.FORCE_REMOVE:
            c = table.pop(name, None)
            if c is None:
                raise NotFoundError(f"{kind.value} {name} not found")
            c.stop()
            return OK
        if a is Action.ADD:
            if name in table:
                raise ConflictError(f"{kind.value} {name} already exists")
            addr = cmd.params.get("address")
            assert isinstance(addr, Address)
            secret = cmd.params.get("password", cmd.params.get("token"))
            try:
                c = self.controller_factory(
                    kind.value,
                    name,
                    (addr.host, addr.port),
                    str(secret) if secret is not None else None,
                    self,
                )
            except OSError as exc:
                raise ConflictError(
                    f"cannot listen on {_addr(addr)}: {exc.strerror or exc}"
                ) from exc
            table[name] = c
            return OK
        raise UnsupportedError(f"{a} {kind.value} is not supported")


# -- helpers ----------------------------------------------------------------------------
ControllerFactory = Callable[[str, str, tuple[str, int], "str | None", Executor], Any]


def default_controller_factory(
    kind: str, name: str, address: tuple[str, int], secret: str | None, executor: Executor
) -> Any:
    """Create and start a RESP or HTTP controller on the control loop."""
    el = executor.app.control_el
    if kind == "resp-controller":
        from vproxy.control.resp import RespController

        c: Any = RespController(name, address, secret, executor, el)
    else:
        from vproxy.control.http import HttpController

        c = HttpController(name, address, executor, el, token=secret)
    c.start()
    return c


_UNSUPPORTED: dict[ResourceType, str] = {
    ResourceType.SMART_GROUP_DELEGATE: "service discovery is not built yet",
    ResourceType.SMART_NODE_DELEGATE: "service discovery is not built yet",
}


def _error(exc: CommandError) -> ErrorReply:
    return ErrorReply(exc.message, http_status=exc.http_status)


def _safe_line(cmd: Command | SystemCommand) -> str:
    try:
        line = format_command(cmd)
    except Exception:
        return repr(cmd.__class__.__name__)
    # never log secrets
    return re.sub(r"(password|token)\s+\S+", r"\1 ***", line)


def _int(cmd: Command, key: str, default: int) -> int:
    v = cmd.params.get(key, default)
    assert isinstance(v, int)
    return v


def _opt_int(cmd: Command, key: str) -> int | None:
    v = cmd.params.get(key)
    return v if isinstance(v, int) else None


def _str(cmd: Command, key: str, default: str) -> str:
    v = cmd.params.get(key, default)
    return str(v.value if isinstance(v, enum.Enum) else v)


def _l7_limits(cmd: Command, base: L7Limits) -> L7Limits | None:
    """``base`` with the L7 limit parameters of ``cmd`` applied (None: none given)."""
    changes = {f: _int(cmd, p, 0) for p, f in L7_LIMIT_PARAMS.items() if p in cmd.params}
    return replace(base, **changes) if changes else None


def _listener_limits(lb: TcpLB | Socks5Server) -> dict[str, Any]:
    """``max-connections`` and ``handshake-timeout`` for ``list config``, when not default."""
    out: dict[str, Any] = {}
    if lb.max_connections != DEFAULT_MAX_CONNECTIONS:
        out["max-connections"] = lb.max_connections
    if lb.handshake_timeout != DEFAULT_HANDSHAKE_TIMEOUT_MS:
        out["handshake-timeout"] = lb.handshake_timeout
    if lb.half_closed_timeout is not None:
        out["half-closed-timeout"] = lb.half_closed_timeout
    return out


def _opt_str(cmd: Command, key: str) -> str | None:
    return _str(cmd, key, "") if key in cmd.params else None


def _annotations(cmd: Command) -> dict[str, str]:
    v = cmd.params.get("annotations")
    if v is None:
        return {}
    if isinstance(v, str):
        v = json.loads(v)
    assert isinstance(v, dict)
    return {str(k): str(x) for k, x in v.items()}


def _health(cmd: Command, base: HealthCheckConfig | None) -> HealthCheckConfig:
    b = base or HealthCheckConfig()
    try:
        return HealthCheckConfig(
            timeout=_int(cmd, "timeout", b.timeout),
            period=_int(cmd, "period", b.period),
            up=_int(cmd, "up", b.up),
            down=_int(cmd, "down", b.down),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc


def _child(
    action: Action,
    t: ResourceType,
    name: str,
    parent: Any,
    params: dict[str, Any] | None = None,
) -> Command:
    from vproxy.control.command import Ref

    ptype = {
        EventLoopGroup: ResourceType.EVENT_LOOP_GROUP,
        ServerGroup: ResourceType.SERVER_GROUP,
        Upstream: ResourceType.UPSTREAM,
    }[type(parent)]
    return Command(action, t, name, parents=(Ref(ptype, parent.name),), params=params or {})


def _strip_first(cmd: Command) -> Command:
    return Command(cmd.action, cmd.type, cmd.name, parents=cmd.parents[1:])


def _matches(pattern: str | NamePattern | None, name: str) -> bool:
    if isinstance(pattern, NamePattern):
        return pattern.matches(name)
    return pattern == name


def _kind(x: TcpLB | Socks5Server) -> str:
    return f"{'socks5-server' if isinstance(x, Socks5Server) else 'tcp-lb'} {x.name}"


def _session_name(s: AnySession) -> str:
    if isinstance(s, L7Session):  # its requests go to many backend connections
        return f"{_conn_name(s.front, s.client)}->*"
    return f"{_conn_name(s.front, s.client)}->{_conn_name(s.back)}"


def _obj_name(t: ResourceType, o: Any) -> str:
    if t is ResourceType.CONNECTION:
        return str(o[0])
    if t is ResourceType.SESSION:
        return _session_name(o)
    if t is ResourceType.SERVER_SOCK:
        return format_address(*o.address)
    if t is ResourceType.SERVER_GROUP and not isinstance(o, ServerGroup):
        return str(o.group.name)
    return str(o.name)


def _detail_line(d: Detail) -> str:
    parts = [str(d["name"]), "->"]
    for k, v in d.items():
        if k == "name":
            continue
        if isinstance(v, list):
            v = (
                ",".join(
                    str(x if not isinstance(x, dict) else f"{x['name']}:{x['weight']}") for x in v
                )
                or "(none)"
            )
        elif isinstance(v, dict):
            v = json.dumps(v, separators=(",", ":"))
        elif isinstance(v, bool):
            v = "true" if v else "false"
        parts.append(f"{k} {v}")
    return " ".join(parts)


def _abort(sess: Any) -> None:
    loop = sess._loop
    if not loop.is_closed():
        loop.call_soon_threadsafe(sess.abort)


def _handlers() -> dict[tuple[ResourceType, Action], Callable[[Executor, Command], Reply]]:
    R, A = ResourceType, Action
    E = Executor
    h: dict[tuple[ResourceType, Action], Callable[[Executor, Command], Reply]] = {
        (R.EVENT_LOOP_GROUP, A.ADD): E._add_elg,
        (R.EVENT_LOOP_GROUP, A.REMOVE): E._remove_elg,
        (R.EVENT_LOOP_GROUP, A.FORCE_REMOVE): E._remove_elg,
        (R.EVENT_LOOP, A.ADD): E._add_el,
        (R.EVENT_LOOP, A.REMOVE): E._remove_el,
        (R.EVENT_LOOP, A.FORCE_REMOVE): E._remove_el,
        (R.UPSTREAM, A.ADD): E._add_ups,
        (R.UPSTREAM, A.REMOVE): E._remove_ups,
        (R.UPSTREAM, A.FORCE_REMOVE): E._remove_ups,
        (R.SERVER_GROUP, A.ADD): E._add_sg,
        (R.SERVER_GROUP, A.UPDATE): E._update_sg,
        (R.SERVER_GROUP, A.REMOVE): E._remove_sg,
        (R.SERVER_GROUP, A.FORCE_REMOVE): E._remove_sg,
        (R.SERVER, A.ADD): E._add_svr,
        (R.SERVER, A.UPDATE): E._update_svr,
        (R.SERVER, A.REMOVE): E._remove_svr,
        (R.SERVER, A.FORCE_REMOVE): E._remove_svr,
        (R.TCP_LB, A.ADD): E._add_lb,
        (R.TCP_LB, A.UPDATE): E._update_lb,
        (R.TCP_LB, A.REMOVE): E._remove_lb,
        (R.TCP_LB, A.FORCE_REMOVE): E._remove_lb,
        (R.SOCKS5_SERVER, A.ADD): E._add_s5,
        (R.SOCKS5_SERVER, A.UPDATE): E._update_s5,
        (R.SOCKS5_SERVER, A.REMOVE): E._remove_s5,
        (R.SOCKS5_SERVER, A.FORCE_REMOVE): E._remove_s5,
        (R.SECURITY_GROUP, A.ADD): E._add_secg,
        (R.SECURITY_GROUP, A.UPDATE): E._update_secg,
        (R.SECURITY_GROUP, A.REMOVE): E._remove_secg,
        (R.SECURITY_GROUP, A.FORCE_REMOVE): E._remove_secg,
        (R.SECURITY_GROUP_RULE, A.ADD): E._add_secgr,
        (R.SECURITY_GROUP_RULE, A.REMOVE): E._remove_secgr,
        (R.SECURITY_GROUP_RULE, A.FORCE_REMOVE): E._remove_secgr,
        (R.CERT_KEY, A.ADD): E._add_ck,
        (R.CERT_KEY, A.REMOVE): E._remove_ck,
        (R.CERT_KEY, A.FORCE_REMOVE): E._remove_ck,
        (R.CONNECTION, A.FORCE_REMOVE): E._force_remove_live,
        (R.SESSION, A.FORCE_REMOVE): E._force_remove_live,
        (R.DNS_CACHE, A.FORCE_REMOVE): E._force_remove_dns,
    }
    return h


_HANDLERS = _handlers()
