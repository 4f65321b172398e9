"""The socks5 server (SPEC §1 "Socks5Server").

Owns: a listener (:class:`vproxy.app.listener.Listener`, as the tcp-lb) whose
clients first speak socks5 (RFC 1928 CONNECT, optional RFC 1929
username/password): the handshake is parsed by the sans-IO
:mod:`vproxy.processor.socks5`, the target is checked against the policy
(``deny-non-backend``: only servers of the upstream, matched by address or by the
hint rule for domain names; ``allow-non-backend``: anything), connected, and then the
connection becomes the same bounded relay as a tcp-lb session. Each ended session is
handed to the access log when one is set.

The security group is applied when a connection is accepted, before any byte is read.
The handshake has a deadline: a client that stays silent or sends half a request is
closed when it passes, with no reply.

Must not: parse commands or decide about names beyond the upstream's hint rule.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import hmac
import logging
import socket
from typing import Any, Final

from vproxy.app.accept_gate import DEFAULT_MAX_CONNECTIONS
from vproxy.app.listener import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_HANDSHAKE_TIMEOUT_MS,
    DEFAULT_TIMEOUT_MS,
    Listener,
    ListenerError,
)
from vproxy.component.security_group import SecurityGroup
from vproxy.component.server_group import Server
from vproxy.component.upstream import Upstream
from vproxy.net.connection import Session
from vproxy.net.event_loop import READABLE, EventLoop, EventLoopGroup
from vproxy.net.server_sock import ACCEPTED_NODELAY, format_address
from vproxy.processor.socks5 import (
    AddressType,
    AuthFailed,
    ConnectRequest,
    Payload,
    ProtocolError,
    ReplyCode,
    Socks5Error,
    Socks5ServerConnection,
)

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT_MS", "Socks5Server", "Socks5ServerError"]

_log = logging.getLogger("vproxy.app")
_ACCEPTED_NODELAY: Final = ACCEPTED_NODELAY  # (a Final is a C static in compiled code)

#: bytes kept from a client while its CONNECT is being connected (then it is not read)
MAX_EARLY_BYTES: Final = 65536
DEFAULT_CONNECT_TIMEOUT_MS: Final = 3_000


class Socks5ServerError(ListenerError):
    """A socks5-server option was refused."""


class Socks5Server(Listener):
    """A socks5 listener relaying CONNECTs to servers of an upstream (or anywhere)."""

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
        security_group: SecurityGroup | None = None,
        allow_non_backend: bool = False,
        users: dict[str, str] | None = None,
        handshake_timeout: int = DEFAULT_HANDSHAKE_TIMEOUT_MS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        half_closed_timeout: int | None = None,
    ) -> None:
        super().__init__(
            "socks5-server",
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
        self.allow_non_backend = allow_non_backend
        self.users = dict(users) if users else None
        self.sessions: set[Session] = set()
        self.failed = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def _error(self, message: str) -> ListenerError:
        return Socks5ServerError(message)

    def _live(self) -> int:
        return len(self.sessions)

    def _live_sessions(self) -> list[Session]:
        return list(self.sessions)

    def start(self) -> Socks5Server:
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
        security_group: SecurityGroup | bool | None = False,
        allow_non_backend: bool | None = None,
        max_connections: int | None = None,
        handshake_timeout: int | None = None,
        half_closed_timeout: int | None = None,
    ) -> None:
        """Change options for new connections (all-or-nothing).

        ``security_group=None`` removes the group; the default ``False`` keeps it.
        A lower ``max_connections`` closes nothing: it refuses new connections
        until the live ones are under it.
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
        self._apply_changes(changes, upstream, worker_elg, security_group)
        if allow_non_backend is not None:
            self.allow_non_backend = allow_non_backend

    def stop(self, close_sessions: bool = False) -> None:
        """Stop accepting; running sessions finish unless ``close_sessions``."""
        self._stop_accepting()
        if close_sessions:
            for s in list(self.sessions):
                loop = s._loop
                if not loop.is_closed():
                    loop.call_soon_threadsafe(s.abort)

    def _serve(self, el: EventLoop, sock: _socket.socket, addr: Any) -> None:
        if el.in_loop_thread:
            self._start(el, sock, addr)
        else:
            self.gate.hand_off(el, self._start, el, sock, addr)

    # -- per connection (worker thread) ----------------------------------------------------
    def _start(self, el: EventLoop, sock: _socket.socket, addr: Any) -> None:
        # The session is registered here, before the hand-off counts as done.
        if not _ACCEPTED_NODELAY:  # (on Linux the socket has it from its listener)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()  # the client is already gone
                return
        session = Session(
            el,
            addr,
            self.in_buffer_size,
            self.out_buffer_size,
            self.timeout,
            self._closed,
            sock=sock,
            half_closed_timeout_ms=self.half_closed_timeout,
        )
        el.session_started(session)
        self.sessions.add(session)
        _Handshake(self, session).start()

    def _closed(self, session: Session) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self._count_closed(session.front.bytes_in, session.back.bytes_in)
        server = session.server
        if isinstance(server, Server):
            server.session_closed(session, session.back.bytes_in, session.front.bytes_in)
        session.el.session_done(session)
        log = self.access_log
        if log is not None:
            duration, target = self._accept_clock.pop(session.client)
            log.session_ended(
                "socks5-server",
                self.name,
                session.client,
                server if isinstance(server, Server) else None,
                target,
                session.front.bytes_in,
                session.back.bytes_in,
                duration,
            )

    def check_user(self, user: bytes, password: bytes) -> bool:
        """RFC 1929 check, in constant time for the password."""
        users = self.users or {}
        want = users.get(user.decode(errors="replace"))
        ok = hmac.compare_digest(password, (want or "\x00").encode())
        return want is not None and ok

    def choose_target(self, req: ConnectRequest, source: str) -> tuple[str, int, Server | None]:
        """Where to connect for ``req``, or raise :class:`PermissionError`.

        A backend of the upstream matched by address, or by the hint rule for a
        domain name, is used as such (so it is counted and balanced); anything else
        is allowed only with ``allow-non-backend``.
        """
        server = self.upstream.find_server(req.host, req.port)
        if server is None and not _names_an_ip(req):
            group = self.upstream.match_group(req.host)
            server = group.next(source) if group is not None else None
        if server is not None:
            return server.host, server.port, server
        if self.allow_non_backend:
            return req.host, req.port, None
        raise PermissionError(f"{req.host}:{req.port} is not a backend of {self.upstream.name}")


