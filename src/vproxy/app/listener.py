"""What a tcp-lb and a socks5-server share (SPEC §1 "TcpLB", "Socks5Server").

Owns: the options both have (address, upstream, acceptor and worker loop groups,
buffer sizes, idle, handshake and half-closed timeouts, security group,
max-connections), their checks and their changes at run time (validated all
first, then applied); binding and accepting through a
:class:`~vproxy.net.server_sock.ServerSock`, moving accepting to another acceptor
group; the checks at accept (security group, then max-connections, before a byte is
read or a backend is connected) and the choice of a worker loop; the byte counts of
ended sessions.

Must not: know what is spoken on an accepted connection: each kind starts its own
sessions (:meth:`Listener._serve`) and counts them (:meth:`Listener._live`).
"""

from __future__ import annotations

import _socket
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from vproxy.app.accept_gate import AcceptGate, check_max_connections
from vproxy.app.access_log import AcceptClock, AccessLog
from vproxy.component.security_group import SecurityGroup
from vproxy.component.upstream import Upstream
from vproxy.net.event_loop import EventLoop, EventLoopError, EventLoopGroup
from vproxy.net.server_sock import ServerSock, bind_listener, format_address, parse_address

if TYPE_CHECKING:
    from vproxy.app.l7.base import L7Session
    from vproxy.net.connection import Session

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_HANDSHAKE_TIMEOUT_MS",
    "DEFAULT_TIMEOUT_MS",
    "MAX_BUFFER_SIZE",
    "MAX_HANDSHAKE_TIMEOUT_MS",
    "MAX_TIMEOUT_MS",
    "MIN_BUFFER_SIZE",
    "Listener",
    "ListenerError",
]

_log = logging.getLogger("vproxy.app")

DEFAULT_BUFFER_SIZE: Final = 16384
DEFAULT_TIMEOUT_MS: Final = 900_000
DEFAULT_HANDSHAKE_TIMEOUT_MS: Final = 10_000
MIN_BUFFER_SIZE: Final = 256
MAX_BUFFER_SIZE: Final = 16 * 1024 * 1024
MAX_HANDSHAKE_TIMEOUT_MS: Final = 3_600_000
#: the idle and half-closed timeouts: one day at most
MAX_TIMEOUT_MS: Final = 86_400_000


class ListenerError(ValueError):
    """A listener option was refused (each kind raises its own subclass)."""


class _Changes:
    """The common options of one ``update``, checked, waiting to be applied."""

    def __init__(self) -> None:
        self.in_buffer_size: int | None = None
        self.out_buffer_size: int | None = None
        self.timeout: int | None = None
        self.max_connections: int | None = None
        self.handshake_timeout: int | None = None
        self.half_closed_timeout: int | None = None
        self.acceptor_elg: EventLoopGroup | None = None


