"""Listening sockets (SPEC §1 "Proxy" accept side, "server-sock" statistics).

Owns: binding a TCP listener, accepting in batches on an acceptor event loop, counting
accepted connections, backing off when the process runs out of descriptors or buffers
(EMFILE/ENFILE/ENOBUFS/ENOMEM: stop accepting for a moment instead of spinning, as
trio's ``_serve_one_listener`` does), and moving to another acceptor loop when its
loop is removed.

Must not: decide what happens to an accepted socket; it hands it to ``on_accept``.
"""

from __future__ import annotations

import _socket
import errno
import logging
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any, Final, cast

from vproxy.net import reuseport
from vproxy.net.event_loop import EventLoop, EventLoopError, EventLoopGroup

__all__ = [
    "ACCEPTED_NODELAY",
    "ACCEPT_BATCH",
    "BACKOFF_ERRNOS",
    "BACKOFF_SECONDS",
    "ServerSock",
    "accept_queue_length",
    "bind_listener",
    "format_address",
    "parse_address",
    "set_reuse_port_default",
]

_log = logging.getLogger("vproxy.net")

#: accept() errors that pause accepting for BACKOFF_SECONDS (out of fds or memory)
BACKOFF_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_BATCH: Final = 64
BACKOFF_SECONDS: Final = 0.1
DEFAULT_BACKLOG: Final = 4096
#: Accepted sockets inherit ``TCP_NODELAY`` from their listener (Linux copies the
#: listening socket's TCP options into each new one), so :func:`bind_listener` sets it
#: once and an accept handler needs no ``setsockopt`` per connection; elsewhere it does.
ACCEPTED_NODELAY: Final = sys.platform.startswith("linux")
# Linux reports a listener's accept-queue length in TCP_INFO (tcpi_unacked, a u32 at
# byte 24): accepting exactly that many ends a batch without the accept that fails
# with EAGAIN, whose BlockingIOError (strerror, locale decoding, the exception)
# costs ~5.5 µs against ~1.2 µs for the getsockopt; often one batch per session.
_TCP_INFO: Final[int] = getattr(socket, "TCP_INFO", 0) if sys.platform.startswith("linux") else 0
_IPPROTO_TCP: Final = socket.IPPROTO_TCP
_QUEUED: Final = struct.Struct("<24xI")


def parse_address(text: str) -> tuple[str, int]:
    """Parse ``ip:port`` or ``[ipv6]:port`` into ``(host, port)``.

    Raises:
        ValueError: with a message naming what is wrong.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ValueError(f"bad address {text!r}: expected [ipv6]:port")
        host, port_s = text[1:end], text[end + 2 :]
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad address {text!r}: expected ip:port")
        if ":" in host:
            raise ValueError(f"bad address {text!r}: write IPv6 as [ipv6]:port")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"bad port in {text!r}: expected 0..65535")
    return host, int(port_s)


def format_address(host: str, port: int) -> str:
    """The inverse of :func:`parse_address`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_reuse_port_default = False


def set_reuse_port_default(enabled: bool) -> None:
    """Make every later :func:`bind_listener` (by default) share its port.

    Set once at start-up by ``workers N``, before anything binds: the processes of
    one vproxy then bind the same address and the kernel spreads the connections.
    """
    global _reuse_port_default
    _reuse_port_default = enabled


def bind_listener(
    host: str, port: int, backlog: int = DEFAULT_BACKLOG, *, reuse_port: bool | None = None
) -> socket.socket:
    """Bind and listen on ``host:port`` (port 0 picks a free one); non-blocking.

    ``TCP_NODELAY`` is set on the listener: accepted sockets inherit it where
    :data:`ACCEPTED_NODELAY` says so.

    Args:
        host: The address to bind.
        port: The port, 0 for a free one.
        backlog: The accept queue length.
        reuse_port: Set ``SO_REUSEPORT`` (several sockets, in several processes of
            the same user, accept on one port); None: the process-wide default of
            :func:`set_reuse_port_default`.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        shared = _reuse_port_default if reuse_port is None else reuse_port
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        if shared:  # a socket of the group that closes hands its queue to the others
            reuseport.attach(sock)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def accept_queue_length(sock: socket.socket) -> int:
    """Connections waiting in listening ``sock``'s accept queue; -1: not known here."""
    if not _TCP_INFO:
        return -1
    try:
        queued: int = _QUEUED.unpack(sock.getsockopt(_IPPROTO_TCP, _TCP_INFO, 28))[0]
    except (OSError, struct.error):
        return -1
    return queued


