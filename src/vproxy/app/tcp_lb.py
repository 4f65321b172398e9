"""The TCP load balancer (SPEC §1 "TcpLB").

Owns: one listener (``address``) served by an acceptor event-loop group, whose
connections are relayed by worker loops to servers of an upstream; its options
(buffer sizes, idle timeout, protocol, upstream, loop groups) which may all change
while it runs, except the address; handing each ended session to the access log
when one is set. Removing (stopping) a tcp-lb stops accepting;
sessions already running finish by themselves.

Must not: parse commands; the control plane calls this API.
"""

from __future__ import annotations

import _socket
import asyncio
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import fields
from typing import Any, Final, cast

from vproxy.app.accept_gate import DEFAULT_MAX_CONNECTIONS, AcceptGate, check_max_connections
from vproxy.app.access_log import AcceptClock, AccessLog
from vproxy.app.l7 import UnknownProtocol, make_mode
from vproxy.app.l7.base import L7Limits, L7Mode, L7Session, start_l7
from vproxy.app.tls_frontend import serve_tls
from vproxy.component.cert_key import CertKey, TlsServerConfig
from vproxy.component.health_check import HealthCheckConfig
from vproxy.component.proxy import Proxy
from vproxy.component.security_group import SecurityGroup
from vproxy.component.server_group import Method, ServerGroup
from vproxy.component.upstream import Upstream
from vproxy.net.connection import Session
from vproxy.net.event_loop import EventLoopError, EventLoopGroup
from vproxy.net.server_sock import (
    ServerSock,
    as_socket,
    bind_listener,
    format_address,
    parse_address,
)

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_HANDSHAKE_TIMEOUT_MS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT_MS",
    "L7_LIMIT_RANGES",
    "AnySession",
    "TcpLB",
    "TcpLBError",
    "start_tcp_lb",
]

AnySession = Session | L7Session
"""A live session of a tcp-lb: an L4 relay, or one client connection of an L7 mode."""

_log = logging.getLogger("vproxy.app")

DEFAULT_BUFFER_SIZE: Final = 16384
DEFAULT_TIMEOUT_MS: Final = 900_000
DEFAULT_HANDSHAKE_TIMEOUT_MS: Final = 10_000
MIN_BUFFER_SIZE: Final = 256
MAX_BUFFER_SIZE: Final = 16 * 1024 * 1024
MAX_HANDSHAKE_TIMEOUT_MS: Final = 3_600_000

L7_LIMIT_RANGES: Final[dict[str, tuple[int, int]]] = {
    "head_timeout": (1, 3_600_000),
    "max_head_size": (1024, 1024 * 1024),
    "max_headers": (1, 10_000),
    "max_concurrent_streams": (1, 10_000),
    "max_pipelined": (1, 10_000),
}
"""Accepted values of each :class:`L7Limits` field (the command grammar's ranges)."""


class TcpLBError(ValueError):
    """A tcp-lb option was refused."""


def _check_buffer(name: str, value: int) -> int:
    if not isinstance(value, int) or not MIN_BUFFER_SIZE <= value <= MAX_BUFFER_SIZE:
        raise TcpLBError(f"{name} must be {MIN_BUFFER_SIZE}..{MAX_BUFFER_SIZE}, got {value!r}")
    return value


def _check_handshake_timeout(value: int) -> int:
    if not isinstance(value, int) or not 0 < value <= MAX_HANDSHAKE_TIMEOUT_MS:
        raise TcpLBError(
            f"handshake-timeout must be 1..{MAX_HANDSHAKE_TIMEOUT_MS} ms, got {value!r}"
        )
    return value


def _check_l7_limits(limits: L7Limits) -> L7Limits:
    if not isinstance(limits, L7Limits):
        raise TcpLBError(f"l7 limits must be an L7Limits, got {limits!r}")
    for f in fields(limits):
        value = getattr(limits, f.name)
        low, high = L7_LIMIT_RANGES[f.name]
        if not isinstance(value, int) or not low <= value <= high:
            raise TcpLBError(f"{f.name} must be {low}..{high}, got {value!r}")
    return limits


def _check_max_connections(value: int) -> int:
    try:
        return check_max_connections(value)
    except ValueError as exc:
        raise TcpLBError(str(exc)) from None