class Listener:
    """A listening socket whose accepted connections go to worker loops."""

    def __init__(
        self,
        kind: str,
        name: str,
        address: tuple[str, int] | str,
        upstream: Upstream,
        *,
        acceptor_elg: EventLoopGroup,
        worker_elg: EventLoopGroup,
        in_buffer_size: int,
        out_buffer_size: int,
        timeout: int,
        security_group: SecurityGroup | None,
        handshake_timeout: int,
        max_connections: int,
        half_closed_timeout: int | None,
    ) -> None:
        self.kind = kind  # "tcp-lb", "socks5-server": in messages and logs
        self.name = name
        # ms a session may stay idle once one direction ended; None: min(timeout, 60 s)
        self.half_closed_timeout = (
            self._check_timeout(half_closed_timeout, "half-closed-timeout")
            if half_closed_timeout is not None
            else None
        )
        self.handshake_timeout = self._check_handshake_timeout(handshake_timeout)
        self.max_connections = self._check_max_connections(max_connections)
        self.gate = AcceptGate(f"{kind} {name}", self._live)
        self.bind_address = parse_address(address) if isinstance(address, str) else address
        self.upstream = upstream
        self.acceptor_elg = acceptor_elg
        self.worker_elg = worker_elg
        self.in_buffer_size = self._check_buffer("in-buffer-size", in_buffer_size)
        self.out_buffer_size = self._check_buffer("out-buffer-size", out_buffer_size)
        self.timeout = self._check_timeout(timeout)
        self.security_group: SecurityGroup | None = security_group
        self.denied = 0  # connections the security group closed at accept
        self.server_sock: ServerSock | None = None
        # Bytes of ended sessions; live ones are summed at read time (no hot-path cost).
        self._stats_lock = threading.Lock()
        self.closed_bytes_from_client = 0
        self.closed_bytes_from_server = 0
        # Access log (off unless set): accept times (and targets) by client address.
        self.access_log: AccessLog | None = None
        self._accept_clock = AcceptClock()

    # -- what each kind provides -------------------------------------------------------
    def _error(self, message: str) -> ListenerError:
        """The exception a refused option raises (each kind has its own type)."""
        return ListenerError(message)

    def _live(self) -> int:
        """Live sessions, as max-connections counts them."""
        raise NotImplementedError

    def _live_sessions(self) -> Sequence[Session | L7Session]:
        """A snapshot of the live sessions, for the byte counts."""
        raise NotImplementedError

    def _serve(self, el: EventLoop, sock: _socket.socket, addr: Any) -> None:
        """Start a session for an admitted connection on worker loop ``el``.

        Called in the acceptor's thread: a kind that must start it in ``el``'s
        thread hands it off through :attr:`gate` (which counts it meanwhile).
        """
        raise NotImplementedError

    # -- checks ---------------------------------------------------------------------------
    def _check_buffer(self, name: str, value: int) -> int:
        if not isinstance(value, int) or not MIN_BUFFER_SIZE <= value <= MAX_BUFFER_SIZE:
            raise self._error(f"{name} must be {MIN_BUFFER_SIZE}..{MAX_BUFFER_SIZE}, got {value!r}")
        return value

    def _check_timeout(self, value: int, name: str = "timeout") -> int:
        if not isinstance(value, int) or not 0 < value <= MAX_TIMEOUT_MS:
            raise self._error(f"{name} must be 1..{MAX_TIMEOUT_MS} ms, got {value!r}")
        return value

    def _check_handshake_timeout(self, value: int) -> int:
        if not isinstance(value, int) or not 0 < value <= MAX_HANDSHAKE_TIMEOUT_MS:
            raise self._error(
                f"handshake-timeout must be 1..{MAX_HANDSHAKE_TIMEOUT_MS} ms, got {value!r}"
            )
        return value

    def _check_max_connections(self, value: int) -> int:
        try:
            return check_max_connections(value)
        except ValueError as exc:
            raise self._error(str(exc)) from None

    # -- the listening socket -------------------------------------------------------------
    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {format_address(*self.address)})"

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (with the real port once started on port 0)."""
        if self.server_sock is not None:
            return self.server_sock.address
        return self.bind_address

    @property
    def accepted(self) -> int:
        """Connections accepted so far (including those closed at accept)."""
        return self.server_sock.accepted if self.server_sock is not None else 0

    @property
    def refused(self) -> int:
        """Connections closed at accept because ``max_connections`` were live."""
        return self.gate.refused

    @property
    def bytes_from_clients(self) -> int:
        """Bytes read from clients, ended and live sessions."""
        live = sum(s.front.bytes_in for s in self._live_sessions())
        return self.closed_bytes_from_client + live

    @property
    def bytes_from_servers(self) -> int:
        """Bytes read from backends (targets), ended and live sessions."""
        live = sum(s.back.bytes_in for s in self._live_sessions())
        return self.closed_bytes_from_server + live

    def start(self) -> Listener:
        """Bind and start accepting. Raises OSError when the address is in use."""
        if self.server_sock is not None:
            raise self._error(f"{self.kind} {self.name} is already started")
        sock = bind_listener(*self.bind_address)
        self.server_sock = ServerSock(self.name, sock, self.acceptor_elg, self._on_accept)
        try:
            self.server_sock.start()
        except BaseException:
            self.server_sock.close()
            self.server_sock = None
            raise
        _log.info("%s %s listening on %s", self.kind, self.name, format_address(*self.address))
        return self

    def _stop_accepting(self) -> None:
        if self.server_sock is not None:
            self.server_sock.close()
        self.gate.share(None)  # (workers N) no longer counted with the other processes

    # -- accept (acceptor thread) ----------------------------------------------------------
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
        self._serve(el, sock, addr)

    def _count_closed(self, front_bytes_in: int, back_bytes_in: int) -> None:
        """Keep an ended session's byte counts (sessions end on several loops)."""
        with self._stats_lock:
            self.closed_bytes_from_client += front_bytes_in
            self.closed_bytes_from_server += back_bytes_in

    # -- changes at run time ----------------------------------------------------------------
    def _check_changes(
        self,
        *,
        in_buffer_size: int | None,
        out_buffer_size: int | None,
        timeout: int | None,
        max_connections: int | None,
        handshake_timeout: int | None,
        half_closed_timeout: int | None,
        acceptor_elg: EventLoopGroup | None,
    ) -> _Changes:
        """Check the common options of an ``update``; nothing changes yet."""
        c = _Changes()
        if in_buffer_size:
            c.in_buffer_size = self._check_buffer("in-buffer-size", in_buffer_size)
        if out_buffer_size:
            c.out_buffer_size = self._check_buffer("out-buffer-size", out_buffer_size)
        if timeout is not None:
            c.timeout = self._check_timeout(timeout)
        if max_connections is not None:
            c.max_connections = self._check_max_connections(max_connections)
        if handshake_timeout is not None:
            c.handshake_timeout = self._check_handshake_timeout(handshake_timeout)
        if half_closed_timeout is not None:
            c.half_closed_timeout = self._check_timeout(half_closed_timeout, "half-closed-timeout")
        if acceptor_elg is not None and acceptor_elg is not self.acceptor_elg:
            try:
                acceptor_elg.next()
            except EventLoopError as exc:
                raise self._error(str(exc)) from None
            c.acceptor_elg = acceptor_elg
        return c

    def _apply_changes(
        self,
        c: _Changes,
        upstream: Upstream | None,
        worker_elg: EventLoopGroup | None,
        security_group: SecurityGroup | bool | None,
    ) -> None:
        """Apply checked changes (they cannot fail); new sessions use them."""
        if c.acceptor_elg is not None:
            self.acceptor_elg = c.acceptor_elg
            ss = self.server_sock
            if ss is not None and ss.el is not None:
                # Same path as when its loop is removed: re-register on the new group.
                old = ss.el
                ss.acceptor_elg = c.acceptor_elg
                ss.on_event_loop_removed(old)
                old.detach(ss)
        if upstream is not None:
            self.upstream = upstream
        if c.in_buffer_size is not None:
            self.in_buffer_size = c.in_buffer_size
        if c.out_buffer_size is not None:
            self.out_buffer_size = c.out_buffer_size
        if c.timeout is not None:
            self.timeout = c.timeout
        if c.max_connections is not None:
            self.max_connections = c.max_connections
        if c.half_closed_timeout is not None:
            self.half_closed_timeout = c.half_closed_timeout
        if c.handshake_timeout is not None:
            self.handshake_timeout = c.handshake_timeout
        if worker_elg is not None:
            self.worker_elg = worker_elg
        if security_group is not False:
            self.security_group = cast(SecurityGroup | None, security_group)
