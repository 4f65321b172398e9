"""The RESP controller (SPEC §3.2): the command language over the Redis protocol.

Owns one listening socket on a control event loop and, per client, a
:class:`RespSession`: an asyncio protocol that feeds a sans-IO
:class:`~vproxy.processor.resp.RespParser`, answers the few redis commands a redis
client needs to work (``AUTH``, ``PING``, ``QUIT``, ``SELECT``, ``CLIENT``, ``HELLO``,
``COMMAND``), hands every other request to the executor as words, and writes the reply
with :func:`~vproxy.control.reply.to_resp`. It enforces authentication (the password
is compared in constant time and never logged), tight parser limits until then, and
bounded output: a client that does not read its replies is paused, then dropped.

Must not: parse or run commands itself, change any state but its own sessions, or
decide which commands an origin may run (the executor refuses system commands for
:attr:`Origin.RESP <vproxy.control.executor.Origin>`).
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import socket
from collections.abc import Sequence
from typing import Any, Protocol, cast

from vproxy.control.executor import Origin
from vproxy.control.listening import ListeningController
from vproxy.control.reply import OK, ErrorReply, Integer, Nil, Reply, Status, String, to_resp
from vproxy.net.event_loop import EventLoop
from vproxy.processor.resp import Request, RespParser, RespProtocolError

__all__ = [
    "AUTHED_LIMITS",
    "HARD_OUTPUT_LIMIT",
    "MAX_UNAUTHENTICATED_REQUESTS",
    "OUTPUT_HIGH_WATER",
    "OUTPUT_LOW_WATER",
    "PREAUTH_LIMITS",
    "RespController",
    "RespExecutor",
    "RespSession",
]

_log = logging.getLogger("vproxy.control")

PREAUTH_LIMITS = {"max_multibulk": 8, "max_bulk": 1024, "max_inline": 1024}
"""Parser limits until the client has authenticated: enough for ``AUTH user pass``."""
AUTHED_LIMITS = {"max_multibulk": 4096, "max_bulk": 1024 * 1024, "max_inline": 64 * 1024}
"""Parser limits once authenticated (or when no password is set): commands are short."""
MAX_UNAUTHENTICATED_REQUESTS = 64
"""Requests answered before a successful ``AUTH``; one more closes the connection."""
OUTPUT_HIGH_WATER = 64 * 1024
"""Stop running a client's requests while this many reply bytes wait to be sent..."""
OUTPUT_LOW_WATER = 16 * 1024
"""...and go on once the client has read the backlog down to this."""
HARD_OUTPUT_LIMIT = 32 * 1024 * 1024
"""A reply that would leave more than this unsent closes the connection instead."""


class RespExecutor(Protocol):
    """What the RESP controller needs from the executor."""

    def execute_words(self, words: Sequence[str], origin: Origin) -> Reply:
        """Parse and run one command; errors come back as an ErrorReply."""
        ...


_NOAUTH = ErrorReply("Authentication required.", http_status=401, code="NOAUTH")
_WRONGPASS = ErrorReply("invalid password", http_status=401, code="WRONGPASS")
_NO_PASSWORD = ErrorReply(
    "AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?"
)
_PONG = Status("PONG")


def _unknown(name: bytes) -> ErrorReply:
    shown = name.decode("utf-8", "backslashreplace")
    return ErrorReply(
        f"unknown command '{shown}': vproxy speaks its own command language, try 'man'"
    )


def _wrong_args(name: str) -> ErrorReply:
    return ErrorReply(f"wrong number of arguments for '{name}' command")