class TcpLB:
    """A listener that load-balances each connection over an upstream."""

    def __init__(
        self,
        name: str,
        address: tuple[str, int] | str,
        upstream: Upstream,
        *,
        acceptor_elg: EventLoopGroup,
        worker_elg: EventLoopGroup,
        in_buffer_size: int = DEFAULT_BUFFER_SIZE,
        out_buffer_size: int = DEFAULT_BUFFER_SIZE,
        timeout: int = DEFAULT_TIMEOUT_MS,
        protocol: str = "tcp",
        security_group: SecurityGroup | None = None,
        cert_keys: Sequence[CertKey] = (),
        handshake_timeout: int = DEFAULT_HANDSHAKE_TIMEOUT_MS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        l7_limits: L7Limits | None = None,
        half_closed_timeout: int | None = None,
    ) -> None:
        self.name = name
        # ms a session may stay idle once one direction ended; None: min(timeout, 60 s)
        self.half_closed_timeout = (
            self._check_timeout(half_closed_timeout, "half-closed-timeout")
            if half_closed_timeout is not None
            else None
        )
        self.handshake_timeout = _check_handshake_timeout(handshake_timeout)
        self.max_connections = _check_max_connections(max_connections)
        self.gate = AcceptGate(f"tcp-lb {name}", self._live)
        self.tls: TlsServerConfig | None = None
        self.tls_tasks: set[asyncio.Task[None]] = set()  # handshakes and connects in flight
        self.cert_keys: tuple[CertKey, ...] = ()
        self.protocol = protocol
        self.mode: L7Mode | None = self._make_mode(protocol)
        self._set_cert_keys(cert_keys, self.mode)
        self.bind_address = parse_address(address) if isinstance(address, str) else address
        self.upstream = upstream
        self.acceptor_elg = acceptor_elg
        self.worker_elg = worker_elg
        self.in_buffer_size = _check_buffer("in-buffer-size", in_buffer_size)
        self.out_buffer_size = _check_buffer("out-buffer-size", out_buffer_size)
        self.timeout = self._check_timeout(timeout)
        self.security_group: SecurityGroup | None = security_group
        self.denied = 0
        self.proxy = Proxy(self)
        self.proxy.on_session_closed = self._count_closed
        self.server_sock: ServerSock | None = None
        self.l7_sessions: set[L7Session] = set()
        self.l7_limits = _check_l7_limits(l7_limits) if l7_limits is not None else L7Limits()
        self.l7_refused = 0  # requests refused as malformed (4xx from the proxy)
        # L7 responses by status class: [no status, 1xx, 2xx, 3xx, 4xx, 5xx].
        self.http_responses = [0, 0, 0, 0, 0, 0]
        # Bytes of ended sessions; live ones are summed at read time (no hot-path cost).
        self._stats_lock = threading.Lock()
        self.closed_bytes_from_client = 0
        self.closed_bytes_from_server = 0
        # Access log (off unless set): accept times by client address, for durations.
        self.access_log: AccessLog | None = None
        self._accept_clock = AcceptClock()

    def _live(self) -> int:
        return len(self.proxy.sessions) + len(self.l7_sessions)

    def _on_accept(self, sock: _socket.socket, addr: Any) -> None:
        secg = self.security_group
        if secg is not None and not secg.allowed(addr[0], "TCP", self.address[1]):
            self.denied += 1
            sock.close()  # before reading a single byte, and no backend connection
            return
        if not self.gate.admit(sock, self.max_connections):
            return  # closed: over max-connections, before any backend connect
        if self.access_log is not None:
            self._accept_clock.accepted(addr)
        try:
            el = self.worker_elg.next()
        except EventLoopError:
            _log.error("%s: no worker event loop; closing accepted connection", self.name)
            sock.close()
            return
        tls = self.tls
        mode = self.mode
        # Each start below registers its session before returning: until then the
        # gate counts the socket as in flight.
        if mode is not None:
            if el.in_loop_thread:
                start_l7(self, mode, el, as_socket(sock), addr)
            else:
                self.gate.hand_off(el, start_l7, self, mode, el, as_socket(sock), addr)
        elif tls is not None:
            self.gate.hand_off(el, serve_tls, self, tls, el, as_socket(sock), addr)
        elif el.in_loop_thread:
            self.proxy._start(el, sock, addr)
        else:
            self.gate.hand_off(el, self.proxy._start, el, sock, addr)

    @staticmethod
    def _make_mode(protocol: str) -> L7Mode | None:
        try:
            return make_mode(protocol)
        except UnknownProtocol as exc:
            raise TcpLBError(str(exc)) from None

    def _set_cert_keys(
        self, cert_keys: Sequence[CertKey], mode: L7Mode | None, handshake_timeout: int = 0
    ) -> None:
        """Terminate TLS with these cert-keys (chosen by SNI); none: plain TCP.

        ALPN offers what ``mode`` speaks (nothing for the L4 relay); the handshake
        deadline is ``handshake_timeout`` ms (0: the current one).
        """
        cks = tuple(cert_keys)
        alpn = mode.alpn if mode is not None else ()
        hs = handshake_timeout or self.handshake_timeout
        try:
            tls = TlsServerConfig(cks, alpn=alpn, handshake_timeout=hs / 1000) if cks else None
        except ValueError as exc:
            raise TcpLBError(str(exc)) from exc
        self.cert_keys = cks
        self.tls = tls

    def count_status(self, status: int) -> None:
        """Count one L7 response by status class (0: the client got no status)."""
        self.http_responses[status // 100 if 100 <= status <= 599 else 0] += 1

    def l7_closed(self, session: L7Session) -> None:
        """An L7 client connection ended (its mode calls this through the session)."""
        self.l7_sessions.discard(session)
        session.el.session_done(session)
        with self._stats_lock:
            self.closed_bytes_from_client += session.front.bytes_in
            self.closed_bytes_from_server += session.back.bytes_in

    def _count_closed(self, session: Session) -> None:
        with self._stats_lock:
            self.closed_bytes_from_client += session.front.bytes_in
            self.closed_bytes_from_server += session.back.bytes_in
        log = self.access_log
        if log is not None:
            duration, _ = self._accept_clock.pop(session.client)
            log.session_ended(
                "tcp-lb",
                self.name,
                session.client,
                session.server,
                None,
                session.front.bytes_in,
                session.back.bytes_in,
                duration,
            )

    @property
    def bytes_from_clients(self) -> int:
        """Bytes read from clients, ended and live sessions."""
        live = sum(s.front.bytes_in for s in self.sessions)
        return self.closed_bytes_from_client + live

    @property
    def bytes_from_servers(self) -> int:
        """Bytes read from backends, ended and live sessions."""
        live = sum(s.back.bytes_in for s in self.sessions)
        return self.closed_bytes_from_server + live

    def __repr__(self) -> str:
        return f"TcpLB({self.name!r}, {format_address(*self.address)})"

    @staticmethod
    def _check_timeout(timeout: int, name: str = "timeout") -> int:
        if not isinstance(timeout, int) or not 0 < timeout <= 86_400_000:
            raise TcpLBError(f"{name} must be 1..86400000 ms, got {timeout!r}")
        return timeout

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (with the real port once started on port 0)."""
        if self.server_sock is not None:
            return self.server_sock.address
        return self.bind_address

    @property
    def sessions(self) -> list[AnySession]:
        """The live sessions (a snapshot): L4 relays and L7 client connections."""
        return [*self.proxy.sessions, *self.l7_sessions]

    @property
    def accepted(self) -> int:
        """Connections accepted so far."""
        return self.server_sock.accepted if self.server_sock is not None else 0

    def start(self) -> TcpLB:
        """Bind and start accepting. Raises OSError when the address is in use."""
        if self.server_sock is not None:
            raise TcpLBError(f"tcp-lb {self.name} is already started")
        sock = bind_listener(*self.bind_address)
        self.server_sock = ServerSock(self.name, sock, self.acceptor_elg, self._on_accept)
        try:
            self.server_sock.start()
        except BaseException:
            self.server_sock.close()
            self.server_sock = None
            raise
        _log.info("tcp-lb %s listening on %s", self.name, format_address(*self.address))
        return self

    def update(
        self,
        *,
        upstream: Upstream | None = None,
        in_buffer_size: int | None = None,
        out_buffer_size: int | None = None,
        timeout: int | None = None,
        worker_elg: EventLoopGroup | None = None,
        acceptor_elg: EventLoopGroup | None = None,
        protocol: str | None = None,
        security_group: SecurityGroup | bool | None = False,
        cert_keys: Sequence[CertKey] | None = None,
        max_connections: int | None = None,
        handshake_timeout: int | None = None,
        l7_limits: L7Limits | None = None,
        half_closed_timeout: int | None = None,
    ) -> None:
        """Change options; new sessions use them (all-or-nothing).

        ``security_group=None`` removes the group; the default ``False`` keeps it.
        A lower ``max_connections`` closes nothing: it refuses new connections
        until the live ones are under it. ``l7_limits`` replaces the whole set
        (build it with ``dataclasses.replace(lb.l7_limits, ...)``).
        """
        ib = _check_buffer("in-buffer-size", in_buffer_size) if in_buffer_size else None
        ob = _check_buffer("out-buffer-size", out_buffer_size) if out_buffer_size else None
        to = self._check_timeout(timeout) if timeout is not None else None
        mc = _check_max_connections(max_connections) if max_connections is not None else None
        hs = _check_handshake_timeout(handshake_timeout) if handshake_timeout is not None else None
        limits = _check_l7_limits(l7_limits) if l7_limits is not None else None
        hc = (
            self._check_timeout(half_closed_timeout, "half-closed-timeout")
            if half_closed_timeout is not None
            else None
        )
        new_mode = protocol is not None and protocol != self.protocol
        mode = self._make_mode(protocol) if protocol is not None and new_mode else self.mode
        if cert_keys is not None or new_mode or (hs is not None and self.cert_keys):
            self._set_cert_keys(self.cert_keys if cert_keys is None else cert_keys, mode, hs or 0)
        if protocol is not None and new_mode:
            self.protocol = protocol
            self.mode = mode
        if acceptor_elg is not None and acceptor_elg is not self.acceptor_elg:
            acceptor_elg.next()  # raises when the group has no loop: nothing changed yet
            self.acceptor_elg = acceptor_elg
            ss = self.server_sock
            if ss is not None and ss.el is not None:
                # Same path as when its loop is removed: re-register on the new group.
                old = ss.el
                ss.acceptor_elg = acceptor_elg
                ss.on_event_loop_removed(old)
                old.detach(ss)
        if upstream is not None:
            self.upstream = upstream
        if ib is not None:
            self.in_buffer_size = ib
        if ob is not None:
            self.out_buffer_size = ob
        if to is not None:
            self.timeout = to
        if mc is not None:
            self.max_connections = mc
        if hc is not None:
            self.half_closed_timeout = hc
        if hs is not None:
            self.handshake_timeout = hs
        if limits is not None:
            self.l7_limits = limits  # frozen: modes read it once per new connection
        if worker_elg is not None:
            self.worker_elg = worker_elg
        if security_group is not False:
            self.security_group = cast(SecurityGroup | None, security_group)

    @property
    def refused(self) -> int:
        """Connections closed at accept because ``max_connections`` were live."""
        return self.gate.refused

    def stop(self, close_sessions: bool = False) -> None:
        """Stop accepting; running sessions finish unless ``close_sessions``."""
        if self.server_sock is not None:
            self.server_sock.close()
        self.gate.share(None)  # (workers N) no longer counted with the other processes
        if close_sessions:
            self.proxy.close_sessions()
            if self.mode is not None:
                self.mode.close()
            for s in list(self.l7_sessions):
                if s.el.in_loop_thread:
                    s.abort()
                elif not s._loop.is_closed():
                    try:
                        s._loop.call_soon_threadsafe(s.abort)
                    except RuntimeError:
                        pass  # closed meanwhile


def start_tcp_lb(
    address: tuple[str, int] | str,
    backends: Sequence[tuple[str, int] | str],
    *,
    name: str = "lb0",
    method: Method | str = Method.WRR,
    weights: Iterable[int] | None = None,
    health_check: HealthCheckConfig | None = None,
    acceptor_elg: EventLoopGroup | None = None,
    worker_elg: EventLoopGroup | None = None,
    in_buffer_size: int = DEFAULT_BUFFER_SIZE,
    out_buffer_size: int = DEFAULT_BUFFER_SIZE,
    timeout: int = DEFAULT_TIMEOUT_MS,
    protocol: str = "tcp",
) -> TcpLB:
    """Start a tcp-lb over ``backends`` in one call (the library entry point).

    Creates what is not given: one acceptor loop, one worker loop, a server group
    (health-checked on the worker group) and an upstream holding it.
    """
    aelg = acceptor_elg or EventLoopGroup("acceptor", loops=1)
    welg = worker_elg or EventLoopGroup("worker", loops=1)
    group = ServerGroup(
        f"{name}-servers",
        method=method,
        health_check=health_check or HealthCheckConfig(timeout=1000, period=2000, up=1, down=2),
        event_loop_group=welg,
    )
    ws = list(weights) if weights is not None else [10] * len(backends)
    for i, (backend, w) in enumerate(zip(backends, ws, strict=True)):
        addr = parse_address(backend) if isinstance(backend, str) else backend
        group.add(f"backend{i}", addr, weight=w)
    upstream = Upstream(f"{name}-upstream")
    upstream.add(group, weight=10)
    return TcpLB(
        name,
        address,
        upstream,
        acceptor_elg=aelg,
        worker_elg=welg,
        in_buffer_size=in_buffer_size,
        out_buffer_size=out_buffer_size,
        timeout=timeout,
        protocol=protocol,
    ).start()
