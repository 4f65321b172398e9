"""Sans-IO SOCKS5 handshake, server side: RFC 1928 (CONNECT only) and RFC 1929.

Owns the bytes of the handshake a SOCKS5 client performs before its data flows: the
method negotiation, the optional username/password subnegotiation, the CONNECT request
and the server's reply to it. It turns what the client sent into events
(:class:`ConnectRequest`, :class:`AuthFailed`, :class:`ProtocolError`,
:class:`Payload`) and queues the bytes to answer with, in the h11 style: the caller
feeds :meth:`Socks5ServerConnection.receive_data`, writes
:meth:`Socks5ServerConnection.data_to_send`, and, after it has decided what to do with
a :class:`ConnectRequest` (policy, upstream lookup, the outgoing connect), calls
:meth:`~Socks5ServerConnection.accept` or :meth:`~Socks5ServerConnection.reject`.

Must not: do I/O, import asyncio, socket, selectors or time, resolve names, or decide
which targets are allowed (that is the socks5 server's policy, see SPEC §1). Once the
reply to the request is queued the relay takes over the connection and this object is
done with it.

Choices the RFCs leave open, made here once:

* A greeting whose version is not 5 gets no answer (there is no SOCKS5 way to say it);
  the caller just closes.
* RFC 1929 says ULEN and PLEN are 1..255; a zero length is passed to the ``auth``
  callback, which decides (some clients send an empty password).
* Port 0, an empty domain name, and a domain name that is neither ASCII nor valid
  UTF-8 convertible by IDNA, or that holds a control character or a space, are
  malformed requests: reply ``01`` (general failure). Non-ASCII names are handed on
  as their IDNA A-label (``xn--...``) form. A domain name that spells an IP address
  stays :attr:`AddressType.DOMAIN_NAME`; the caller may treat it as an address.
* Every refusal reply carries ATYP ``01`` and the zero address and port, as the RFC
  allows ("fields ... in replies which indicate failure are ignored").
* Bytes the client sends after its request, before our reply (optimistic clients
  do this), come out as :class:`Payload` events for the caller to forward once it is
  connected; more than ``max_buffer`` of them in total is a protocol error, so a
  caller that keeps reading while it connects cannot be made to hold unbounded data.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "TERMINAL_STATES",
    "AddressType",
    "AuthFailed",
    "AuthMethod",
    "ConnectRequest",
    "Event",
    "LocalProtocolError",
    "Payload",
    "ProtocolError",
    "RemoteProtocolError",
    "ReplyCode",
    "Socks5Error",
    "Socks5ServerConnection",
    "State",
    "encode_reply",
]

DEFAULT_MAX_BUFFER: Final = 4096
"""Most bytes a client may send after its request before it has our reply."""

SOCKS_VERSION: Final = 0x05
AUTH_VERSION: Final = 0x01  # RFC 1929 subnegotiation version
CMD_CONNECT: Final = 0x01

_AUTH_SUCCESS: Final = b"\x01\x00"
_AUTH_FAILURE: Final = b"\x01\x01"


class AddressType(enum.IntEnum):
    """ATYP: how an address is written on the wire (RFC 1928 §4)."""

    IPV4 = 0x01
    DOMAIN_NAME = 0x03
    IPV6 = 0x04


_ADDRESS_TYPES: Final = {int(t): t for t in AddressType}
_GREETING_NO_AUTH: Final = bytes((0x05, 0x01, 0x00))  # VER 5, one method: no authentication
_METHOD_NO_AUTH: Final = bytes((0x05, 0x00))
_CONNECT_IPV4: Final = bytes((0x05, 0x01, 0x00, 0x01))  # VER 5, CONNECT, RSV 0, ATYP IPv4


class AuthMethod(enum.IntEnum):
    """Authentication methods a client may offer (RFC 1928 §3)."""

    NO_AUTHENTICATION = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE_METHODS = 0xFF


class ReplyCode(enum.IntEnum):
    """REP: the outcome the server reports for a request (RFC 1928 §6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


# -- events ---------------------------------------------------------------------------


# Events are slotted dataclasses (equality, repr) with their own __init__: compiled
# (setup.py), a dataclass-generated __init__ stays interpreted, 0.5-1 µs per event
# against 0.07 µs. Not frozen (a frozen one sets each field through object.__setattr__);
# nobody mutates them.


@dataclass(slots=True, init=False)
class ConnectRequest:
    """The client asks to be connected to ``host:port``; answer with accept or reject.

    Attributes:
        host: IPv4 text (``"10.0.0.1"``), IPv6 text without brackets (``"::1"``,
            RFC 5952; ``"::ffff:1.2.3.4"`` for IPv4-mapped), or an ASCII domain name
            (IDNA A-labels for non-ASCII names).
        port: The target port, 1..65535.
        address_type: How the client wrote the address.
    """

    host: str
    port: int
    address_type: AddressType

    def __init__(self, host: str, port: int, address_type: AddressType) -> None:
        self.host = host
        self.port = port
        self.address_type = address_type


@dataclass(slots=True, init=False)
class AuthFailed:
    """The client's username/password was refused; ``01 01`` is queued. Close after it.

    Attributes:
        username: The username the client gave (for the log; never log the password).
    """

    username: bytes

    def __init__(self, username: bytes) -> None:
        self.username = username


@dataclass(slots=True, init=False)
class ProtocolError:
    """The client broke the protocol or offered nothing acceptable. Send, then close.

    Whatever answer the protocol has for the case (``05 FF``, ``01 01`` or a request
    reply) is already queued in :meth:`Socks5ServerConnection.data_to_send`.

    Attributes:
        message: What was wrong, for the log.
        reply_code: The REP code sent for a request-phase error; ``None`` when the
            error came before the request (no request reply is sent then).
    """

    message: str
    reply_code: ReplyCode | None

    def __init__(self, message: str, reply_code: ReplyCode | None) -> None:
        self.message = message
        self.reply_code = reply_code


@dataclass(slots=True, init=False)
class Payload:
    """Bytes the client sent after its request, to forward once connected.

    Attributes:
        data: The bytes, in order; never empty.
    """

    data: bytes

    def __init__(self, data: bytes) -> None:
        self.data = data


Event: TypeAlias = ConnectRequest | AuthFailed | ProtocolError | Payload


# -- errors ---------------------------------------------------------------------------


class Socks5Error(Exception):
    """Base of the errors of this module.

    Attributes:
        message: What went wrong.
        reply_code: The REP code that goes with the error, if a request reply is due.
        wire: The bytes to send the client before closing (may be empty).
    """

    def __init__(
        self, message: str, reply_code: ReplyCode | None = None, wire: bytes = b""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reply_code = reply_code
        self.wire = wire


class LocalProtocolError(Socks5Error):
    """We (the caller) used the connection wrongly: accept before a request, feeding a
    finished handshake, a success code passed to reject... Nothing is sent for it."""


class RemoteProtocolError(Socks5Error):
    """The client broke the protocol.

    :meth:`Socks5ServerConnection.receive_data` reports it as a :class:`ProtocolError`
    event the first time, and raises it from every later call (the error sticks).
    """


# -- the state machine ----------------------------------------------------------------


class State(enum.Enum):
    """Where the handshake is."""

    # Members are singletons compared by identity: hash them by identity too (in C)
    # instead of Enum's hash(self._name_) in Python, for the transition lookups.
    __hash__ = object.__hash__

    GREETING = enum.auto()  # waiting for VER NMETHODS METHODS
    AUTH = enum.auto()  # waiting for the RFC 1929 username/password message
    REQUEST = enum.auto()  # waiting for VER CMD RSV ATYP DST.ADDR DST.PORT
    AWAIT_DECISION = enum.auto()  # ConnectRequest emitted; caller must accept/reject
    DONE = enum.auto()  # success reply queued; the relay owns the connection
    CLOSED = enum.auto()  # refusal queued (bad credentials, reject); close after it
    ERROR = enum.auto()  # the client broke the protocol; close after the queued bytes


TERMINAL_STATES: Final = frozenset({State.DONE, State.CLOSED, State.ERROR})
"""States after which the caller closes (CLOSED, ERROR) or relays (DONE)."""


class _Input(enum.Enum):
    __hash__ = object.__hash__  # (see State)

    # Parsed from the client's bytes (each only in the state that reads that message):
    METHOD_NO_AUTH = enum.auto()  # greeting offers 00 and no auth is configured
    METHOD_USERPASS = enum.auto()  # greeting offers 02 and auth is configured
    CREDENTIALS_GOOD = enum.auto()
    CREDENTIALS_BAD = enum.auto()
    CONNECT = enum.auto()  # a well-formed CONNECT request
    EARLY_DATA = enum.auto()  # bytes after the request, within max_buffer
    PEER_ERROR = enum.auto()  # malformed message, nothing acceptable, or overflow
    # Called by the caller:
    ACCEPT = enum.auto()
    REJECT = enum.auto()


class _Action(enum.Enum):
    SEND_METHOD_NO_AUTH = enum.auto()  # queue 05 00
    SEND_METHOD_USERPASS = enum.auto()  # queue 05 02
    SEND_AUTH_OK = enum.auto()  # queue 01 00
    SEND_AUTH_FAILED = enum.auto()  # queue 01 01, emit AuthFailed
    EMIT_CONNECT = enum.auto()  # emit ConnectRequest
    EMIT_PAYLOAD = enum.auto()  # emit Payload
    FAIL = enum.auto()  # queue the error's wire bytes, emit ProtocolError
    SEND_SUCCESS = enum.auto()  # queue 05 00 00 ATYP BND.ADDR BND.PORT
    SEND_REFUSAL = enum.auto()  # queue 05 REP 00 01 0.0.0.0 0
    MISUSE = enum.auto()  # raise LocalProtocolError; the state does not change


# How the handshake moves. Each receive_data call parses the message the current state
# waits for, as soon as enough bytes are there (checking each field the moment it
# arrives, in wire order, so the outcome does not depend on how the bytes were cut),
# classifies it into one _Input, and looks up (state, input) here. Parsing then goes on
# with whatever bytes follow, in the new state: a greeting, credentials, request and
# payload in one segment are all handled by one call. A terminal state drops the rest.
#
#   state            input              action                 -> state
#   GREETING         METHOD_NO_AUTH     SEND_METHOD_NO_AUTH    -> REQUEST
#   GREETING         METHOD_USERPASS    SEND_METHOD_USERPASS   -> AUTH
#   AUTH             CREDENTIALS_GOOD   SEND_AUTH_OK           -> REQUEST
#   AUTH             CREDENTIALS_BAD    SEND_AUTH_FAILED       -> CLOSED
#   REQUEST          CONNECT            EMIT_CONNECT           -> AWAIT_DECISION
#   AWAIT_DECISION   EARLY_DATA         EMIT_PAYLOAD           -> AWAIT_DECISION
#   AWAIT_DECISION   ACCEPT             SEND_SUCCESS           -> DONE
#   AWAIT_DECISION   REJECT             SEND_REFUSAL           -> CLOSED
#   any non-terminal PEER_ERROR         FAIL                   -> ERROR
#   anything else                       MISUSE                 -> (unchanged)
#
# "Anything else" is spelled out below so the table is total (a property test checks
# that, and that every reachable non-terminal state can still reach a terminal one).
# Parsed inputs only ever arise in the state that reads their message, so in practice
# MISUSE is what accept()/reject() at the wrong time get.
_TRANSITIONS: Final[dict[tuple[State, _Input], tuple[_Action, State]]] = {
    (State.GREETING, _Input.METHOD_NO_AUTH): (_Action.SEND_METHOD_NO_AUTH, State.REQUEST),
    (State.GREETING, _Input.METHOD_USERPASS): (_Action.SEND_METHOD_USERPASS, State.AUTH),
    (State.GREETING, _Input.PEER_ERROR): (_Action.FAIL, State.ERROR),
    (State.AUTH, _Input.CREDENTIALS_GOOD): (_Action.SEND_AUTH_OK, State.REQUEST),
    (State.AUTH, _Input.CREDENTIALS_BAD): (_Action.SEND_AUTH_FAILED, State.CLOSED),
    (State.AUTH, _Input.PEER_ERROR): (_Action.FAIL, State.ERROR),
    (State.REQUEST, _Input.CONNECT): (_Action.EMIT_CONNECT, State.AWAIT_DECISION),
    (State.REQUEST, _Input.PEER_ERROR): (_Action.FAIL, State.ERROR),
    (State.AWAIT_DECISION, _Input.EARLY_DATA): (_Action.EMIT_PAYLOAD, State.AWAIT_DECISION),
    (State.AWAIT_DECISION, _Input.PEER_ERROR): (_Action.FAIL, State.ERROR),
    (State.AWAIT_DECISION, _Input.ACCEPT): (_Action.SEND_SUCCESS, State.DONE),
    (State.AWAIT_DECISION, _Input.REJECT): (_Action.SEND_REFUSAL, State.CLOSED),
}
for _state in State:
    for _input in _Input:
        _TRANSITIONS.setdefault((_state, _input), (_Action.MISUSE, _state))
del _state, _input


def encode_reply(
    code: ReplyCode,
    bound_host: str | ipaddress.IPv4Address | ipaddress.IPv6Address = "0.0.0.0",
    bound_port: int = 0,
) -> bytes:
    """Encode a request reply: ``05 REP 00 ATYP BND.ADDR BND.PORT``.

    Args:
        code: The reply code.
        bound_host: An IPv4 or IPv6 address (text, brackets allowed, or an
            ``ipaddress`` object), or an ASCII domain name of 1..255 bytes.
        bound_port: 0..65535.

    Returns:
        The reply bytes.

    Raises:
        LocalProtocolError: The host or port cannot be encoded.
    """
    if isinstance(bound_port, bool) or not isinstance(bound_port, int):
        raise LocalProtocolError(f"bound port must be an int, not {bound_port!r}")
    if not 0 <= bound_port <= 0xFFFF:
        raise LocalProtocolError(f"bound port {bound_port} is outside 0..65535")
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    if isinstance(bound_host, str):  # the usual case (getsockname()): no ipaddress object
        prefix = _QUADS.get(bound_host)
        if prefix is None:
            quad = _dotted_quad(bound_host)
            if quad is not None:
                if len(_QUADS) >= 256:
                    _QUADS.clear()
                prefix = _QUADS[bound_host] = bytes((AddressType.IPV4, *quad))
        if prefix is not None:
            head = _REPLY_HEADS.get(code)
            if head is None:
                head = bytes((SOCKS_VERSION, code, 0x00))
            return head + prefix + bound_port.to_bytes(2, "big")
    if isinstance(bound_host, str):
        text = bound_host
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            addr = None
    else:
        addr = bound_host
        text = str(bound_host)
    if isinstance(addr, ipaddress.IPv4Address):
        atyp_addr = bytes((AddressType.IPV4,)) + addr.packed
    elif isinstance(addr, ipaddress.IPv6Address):
        atyp_addr = bytes((AddressType.IPV6,)) + addr.packed
    else:
        try:
            name = text.encode("ascii")
        except UnicodeEncodeError:
            raise LocalProtocolError(f"bound host {text!r} is not ASCII") from None
        if not 1 <= len(name) <= 255:
            raise LocalProtocolError(f"bound host name must be 1..255 bytes, not {len(name)}")
        atyp_addr = bytes((AddressType.DOMAIN_NAME, len(name))) + name
    return bytes((SOCKS_VERSION, code, 0x00)) + atyp_addr + bound_port.to_bytes(2, "big")


#: ATYP + address of dotted quads already seen (a server replies from a few addresses)
_QUADS: Final[dict[str, bytes]] = {}
#: VER REP RSV of each reply code (making the three bytes was ~750 instructions a reply)
_REPLY_HEADS: Final[dict[int, bytes]] = {c: bytes((SOCKS_VERSION, c, 0x00)) for c in ReplyCode}


def _dotted_quad(text: str) -> list[int] | None:
    """``a.b.c.d`` (decimal, no leading zeros, as ``ipaddress`` reads it), else None."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    out = []
    for p in parts:
        if not (p.isascii() and p.isdigit()) or len(p) > 3 or (p[0] == "0" and len(p) > 1):
            return None
        n = int(p)
        if n > 255:
            return None
        out.append(n)
    return out


def _refusal(code: ReplyCode) -> bytes:
    return bytes((SOCKS_VERSION, code, 0x00, AddressType.IPV4, 0, 0, 0, 0, 0, 0))


def _request_error(message: str, code: ReplyCode) -> RemoteProtocolError:
    return RemoteProtocolError(message, code, _refusal(code))


def _ipv6_text(addr: ipaddress.IPv6Address) -> str:
    """RFC 5952 text; IPv4-mapped addresses in the mixed form ``::ffff:1.2.3.4``
    (§5), which ``str()`` gives only from Python 3.13 on."""
    mapped = addr.ipv4_mapped
    return f"::ffff:{mapped}" if mapped is not None else str(addr)


def _decode_domain(raw: bytes) -> str:
    """Domain bytes from a request -> ASCII text; raise for what cannot be a name."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _request_error(
                f"domain name {raw!r} is neither ASCII nor UTF-8", ReplyCode.GENERAL_FAILURE
            ) from None
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:  # IDNA refuses: empty/long labels, prohibited characters
            raise _request_error(
                f"domain name {raw!r} is not a valid internationalized name",
                ReplyCode.GENERAL_FAILURE,
            ) from None
    for ch in text:
        if not 0x21 <= ord(ch) <= 0x7E:
            raise _request_error(
                f"domain name {raw!r} contains a control character or space",
                ReplyCode.GENERAL_FAILURE,
            )
    return text


class Socks5ServerConnection:
    """The server side of one SOCKS5 handshake, without I/O (h11 style).

    Feed the client's bytes to :meth:`receive_data` and write :meth:`data_to_send`
    after every call. On :class:`ConnectRequest`, decide and call :meth:`accept` or
    :meth:`reject`, then write :meth:`data_to_send` again. On :class:`AuthFailed` or
    :class:`ProtocolError`, write :meth:`data_to_send` and close. :class:`Payload`
    events carry bytes for the target. After :meth:`accept`, relay the raw streams.

    Example:
        >>> conn = Socks5ServerConnection()
        >>> conn.receive_data(b"\\x05\\x01\\x00\\x05\\x01\\x00\\x01\\x7f\\x00\\x00\\x01\\x00\\x50")
        [ConnectRequest(host='127.0.0.1', port=80, address_type=<AddressType.IPV4: 1>)]
        >>> conn.data_to_send()
        b'\\x05\\x00'
        >>> conn.accept("10.0.0.2", 40000)
        >>> conn.data_to_send()
        b'\\x05\\x00\\x00\\x01\\n\\x00\\x00\\x02\\x9c@'
    """

    __slots__ = (
        "_auth",
        "_buf",
        "_early_bytes",
        "_error",
        "_max_buffer",
        "_out",
        "_shortcut",
        "_state",
        "_username",
    )

    def __init__(
        self,
        auth: Callable[[bytes, bytes], bool] | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        """Create the server side of a handshake.

        Args:
            auth: ``None`` to accept clients without authentication (method ``00``);
                otherwise clients must use username/password (method ``02``) and
                ``auth(username, password)`` decides. Exceptions it raises propagate
                out of :meth:`receive_data`; close the connection then.
            max_buffer: Most bytes accepted after the request before the reply is
                sent (0 allows none).

        Raises:
            ValueError: If ``max_buffer`` is not a non-negative int.
        """
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 0:
            raise ValueError(f"max_buffer must be a non-negative int, not {max_buffer!r}")
        self._auth = auth
        self._max_buffer = max_buffer
        #: take :meth:`_fast` when it applies (the tests compare it with the table's path)
        self._shortcut = True
        self._state = State.GREETING
        self._buf = bytearray()
        # Queued replies: a few bytes, so bytes (concatenated) rather than a
        # bytearray, whose bytes() copy and clear() cost more than these joins.
        self._out = b""
        self._early_bytes = 0
        self._error: RemoteProtocolError | None = None
        self._username: bytes | None = None

    @property
    def state(self) -> State:
        """Where the handshake is."""
        return self._state

    @property
    def auth_required(self) -> bool:
        """Whether clients must authenticate with username/password."""
        return self._auth is not None

    @property
    def username(self) -> bytes | None:
        """The username that authenticated, or ``None`` (no auth, or not yet)."""
        return self._username

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes queued for the client.

        Returns:
            The bytes to write, possibly empty.
        """
        out = self._out
        self._out = b""
        return out

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes received from the client.

        Args:
            data: The next bytes of the stream, of any length (``b""`` is fine; the
                end of the stream is the caller's to handle: it just closes).

        Returns:
            The events these bytes complete, in order; empty when more are needed.
            A :class:`ProtocolError` or :class:`AuthFailed` is always the last one.

        Raises:
            RemoteProtocolError: A :class:`ProtocolError` was already reported.
            LocalProtocolError: The handshake is over (accepted or refused); bytes now
                belong to the relay, or to nobody.
        """
        if self._error is not None:  # set together with State.ERROR
            raise RemoteProtocolError(self._error.message, self._error.reply_code)
        if self._state in TERMINAL_STATES:
            raise LocalProtocolError(
                f"receive_data called in state {self._state.name}; the handshake is over"
            )
        events: list[Event] = []
        if self._shortcut and not self._buf and self._auth is None:
            data = self._fast(data, events)
            if not data:
                return events
        self._buf += data
        while self._state not in TERMINAL_STATES:
            try:
                step = self._next_input()
            except RemoteProtocolError as exc:
                self._error = exc
                step = (_Input.PEER_ERROR, exc)
            if step is None:
                break
            self._apply(step[0], step[1], events)
        if self._state in TERMINAL_STATES:
            self._buf.clear()
        return events

    def accept(
        self,
        bound_host: str | ipaddress.IPv4Address | ipaddress.IPv6Address = "0.0.0.0",
        bound_port: int = 0,
    ) -> None:
        """Queue the success reply; the relay takes the connection over after it.

        Args:
            bound_host: The address the server connected from (BND.ADDR): IPv4 or
                IPv6 text or object, or a domain name.
            bound_port: The port the server connected from (BND.PORT).

        Raises:
            LocalProtocolError: No request is waiting for a decision, or the address
                cannot be encoded.
        """
        reply = encode_reply(ReplyCode.SUCCEEDED, bound_host, bound_port)
        if self._shortcut and self._state is State.AWAIT_DECISION:
            # The table's one ACCEPT move, without the look-up: its key hashes two
            # enums, each through Enum.__hash__, a Python function.
            self._out += reply
            self._state = State.DONE
            return
        self._apply(_Input.ACCEPT, reply, [])

    def reject(self, code: ReplyCode | int = ReplyCode.GENERAL_FAILURE) -> None:
        """Queue a refusal reply (ATYP 01, zero address and port); close after it.

        Args:
            code: Why, e.g. :attr:`ReplyCode.NOT_ALLOWED` or
                :attr:`ReplyCode.CONNECTION_REFUSED`; anything but ``SUCCEEDED``.

        Raises:
            LocalProtocolError: No request is waiting for a decision, or ``code`` is
                not a failure reply code.
        """
        try:
            reply_code = ReplyCode(code)
        except ValueError:
            raise LocalProtocolError(f"{code!r} is not a SOCKS5 reply code") from None
        if reply_code is ReplyCode.SUCCEEDED:
            raise LocalProtocolError("reject() needs a failure code; use accept()")
        self._apply(_Input.REJECT, _refusal(reply_code), [])

    # -- the usual handshake, without the table ------------------------------------------

    def _fast(self, data: bytes, events: list[Event]) -> bytes:
        """The usual client (no auth offered only, then an IPv4 CONNECT), whole in
        ``data``: the same outcome as the table's path, without its dozens of calls
        (the table cost ~100k instructions per handshake, more than the relay's whole
        set-up). Returns what is left for the table's path."""
        state = self._state
        if state is State.GREETING and data[:3] == _GREETING_NO_AUTH:
            self._out += _METHOD_NO_AUTH
            self._state = state = State.REQUEST
            data = data[3:]
        if (
            state is State.REQUEST
            and len(data) >= 10
            and data[:4] == _CONNECT_IPV4
            and (data[8] or data[9])
        ):
            host = f"{data[4]}.{data[5]}.{data[6]}.{data[7]}"
            events.append(ConnectRequest(host, (data[8] << 8) | data[9], AddressType.IPV4))
            self._state = State.AWAIT_DECISION
            data = data[10:]
        return data

    # -- driving the table ----------------------------------------------------------

    def _apply(self, inp: _Input, arg: object, events: list[Event]) -> None:
        # ``arg`` is what the input carries (username, request, payload, error, reply
        # bytes); the asserts below check that plumbing, never bytes from the network.
        action, new_state = _TRANSITIONS[(self._state, inp)]
        if action is _Action.MISUSE:
            if inp in (_Input.ACCEPT, _Input.REJECT):
                raise LocalProtocolError(
                    f"{inp.name.lower()}() needs a ConnectRequest waiting for a decision; "
                    f"the handshake is in state {self._state.name}"
                )
            raise LocalProtocolError(f"input {inp.name} is impossible in state {self._state.name}")
        if action is _Action.SEND_METHOD_NO_AUTH:
            self._out += bytes((SOCKS_VERSION, AuthMethod.NO_AUTHENTICATION))
        elif action is _Action.SEND_METHOD_USERPASS:
            self._out += bytes((SOCKS_VERSION, AuthMethod.USERNAME_PASSWORD))
        elif action is _Action.SEND_AUTH_OK:
            assert isinstance(arg, bytes)
            self._username = arg
            self._out += _AUTH_SUCCESS
        elif action is _Action.SEND_AUTH_FAILED:
            assert isinstance(arg, bytes)
            self._out += _AUTH_FAILURE
            events.append(AuthFailed(arg))
        elif action is _Action.EMIT_CONNECT:
            assert isinstance(arg, ConnectRequest)
            events.append(arg)
        elif action is _Action.EMIT_PAYLOAD:
            assert isinstance(arg, bytes)
            events.append(Payload(arg))
        elif action is _Action.FAIL:
            assert isinstance(arg, RemoteProtocolError)
            self._out += arg.wire
            events.append(ProtocolError(arg.message, arg.reply_code))
        else:  # SEND_SUCCESS, SEND_REFUSAL: the caller built the reply
            assert isinstance(arg, bytes)
            self._out += arg
        self._state = new_state

    # -- parsing: one message of the current state, or None for "need more bytes" ----

    def _next_input(self) -> tuple[_Input, object] | None:
        state = self._state
        if state is State.GREETING:
            return self._parse_greeting()
        if state is State.AUTH:
            return self._parse_auth()
        if state is State.REQUEST:
            return self._parse_request()
        return self._take_early_data()  # AWAIT_DECISION

    def _parse_greeting(self) -> tuple[_Input, object] | None:
        buf = self._buf
        if not buf:
            return None
        if buf[0] != SOCKS_VERSION:
            raise RemoteProtocolError(
                f"greeting: version {buf[0]:#04x} is not SOCKS5 (0x05)", None, b""
            )
        if len(buf) < 2:
            return None
        end = 2 + buf[1]
        if len(buf) < end:
            return None
        methods = bytes(buf[2:end])
        del buf[:end]
        if self._auth is None:
            if AuthMethod.NO_AUTHENTICATION in methods:
                return (_Input.METHOD_NO_AUTH, None)
            wanted = "00 (no authentication)"
        else:
            if AuthMethod.USERNAME_PASSWORD in methods:
                return (_Input.METHOD_USERPASS, None)
            wanted = "02 (username/password)"
        raise RemoteProtocolError(
            f"greeting: no acceptable method: client offered [{methods.hex(' ')}], "
            f"server requires {wanted}",
            None,
            bytes((SOCKS_VERSION, AuthMethod.NO_ACCEPTABLE_METHODS)),
        )

    def _parse_auth(self) -> tuple[_Input, object] | None:
        buf = self._buf
        if not buf:
            return None
        if buf[0] != AUTH_VERSION:
            raise RemoteProtocolError(
                f"username/password: subnegotiation version {buf[0]:#04x} is not 0x01",
                None,
                _AUTH_FAILURE,
            )
        if len(buf) < 2:
            return None
        ulen = buf[1]
        if len(buf) < 3 + ulen:
            return None
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return None
        username = bytes(buf[2 : 2 + ulen])
        password = bytes(buf[3 + ulen : end])
        assert self._auth is not None  # AUTH is only entered when auth is configured
        good = self._auth(username, password)
        del buf[:end]
        return (_Input.CREDENTIALS_GOOD if good else _Input.CREDENTIALS_BAD, username)

    def _parse_request(self) -> tuple[_Input, object] | None:
        buf = self._buf
        if not buf:
            return None
        if buf[0] != SOCKS_VERSION:
            raise _request_error(
                f"request: version {buf[0]:#04x} is not SOCKS5 (0x05)",
                ReplyCode.GENERAL_FAILURE,
            )
        if len(buf) < 2:
            return None
        if buf[1] != CMD_CONNECT:
            raise _request_error(
                f"request: command {buf[1]:#04x} is not supported (only CONNECT, 0x01)",
                ReplyCode.COMMAND_NOT_SUPPORTED,
            )
        if len(buf) < 4:
            return None  # buf[2] is RSV: ignored, whatever it holds
        atyp = buf[3]
        if atyp == AddressType.IPV4:
            start, end = 4, 8
        elif atyp == AddressType.IPV6:
            start, end = 4, 20
        elif atyp == AddressType.DOMAIN_NAME:
            if len(buf) < 5:
                return None
            if buf[4] == 0:
                raise _request_error("request: empty domain name", ReplyCode.GENERAL_FAILURE)
            start, end = 5, 5 + buf[4]
        else:
            raise _request_error(
                f"request: address type {atyp:#04x} is not supported",
                ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED,
            )
        if len(buf) < end + 2:
            return None
        raw = bytes(buf[start:end])
        port = int.from_bytes(buf[end : end + 2], "big")
        del buf[: end + 2]
        address_type = _ADDRESS_TYPES[atyp]  # AddressType(atyp), without EnumType.__call__
        if address_type is AddressType.IPV4:
            host = f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"  # str(IPv4Address(raw)), cheaper
        elif address_type is AddressType.IPV6:
            host = _ipv6_text(ipaddress.IPv6Address(raw))
        else:
            host = _decode_domain(raw)
        if port == 0:
            raise _request_error(
                f"request: port 0 is not a valid target ({host})", ReplyCode.GENERAL_FAILURE
            )
        return (_Input.CONNECT, ConnectRequest(host, port, address_type))

    def _take_early_data(self) -> tuple[_Input, object] | None:
        buf = self._buf
        if not buf:
            return None
        total = self._early_bytes + len(buf)
        if total > self._max_buffer:
            raise _request_error(
                f"client sent {total} bytes after its request before the reply "
                f"(limit {self._max_buffer})",
                ReplyCode.GENERAL_FAILURE,
            )
        self._early_bytes = total
        data = bytes(buf)
        buf.clear()
        return (_Input.EARLY_DATA, data)
