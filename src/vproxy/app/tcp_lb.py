"""The TCP load balancer (SPEC §1 "TcpLB").

Owns: one listener (``address``) served by an acceptor event-loop group, whose
connections are relayed by worker loops to servers of an upstream; its options
(buffer sizes, idle timeout, protocol, upstream, loop groups) which may all change
while it runs, except the address; handing each ended session to the access log
when one is set. Removing (stopping) a tcp-lb stops accepting;
sessions already running finish by themselves. What it shares with the
socks5-server (the common options and their checks, binding, the checks at
accept) is :class:`vproxy.app.listener.Listener`'s; here is what is its own: the L7
modes, TLS and the L4 relay's proxy.

Must not: parse commands; the control plane calls this API.
"""

from __future__ import annotations

import _socket
import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import fields
from typing import Any, Final

from vproxy.app.accept_gate import DEFAULT_MAX_CONNECTIONS
from vproxy.app.l7 import UnknownProtocol, make_mode
from vproxy.app.l7.base import L7Limits, L7Mode, L7Session, start_l7
from vproxy.app.listener import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_HANDSHAKE_TIMEOUT_MS,
    DEFAULT_TIMEOUT_MS,
    Listener,
    ListenerError,
)
from vproxy.app.tls_frontend import serve_tls
from vproxy.component.cert_key import CertKey, TlsServerConfig
from vproxy.component.health_check import HealthCheckConfig
from vproxy.component.proxy import Proxy
from vproxy.component.security_group import SecurityGroup
from vproxy.component.server_group import Method, ServerGroup
from vproxy.component.upstream import Upstream
from vproxy.net.connection import Session
from vproxy.net.event_loop import EventLoop, EventLoopGroup
from vproxy.net.server_sock import as_socket, parse_address

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


L7_LIMIT_RANGES: Final[dict[str, tuple[int, int]]] = {
    "head_timeout": (1, 3_600_000),
    "max_head_size": (1024, 1024 * 1024),
    "max_headers": (1, 10_000),
    "max_concurrent_streams": (1, 10_000),
    "max_pipelined": (1, 10_000),
}
"""Accepted values of each :class:`L7Limits` field (the command grammar's ranges)."""


class TcpLBError(ListenerError):
    """A tcp-lb option was refused."""


def _check_l7_limits(limits: L7Limits) -> L7Limits:
    if not isinstance(limits, L7Limits):
        raise TcpLBError(f"l7 limits must be an L7Limits, got {limits!r}")
    for f in fields(limits):
        value = getattr(limits, f.name)
        low, high = L7_LIMIT_RANGES[f.name]
        if not isinstance(value, int) or not low <= value <= high:
            raise TcpLBError(f"{f.name} must be {low}..{high}, got {value!r}")
    return limits


class TcpLB(Listener):
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
        super().__init__(
            "tcp-lb",
            name,
            address,
            upstream,
            acceptor_elg=acceptor_elg,
            worker_elg=worker_elg,
            in_buffer_size=in_buffer_size,
            out_buffer_size=out_buffer_size,
            timeout=timeout,
            security_group=security_group,
            handshake_timeout=handshake_timeout,
            max_connections=max_connections,
            half_closed_timeout=half_closed_timeout,
        )
        self.tls: TlsServerConfig | None = None
        self.tls_tasks: set[asyncio.Task[None]] = set()  # handshakes and connects in flight
        self.cert_keys: tuple[CertKey, ...] = ()
        self.protocol = protocol
        self.mode: L7Mode | None = self._make_mode(protocol)
        self._set_cert_keys(cert_keys, self.mode)
        self.proxy = Proxy(self)
        self.proxy.on_session_closed = self._session_closed
        self.l7_sessions: set[L7Session] = set()
        self.l7_limits = _check_l7_limits(l7_limits) if l7_limits is not None else L7Limits()
        self.l7_refused = 0  # requests refused as malformed (4xx from the proxy)
        # L7 responses by status class: [no status, 1xx, 2xx, 3xx, 4xx, 5xx].
        self.http_responses = [0, 0, 0, 0, 0, 0]

    def _error(self, message: str) -> ListenerError:
        return TcpLBError(message)

    def _live(self) -> int:
        return len(self.proxy.sessions) + len(self.l7_sessions)

    def _live_sessions(self) -> list[AnySession]:
        return self.sessions

    def _serve(self, el: EventLoop, sock: _socket.socket, addr: Any) -> None:
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
        self._count_closed(session.front.bytes_in, session.back.bytes_in)

    def _session_closed(self, session: Session) -> None:
        self._count_closed(session.front.bytes_in, session.back.bytes_in)
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
    def sessions(self) -> list[AnySession]:
        """The live sessions (a snapshot): L4 relays and L7 client connections."""
        return [*self.proxy.sessions, *self.l7_sessions]

    def start(self) -> TcpLB:
        """Bind and start accepting. Raises OSError when the address is in use."""
        super().start()
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
        changes = self._check_changes(
            in_buffer_size=in_buffer_size,
            out_buffer_size=out_buffer_size,
            timeout=timeout,
            max_connections=max_connections,
            handshake_timeout=handshake_timeout,
            half_closed_timeout=half_closed_timeout,
            acceptor_elg=acceptor_elg,
        )
        limits = _check_l7_limits(l7_limits) if l7_limits is not None else None
        hs = changes.handshake_timeout
        new_mode = protocol is not None and protocol != self.protocol
        mode = self._make_mode(protocol) if protocol is not None and new_mode else self.mode
        if cert_keys is not None or new_mode or (hs is not None and self.cert_keys):
            # (the last check: it sets the TLS configuration only when it succeeds)
            self._set_cert_keys(self.cert_keys if cert_keys is None else cert_keys, mode, hs or 0)
        if protocol is not None and new_mode:
            self.protocol = protocol
            self.mode = mode
        if limits is not None:
            self.l7_limits = limits  # frozen: modes read it once per new connection
        self._apply_changes(changes, upstream, worker_elg, security_group)

    def stop(self, close_sessions: bool = False) -> None:
        """Stop accepting; running sessions finish unless ``close_sessions``."""
        self._stop_accepting()
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