class RespSession(asyncio.Protocol):
    """One client connection of a RESP controller.

    Requests are run in order, one at a time, synchronously in the loop thread. While
    the transport holds more than :data:`OUTPUT_HIGH_WATER` unsent bytes, the session
    stops running requests and stops reading; it goes on below
    :data:`OUTPUT_LOW_WATER`. Requests already parsed wait in a queue bounded by what
    one read can hold.
    """

    __slots__ = (
        "_authed",
        "_busy",
        "_close_when_idle",
        "_eof",
        "_executor",
        "_final",
        "_hard_output_limit",
        "_parser",
        "_password",
        "_peer",
        "_pending",
        "_reading_paused",
        "_sessions",
        "_transport",
        "_unauthenticated",
        "_write_paused",
    )

    def __init__(
        self,
        executor: RespExecutor,
        password: str | None,
        sessions: set[RespSession] | None = None,
        *,
        hard_output_limit: int = HARD_OUTPUT_LIMIT,
    ) -> None:
        """Create the protocol for one connection.

        Args:
            executor: Runs every command that is not a redis housekeeping command.
            password: The password clients must ``AUTH`` with; ``None`` for none.
            sessions: A set the session adds itself to while connected.
            hard_output_limit: Unsent reply bytes above which the client is dropped.
        """
        self._executor = executor
        self._password = password.encode("utf-8") if password is not None else None
        self._authed = password is None
        self._sessions = sessions
        self._hard_output_limit = hard_output_limit
        self._parser = RespParser(**(AUTHED_LIMITS if self._authed else PREAUTH_LIMITS))
        self._transport: asyncio.Transport | None = None
        self._peer: Any = None
        self._pending: collections.deque[Request] = collections.deque()
        self._final: bytes | None = None  # written after the pending requests, then close
        self._unauthenticated = 0
        self._write_paused = False
        self._reading_paused = False
        self._eof = False
        self._busy = False
        self._close_when_idle = False

    # -- asyncio callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transport (uvloop's does not subclass asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)
        self._peer = self._transport.get_extra_info("peername")
        self._transport.set_write_buffer_limits(high=OUTPUT_HIGH_WATER, low=OUTPUT_LOW_WATER)
        if self._sessions is not None:
            self._sessions.add(self)
        _log.debug("resp: client %s connected", self._peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sessions is not None:
            self._sessions.discard(self)
        self._pending.clear()
        self._transport = None
        _log.debug("resp: client %s gone (%s)", self._peer, exc or "closed")

    def data_received(self, data: bytes) -> None:
        if self._final is not None or self._closed:
            return
        start = 0
        # Until AUTH succeeds, feed one line at a time (a request can only end at a
        # LF) and run each request at once, so that the request after a pipelined
        # AUTH is read with the wider limits, as redis does.
        while not self._authed and start < len(data):
            lf = data.find(b"\n", start)
            end = len(data) if lf < 0 else lf + 1
            if not self._feed(data[start:end]):
                return
            start = end
        if start < len(data):
            self._feed(data[start:] if start else data)

    def _feed(self, data: bytes) -> bool:
        """Parse and run; False once the session will take no more input."""
        try:
            requests = self._parser.receive_data(data)
        except RespProtocolError as exc:
            _log.info("resp: client %s: protocol error: %s", self._peer, exc.message)
            self._pending.extend(exc.requests)
            self._final = exc.wire
        else:
            self._pending.extend(requests)
        self._run_pending()
        return self._final is None and not self._closed

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._pending:
            return True  # keep the transport; close once the queue is done
        return None  # let the transport close itself after flushing

    def pause_writing(self) -> None:
        self._write_paused = True
        self._set_reading(False)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._run_pending()

    # -- control ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; a command running now still gets its reply sent."""
        if self._busy:
            self._close_when_idle = True
        elif self._transport is not None:
            self._transport.close()

    @property
    def authenticated(self) -> bool:
        """True once the client may run commands."""
        return self._authed

    @property
    def _closed(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    # -- running requests ---------------------------------------------------------------

    def _run_pending(self) -> None:
        while self._pending and not self._write_paused and not self._closed:
            request = self._pending.popleft()
            self._busy = True
            try:
                self._handle(request)
            finally:
                self._busy = False
            if self._close_when_idle:
                self._close_transport()
        if self._closed:
            return
        if not self._pending and self._final is not None:
            self._write(self._final)
            self._close_transport()
        elif not self._pending and self._eof:
            self._close_transport()
        else:
            self._set_reading(not self._pending and not self._write_paused)

    def _handle(self, request: Request) -> None:
        args = request.args
        name = args[0].upper()
        if name == b"QUIT":
            self._write(to_resp(OK))
            self._close_transport()
            return
        if name == b"AUTH":
            reply = self._auth(args)
        elif name == b"PING":
            reply = _ping(args)
        elif name == b"HELLO":
            # RESP3 clients fall back to RESP2 (and a separate AUTH) on this error.
            reply = _unknown(args[0])
        elif not self._authed:
            reply = _NOAUTH
        elif name == b"SELECT":
            reply = _select(args)
        elif name == b"CLIENT":
            reply = _client(args)
        elif name == b"COMMAND":
            # redis-cli asks for COMMAND DOCS on start to build its hints; an array it
            # cannot understand would make it abort, an error makes it use its own.
            reply = _unknown(args[0])
        else:
            reply = self._execute(args)
        if not self._authed:
            self._unauthenticated += 1
            if self._unauthenticated > MAX_UNAUTHENTICATED_REQUESTS:
                _log.info("resp: client %s: too many requests before AUTH", self._peer)
                self._write(b"-ERR too many commands before AUTH\r\n")
                self._close_transport()
                return
        self._write(to_resp(reply))

    def _auth(self, args: tuple[bytes, ...]) -> Reply:
        if len(args) == 2:
            user, given = b"default", args[1]
        elif len(args) == 3:
            user, given = args[1], args[2]
        else:
            return _wrong_args("auth")
        if self._password is None:
            return _NO_PASSWORD
        # Compare the password even for a wrong user, so the timing says nothing.
        ok = hmac.compare_digest(given, self._password)
        if not ok or user != b"default":
            _log.info("resp: client %s: AUTH refused", self._peer)
            return _WRONGPASS
        if not self._authed:
            self._authed = True
            self._parser.set_limits(**AUTHED_LIMITS)
        return OK

    def _execute(self, args: tuple[bytes, ...]) -> Reply:
        words: list[str] = []
        for index, arg in enumerate(args):
            try:
                words.append(arg.decode("utf-8"))
            except UnicodeDecodeError:
                return ErrorReply(f"argument {index + 1} is not valid UTF-8")
        try:
            return self._executor.execute_words(words, Origin.RESP)
        except Exception:
            _log.exception("resp: the executor failed on a command from %s", self._peer)
            return ErrorReply("internal error, see the vproxy log", http_status=500)

    # -- output ------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size() + len(data) > self._hard_output_limit:
            _log.info("resp: client %s does not read its replies: dropped", self._peer)
            transport.abort()
            return
        transport.write(data)

    def _close_transport(self) -> None:
        self._close_when_idle = False
        self._pending.clear()
        if self._transport is not None:
            self._transport.close()

    def _set_reading(self, on: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or on != self._reading_paused:
            return
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()
        self._reading_paused = not on


def _ping(args: tuple[bytes, ...]) -> Reply:
    if len(args) == 1:
        return _PONG
    if len(args) == 2:
        return String(args[1].decode("utf-8", "surrogateescape"))
    return _wrong_args("ping")


def _select(args: tuple[bytes, ...]) -> Reply:
    if len(args) != 2:
        return _wrong_args("select")
    if args[1].strip() == b"0":
        return OK
    return ErrorReply("DB index is out of range")


def _client(args: tuple[bytes, ...]) -> Reply:
    sub = args[1].upper() if len(args) > 1 else b""
    if sub in (b"SETNAME", b"SETINFO", b"NO-EVICT", b"NO-TOUCH"):
        return OK
    if sub == b"GETNAME":
        return Nil()
    if sub == b"ID":
        return Integer(1)
    shown = args[1].decode("utf-8", "backslashreplace") if len(args) > 1 else ""
    return ErrorReply(f"unknown subcommand '{shown}': vproxy accepts only SETNAME, GETNAME, ID")


class RespController(ListeningController):
    """A RESP server on one event loop, serving the command language.

    ``start()`` and ``stop()`` may be called from any thread, including the loop's own
    (``stop()`` then does not wait for the listener to finish closing).
    """

    def __init__(
        self,
        name: str,
        address: tuple[str, int],
        password: str | None,
        executor: RespExecutor,
        el: EventLoop,
    ) -> None:
        """Describe a controller; nothing is bound until :meth:`start`.

        Args:
            name: The controller's name in the command language.
            address: ``(host, port)`` to listen on; port 0 picks a free port.
            password: The password clients must ``AUTH`` with; ``None`` or ``""`` for
                none (then every client may run commands).
            executor: Runs the commands.
            el: The event loop that serves the listener and every client.
        """
        super().__init__("resp-controller", name, address, el)
        self._password = password or None
        self.executor = executor
        self._sessions: set[RespSession] = set()

    @property
    def session_count(self) -> int:
        """Clients connected now."""
        return len(self._sessions)

    async def _serve(self, sock: socket.socket) -> None:
        password = self._password

        def factory() -> RespSession:
            return RespSession(self.executor, password, self._sessions)

        self._listen(sock, factory)  # (False: stopped before it began, nothing to close)

    def _stopped(self) -> None:
        for session in list(self._sessions):
            session.close()