class ServerSock:
    """A listening socket served by one loop of an acceptor event-loop group."""

    def __init__(
        self,
        name: str,
        sock: socket.socket,
        acceptor_elg: EventLoopGroup,
        on_accept: Callable[[_socket.socket, Any], None],
    ) -> None:
        self.name = name
        self.sock = sock
        self.acceptor_elg = acceptor_elg
        self.on_accept = on_accept
        self.accepted = 0
        self.backoffs = 0
        self.el: EventLoop | None = None
        self._closed = False
        host, port = sock.getsockname()[:2]
        self.address: tuple[str, int] = (host, port)
        self._family = sock.family

    def __repr__(self) -> str:
        return f"ServerSock({self.name!r}, {format_address(*self.address)})"

    def start(self) -> None:
        """Start accepting on the next loop of the acceptor group."""
        el = self.acceptor_elg.next()
        self.el = el
        el.attach(self)
        el.call(self._register)

    def _register(self) -> None:
        if not self._closed and self.el is not None:
            self.el.loop.add_reader(self.sock.fileno(), self._accept_ready)

    def _unregister(self) -> None:
        if self.el is not None and not self.el.loop.is_closed():
            try:
                self.el.loop.remove_reader(self.sock.fileno())
            except (ValueError, OSError):
                pass

    def _accept_ready(self) -> None:
        # The C-level accept plus our own wrapping: socket.accept() costs twice as
        # much (it looks up and converts the family and type enums each time). The
        # wrapper is the C socket type: socket.socket adds a Python __init__ and a
        # Python close() per connection; as_socket() makes one where it is needed.
        lsock = self.sock
        accept = cast("Callable[[], tuple[int, Any]]", lsock._accept)  # type: ignore[attr-defined]
        family, stype, wrap = self._family, socket.SOCK_STREAM, _socket.socket
        on_accept = self.on_accept
        batch = ACCEPT_BATCH
        if _TCP_INFO:
            queued = accept_queue_length(lsock)
            # None queued (taken by another process, or an error to report): one
            # accept tells which.
            if 0 <= queued < ACCEPT_BATCH:
                batch = queued if queued else 1
        for _ in range(batch):
            try:
                fd, addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in BACKOFF_ERRNOS:
                    self._backoff(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue  # the client gave up before we accepted: next
                _log.error("accept on %s failed: %s", self.name, exc)
                return
            self.accepted += 1
            conn = wrap(family, stype, 0, fd)
            try:
                conn.setblocking(False)
                on_accept(conn, addr)
            except Exception:
                _log.exception("accept handler of %s failed", self.name)
                conn.close()

    def _backoff(self, exc: OSError) -> None:
        self.backoffs += 1
        _log.warning(
            "accept on %s: %s; pausing accepts for %.0f ms",
            self.name,
            exc.strerror,
            BACKOFF_SECONDS * 1000,
        )
        el = self.el
        if el is None:
            return
        el.loop.remove_reader(self.sock.fileno())
        el.loop.call_later(BACKOFF_SECONDS, self._register)

    def on_event_loop_removed(self, loop: EventLoop) -> None:
        """Move accepting to another loop of the group."""
        if self._closed or loop is not self.el:
            return
        try:
            loop.call(self._unregister)
        except Exception:
            pass
        try:
            self.start()
        except EventLoopError:
            _log.error("server-sock %s has no acceptor event loop left: closing", self.name)
            self.close()

    def close(self) -> None:
        """Stop accepting and close the listening socket."""
        if self._closed:
            return
        self._closed = True
        el = self.el
        if el is not None:
            el.detach(self)
            if el.alive:
                try:
                    el.call(self._unregister)
                except Exception:
                    pass
        self.sock.close()


def as_socket(sock: _socket.socket) -> socket.socket:
    """The accepted ``sock`` as a :class:`socket.socket` (for asyncio and ssl)."""
    return socket.socket(sock.family, sock.type, sock.proto, sock.detach())