def _names_an_ip(req: ConnectRequest) -> bool:
    """Whether the request's host is an IP address (written as one, or as a name)."""
    return req.address_type is not AddressType.DOMAIN_NAME or _is_ip(req.host)


def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def _reply_for(exc: BaseException) -> ReplyCode:
    if isinstance(exc, PermissionError):
        return ReplyCode.NOT_ALLOWED
    if isinstance(exc, ConnectionRefusedError):
        return ReplyCode.CONNECTION_REFUSED
    if isinstance(exc, TimeoutError):
        return ReplyCode.HOST_UNREACHABLE
    if isinstance(exc, OSError) and exc.errno == errno.ENETUNREACH:
        return ReplyCode.NETWORK_UNREACHABLE
    if isinstance(exc, OSError):  # name resolution failures, EHOSTUNREACH...
        return ReplyCode.HOST_UNREACHABLE
    return ReplyCode.GENERAL_FAILURE


class _Handshake:
    """The client side before the relay: feeds the socks5 processor, then links.

    Socket mode, like the tcp-lb's relay: the client's socket is watched by the
    loop's :class:`~vproxy.net.event_loop.FdWatcher` through the session's front
    :class:`~vproxy.net.connection.Connection` (so closing the session stops the
    watch), the backend is connected with :meth:`Session.connect`, and
    :meth:`Session.link` turns the pair into the relay. Only a CONNECT to a domain
    name that is no backend (``allow-non-backend``) takes a task, for the lookup.
    """

    __slots__ = ("deadline", "done", "early", "early_size", "proc", "server", "session", "target")

    def __init__(self, server: Socks5Server, session: Session) -> None:
        self.server = server
        self.session = session
        self.proc = Socks5ServerConnection(auth=server.check_user if server.users else None)
        self.deadline = -1  # key of the handshake deadline in the loop's timers
        self.done = False
        self.early: list[bytes] = []  # bytes the client sent after its request
        self.early_size = 0
        self.target: Server | None = None

    def start(self) -> None:
        session = self.session
        front = session.front
        front._mask = READABLE
        session._watcher.add(front.fd, READABLE, self._on_readable)
        self.deadline = session._timers.add(self.server.handshake_timeout / 1000, self)

    def on_deadline(self, key: int) -> None:
        """The loop's timers: the handshake's deadline passed."""
        if key == self.deadline:
            self._expired()

    def _expired(self) -> None:
        self.deadline = -1
        if not self.done and not self.session.closed:
            _log.debug("socks5 handshake from %s timed out", self.session.client)
            self._end()
            self.session.abort()

    def _end(self) -> None:
        self.done = True
        if self.deadline >= 0:
            self.session._timers.cancel(self.deadline, self)
            self.deadline = -1

    def _on_readable(self, _events: int = 0) -> None:
        session = self.session
        sock = session.front.sock
        assert sock is not None
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client gave up (or broke) during the handshake
            self._end()
            session.abort()
            return
        try:
            events = self.proc.receive_data(data)
        except Socks5Error:
            self._fail()
            return
        out = self.proc.data_to_send()
        if out and not self._send(out):
            return
        for ev in events:
            if isinstance(ev, ConnectRequest):
                # The watch stays on while connecting (link() takes it over): what
                # the client sends meanwhile is kept for the backend, up to a bound.
                self.session._watcher.set_handler(session.front.fd, self._on_early)
                self._connect(ev)
            elif isinstance(ev, Payload):
                self.early.append(ev.data)
                self.early_size += len(ev.data)
            elif isinstance(ev, AuthFailed | ProtocolError):
                self._fail()
                return

    def _on_early(self, _events: int = 0) -> None:
        """Readable while connecting: keep the bytes (bounded) for the backend."""
        session = self.session
        sock = session.front.sock
        assert sock is not None
        try:
            data = sock.recv(MAX_EARLY_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.early.append(data)
            self.early_size += len(data)
        if not data or self.early_size >= MAX_EARLY_BYTES:
            # A FIN (or enough bytes): read nothing more until the relay starts,
            # which reads the FIN again and passes it on.
            self._stop_reading()

    def _stop_reading(self) -> None:
        front = self.session.front
        if front._mask:
            front._mask = 0
            self.session._watcher.remove(front.fd)

    def _send(self, data: bytes) -> bool:
        """Write a (small) reply to the client; False if the session was closed.

        A fresh socket takes a few hundred bytes at once: a client whose buffer
        cannot is broken, and is closed.
        """
        session = self.session
        sock = session.front.sock
        try:
            sent = sock.send(data) if sock is not None and not session.closing else -1
        except OSError:
            sent = -1
        if sent != len(data):
            self._end()
            session.abort()
            return False
        return True

    def _fail(self) -> None:
        out = self.proc.data_to_send()
        self._end()
        if not out or self._send(out):
            self.session.close()

    def _connect(self, req: ConnectRequest) -> None:
        server, session = self.server, self.session
        try:
            host, port, backend = server.choose_target(req, str(session.client[0]))
        except PermissionError as exc:
            server.denied += 1
            self._reject(exc)
            return
        self.target = backend
        if server.access_log is not None:
            server._accept_clock.target(session.client, format_address(req.host, req.port))
        timeout = _connect_timeout(backend)
        # (a backend's host is an IP address: checking it again cost ~1.8k instructions)
        if backend is not None or _names_an_ip(req):
            session.connect(host, port, timeout, self._connected)
            return
        task = session._loop.create_task(self._resolve_and_connect(host, port, seconds=timeout))
        server._tasks.add(task)
        task.add_done_callback(server._tasks.discard)

    async def _resolve_and_connect(self, host: str, port: int, *, seconds: float) -> None:
        session = self.session
        try:
            async with asyncio.timeout(seconds):
                infos = await session._loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:
            if not session.closed:
                self._connected(exc if isinstance(exc, OSError) else OSError(str(exc)))
            return
        if not session.closed:
            ip, resolved_port = infos[0][4][:2]
            session.connect(str(ip), int(resolved_port), seconds, self._connected)

    def _connected(self, error: OSError | None) -> None:
        server, session, backend = self.server, self.session, self.target
        if error is not None:
            server.failed += 1
            if backend is not None:
                backend.connect_failed()  # the passive failure, visible in stats
            self._reject(error)
            return
        if self.done:  # timed out meanwhile
            return
        session.server = backend
        if backend is not None:
            backend.session_opened(session)
        bound = session.back.get_extra_info("sockname")
        if bound:  # (not accept(*bound[:2]): a slice and a call through a tuple)
            self.proc.accept(bound[0], bound[1])
        else:
            self.proc.accept("0.0.0.0", 0)
        self._end()
        if self._send(self.proc.data_to_send()):
            # From here on the relay owns both sockets.
            session.link(b"".join(self.early))

    def _reject(self, exc: BaseException) -> None:
        self.proc.reject(_reply_for(exc))
        self._fail()


def _connect_timeout(server: Server | None) -> float:
    group = server.group if server is not None else None
    ms = group.connect_timeout_ms if group is not None else DEFAULT_CONNECT_TIMEOUT_MS
    return ms / 1000
