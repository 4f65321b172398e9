"""Tests for the sans-IO SOCKS5 server handshake (vproxy.processor.socks5).

Tier (a) of STYLE rule 10: no sockets. A minimal SOCKS5 client written here, from the
RFCs and independent of the code under test, talks to the server through
:class:`Pair`, which carries bytes between the two (h11's ``tests/helpers.py`` idea).
Raw-byte tables pin the exact wire form of every path.
"""

from __future__ import annotations

import ast
import ipaddress
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from helpers import source_of
from vproxy.processor import socks5
from vproxy.processor.socks5 import (
    TERMINAL_STATES,
    AddressType,
    AuthFailed,
    ConnectRequest,
    Event,
    LocalProtocolError,
    Payload,
    ProtocolError,
    RemoteProtocolError,
    ReplyCode,
    Socks5Error,
    Socks5ServerConnection,
    State,
    encode_reply,
)

# -- a sans-IO client and a client/server pair ------------------------------------------


def creds(user: bytes = b"alice", password: bytes = b"s3cret") -> Callable[[bytes, bytes], bool]:
    """An auth callback accepting exactly one username/password."""
    return lambda u, p: (u, p) == (user, password)


@dataclass
class Reply:
    """A parsed request reply as the client sees it."""

    code: int
    atyp: int
    host: str
    port: int


@dataclass
class Socks5Client:
    """Just enough of a SOCKS5 client to drive the server: encodes what it sends,
    decodes what it gets (greeting answer, RFC 1929 status, request reply)."""

    methods: bytes = b"\x00"
    outgoing: bytearray = field(default_factory=bytearray)
    incoming: bytearray = field(default_factory=bytearray)
    expect: list[str] = field(default_factory=list)
    received: list[object] = field(default_factory=list)

    def greet(self) -> Socks5Client:
        self.outgoing += bytes((5, len(self.methods))) + self.methods
        self.expect.append("method")
        return self

    def login(self, user: bytes, password: bytes) -> Socks5Client:
        self.outgoing += bytes((1, len(user))) + user + bytes((len(password),)) + password
        self.expect.append("auth")
        return self

    def connect(self, host: str, port: int, cmd: int = 1) -> Socks5Client:
        self.outgoing += bytes((5, cmd, 0)) + encode_addr(host) + port.to_bytes(2, "big")
        self.expect.append("reply")
        return self

    def send(self, data: bytes) -> Socks5Client:
        self.outgoing += data
        return self

    def take(self) -> bytes:
        out = bytes(self.outgoing)
        self.outgoing.clear()
        return out

    def receive(self, data: bytes) -> list[object]:
        """Decode whatever complete answers ``data`` finishes."""
        self.incoming += data
        got: list[object] = []
        buf = self.incoming
        while self.expect:
            kind = self.expect[0]
            if kind in ("method", "auth"):
                if len(buf) < 2:
                    break
                got.append((kind, buf[0], buf[1]))
                del buf[:2]
            else:
                if len(buf) < 5:
                    break
                atyp = buf[3]
                alen = {1: 4, 4: 16}.get(atyp, 1 + buf[4])
                if len(buf) < 4 + alen + 2:
                    break
                raw = bytes(buf[4 : 4 + alen])
                if atyp == 1:
                    host = str(ipaddress.IPv4Address(raw))
                elif atyp == 4:
                    host = str(ipaddress.IPv6Address(raw))
                else:
                    host = raw[1:].decode("ascii")
                port = int.from_bytes(buf[4 + alen : 6 + alen], "big")
                got.append(Reply(buf[1], atyp, host, port))
                del buf[: 6 + alen]
            self.expect.pop(0)
        self.received += got
        return got


def encode_addr(host: str) -> bytes:
    """ATYP + address, the client's way."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("ascii") if host.isascii() else host.encode("idna")
        return bytes((3, len(name))) + name
    return bytes((1 if addr.version == 4 else 4,)) + addr.packed


Chunker = Callable[[bytes], Iterable[bytes]]


def whole(data: bytes) -> Iterable[bytes]:
    return [data]


def byte_at_a_time(data: bytes) -> Iterable[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


class Pair:
    """A client and a server with the wire between them (no sockets)."""

    def __init__(
        self,
        client: Socks5Client,
        server: Socks5ServerConnection | None = None,
        chunker: Chunker = whole,
    ) -> None:
        self.client = client
        self.server = server or Socks5ServerConnection()
        self.chunker = chunker
        self.events: list[Event] = []

    def client_to_server(self) -> list[Event]:
        got: list[Event] = []
        for chunk in self.chunker(self.client.take()):
            if self.server.state in TERMINAL_STATES:
                break  # the glue closes here
            got += self.server.receive_data(chunk)
        self.events += got
        return got

    def server_to_client(self) -> list[object]:
        got: list[object] = []
        for chunk in self.chunker(self.server.data_to_send()):
            got += self.client.receive(chunk)
        return got

    def run(self) -> list[Event]:
        got = self.client_to_server()
        self.server_to_client()
        return got


def merge_payload(events: Sequence[Event]) -> list[Event]:
    """Events with consecutive Payloads joined (segmentation splits them arbitrarily)."""
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, Payload) and out and isinstance(out[-1], Payload):
            out[-1] = Payload(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def feed(conn: Socks5ServerConnection, chunks: Iterable[bytes]) -> list[Event]:
    """Feed chunks as the glue does: stop once the handshake has ended."""
    events: list[Event] = []
    for chunk in chunks:
        if conn.state in TERMINAL_STATES:
            break
        events += conn.receive_data(chunk)
    return events


def state_of(conn: Socks5ServerConnection) -> State:
    """``conn.state``, read afresh (mypy keeps a property narrowed across calls)."""
    return conn.state


def refusal(code: int) -> bytes:
    return bytes((5, code, 0, 1, 0, 0, 0, 0, 0, 0))


GREET = b"\x05\x01\x00"
GREET_AUTH = b"\x05\x01\x02"
LOGIN = b"\x01\x05alice\x06s3cret"
REQ_V4 = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50"  # 127.0.0.1:80


# -- raw bytes: every path, exact wire ----------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    events: list[Event]
    sent: bytes
    state: State
    auth: bool = False
    bytewise_events: list[Event] | None = None  # when byte-at-a-time differs


CASES = [
    # greeting
    Case("no-auth", GREET, [], b"\x05\x00", State.REQUEST),
    Case("no-auth-among-many", b"\x05\x03\x01\x02\x00", [], b"\x05\x00", State.REQUEST),
    Case(
        "only-userpass-offered-no-auth-configured",
        b"\x05\x01\x02",
        [ProtocolError("", None)],
        b"\x05\xff",
        State.ERROR,
    ),
    Case("zero-methods", b"\x05\x00", [ProtocolError("", None)], b"\x05\xff", State.ERROR),
    Case("gssapi-only", b"\x05\x01\x01", [ProtocolError("", None)], b"\x05\xff", State.ERROR),
    Case("socks4-greeting", b"\x04\x01\x00\x50", [ProtocolError("", None)], b"", State.ERROR),
    Case("http-greeting", b"GET / HTTP/1.1\r\n", [ProtocolError("", None)], b"", State.ERROR),
    Case(
        "auth-required-client-offers-00",
        GREET,
        [ProtocolError("", None)],
        b"\x05\xff",
        State.ERROR,
        auth=True,
    ),
    Case("auth-required-offers-02", GREET_AUTH, [], b"\x05\x02", State.AUTH, auth=True),
    Case("auth-offers-00-and-02", b"\x05\x02\x00\x02", [], b"\x05\x02", State.AUTH, auth=True),
    # RFC 1929
    Case("auth-good", GREET_AUTH + LOGIN, [], b"\x05\x02\x01\x00", State.REQUEST, auth=True),
    Case(
        "auth-bad-password",
        GREET_AUTH + b"\x01\x05alice\x05wrong",
        [AuthFailed(b"alice")],
        b"\x05\x02\x01\x01",
        State.CLOSED,
        auth=True,
    ),
    Case(
        "auth-empty-user-and-password",
        GREET_AUTH + b"\x01\x00\x00",
        [AuthFailed(b"")],
        b"\x05\x02\x01\x01",
        State.CLOSED,
        auth=True,
    ),
    Case(
        "auth-subnegotiation-version-05",
        GREET_AUTH + b"\x05\x05alice\x06s3cret",
        [ProtocolError("", None)],
        b"\x05\x02\x01\x01",
        State.ERROR,
        auth=True,
    ),
    Case(
        "auth-bad-then-request-dropped",
        GREET_AUTH + b"\x01\x01x\x01y" + REQ_V4,
        [AuthFailed(b"x")],
        b"\x05\x02\x01\x01",
        State.CLOSED,
        auth=True,
    ),
    Case(
        "auth-good-request-pipelined",
        GREET_AUTH + LOGIN + REQ_V4,
        [ConnectRequest("127.0.0.1", 80, AddressType.IPV4)],
        b"\x05\x02\x01\x00",
        State.AWAIT_DECISION,
        auth=True,
    ),
    # request
    Case(
        "ipv4",
        GREET + REQ_V4,
        [ConnectRequest("127.0.0.1", 80, AddressType.IPV4)],
        b"\x05\x00",
        State.AWAIT_DECISION,
    ),
    Case(
        "ipv6",
        GREET + b"\x05\x01\x00\x04" + ipaddress.IPv6Address("2001:db8::1").packed + b"\x01\xbb",
        [ConnectRequest("2001:db8::1", 443, AddressType.IPV6)],
        b"\x05\x00",
        State.AWAIT_DECISION,
    ),
    Case(
        "ipv6-mapped-v4-stays-ipv6",
        GREET + b"\x05\x01\x00\x04" + ipaddress.IPv6Address("::ffff:1.2.3.4").packed + b"\xff\xff",
        [ConnectRequest("::ffff:1.2.3.4", 65535, AddressType.IPV6)],
        b"\x05\x00",
        State.AWAIT_DECISION,
    ),
    Case(
        "domain",
        GREET + b"\x05\x01\x00\x03\x0bexample.com\x00\x50",
        [ConnectRequest("example.com", 80, AddressType.DOMAIN_NAME)],
        b"\x05\x00",
        State.AWAIT_DECISION,
    ),
    Case(
        "domain-spelling-an-ip-stays-domain",
        GREET + b"\x05\x01\x00\x03\x0810.0.0.1\x00\x50",
        [ConnectRequest("10.0.0.1", 80, AddressType.DOMAIN_NAME)],
        b"\x05\x00",
        State.AWAIT_DECISION,
    ),
    Case(
        "domain-utf8-becomes-a-label",
        GREET
        + b"\x05\x01\x00\x03"
        + bytes((len("bücher.de".encode()),))
        + "bücher.de".encode()
        # the line above is the UTF-8 name; its port follows
        + b"\x00\x50",
        [ConnectRequest("xn--bcher-kva.de", 80, AddressType.DOMAIN_NAME)],
        b"\x05\x00",
        State.AWAIT_DECISION,
    ),
    Case(
        "rsv-ignored",
        GREET + b"\x05\x01\xab\x01\x0a\x00\x00\x01\x1f\x90",
        [ConnectRequest("10.0.0.1", 8080, AddressType.IPV4)],
        b"\x05\x00",
        State.AWAIT_DECISION,
    ),
    Case(
        "request-version-04",
        GREET + b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50",
        [ProtocolError("", ReplyCode.GENERAL_FAILURE)],
        b"\x05\x00" + refusal(1),
        State.ERROR,
    ),
    *(
        Case(
            f"cmd-{cmd:02x}",
            GREET + bytes((5, cmd)) + REQ_V4[2:],
            [ProtocolError("", ReplyCode.COMMAND_NOT_SUPPORTED)],
            b"\x05\x00" + refusal(7),
            State.ERROR,
        )
        for cmd in (0x00, 0x02, 0x03, 0xFF)  # 02 BIND, 03 UDP ASSOCIATE
    ),
    *(
        Case(
            f"atyp-{atyp:02x}",
            GREET + bytes((5, 1, 0, atyp)) + b"\x7f\x00\x00\x01\x00\x50",
            [ProtocolError("", ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED)],
            b"\x05\x00" + refusal(8),
            State.ERROR,
        )
        for atyp in (0x00, 0x02, 0x05, 0xFF)
    ),
    Case(
        "empty-domain",
        GREET + b"\x05\x01\x00\x03\x00\x00\x50",
        [ProtocolError("", ReplyCode.GENERAL_FAILURE)],
        b"\x05\x00" + refusal(1),
        State.ERROR,
    ),
    *(
        Case(
            f"bad-domain-{name!r}",
            GREET + b"\x05\x01\x00\x03" + bytes((len(name),)) + name + b"\x00\x50",
            [ProtocolError("", ReplyCode.GENERAL_FAILURE)],
            b"\x05\x00" + refusal(1),
            State.ERROR,
        )
        for name in (
            b"exa\x00mple.com",
            b"example.com\n",
            b"exa mple.com",
            b"\x7f",
            b"\xff\xfe",  # not UTF-8
            "a..ü".encode(),  # UTF-8 but IDNA refuses the empty label
            "ü\x01.de".encode(),  # IDNA refuses the control character
        )
    ),
    Case(
        "port-0-ipv4",
        GREET + b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00",
        [ProtocolError("", ReplyCode.GENERAL_FAILURE)],
        b"\x05\x00" + refusal(1),
        State.ERROR,
    ),
    Case(
        "port-0-domain",
        GREET + b"\x05\x01\x00\x03\x01a\x00\x00",
        [ProtocolError("", ReplyCode.GENERAL_FAILURE)],
        b"\x05\x00" + refusal(1),
        State.ERROR,
    ),
    Case(
        "error-drops-trailing-bytes",
        GREET + b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50" + REQ_V4 + b"more",
        [ProtocolError("", ReplyCode.COMMAND_NOT_SUPPORTED)],
        b"\x05\x00" + refusal(7),
        State.ERROR,
    ),
    # what follows the request
    Case(
        "greeting-request-payload-one-segment",
        GREET + REQ_V4 + b"GET / HTTP/1.1\r\n\r\n",
        [
            ConnectRequest("127.0.0.1", 80, AddressType.IPV4),
            Payload(b"GET / HTTP/1.1\r\n\r\n"),
        ],
        b"\x05\x00",
        State.AWAIT_DECISION,
    ),
    Case(
        "everything-one-segment-with-auth",
        GREET_AUTH + LOGIN + REQ_V4 + b"\x16\x03\x01",
        [ConnectRequest("127.0.0.1", 80, AddressType.IPV4), Payload(b"\x16\x03\x01")],
        b"\x05\x02\x01\x00",
        State.AWAIT_DECISION,
        auth=True,
    ),
    Case(
        "payload-over-max-buffer",
        GREET + REQ_V4 + b"x" * (socks5.DEFAULT_MAX_BUFFER + 1),
        [
            ConnectRequest("127.0.0.1", 80, AddressType.IPV4),
            ProtocolError("", ReplyCode.GENERAL_FAILURE),
        ],
        b"\x05\x00" + refusal(1),
        State.ERROR,
        # Fed a byte at a time, the bytes within the limit came out before the error.
        bytewise_events=[
            ConnectRequest("127.0.0.1", 80, AddressType.IPV4),
            Payload(b"x" * socks5.DEFAULT_MAX_BUFFER),
            ProtocolError("", ReplyCode.GENERAL_FAILURE),
        ],
    ),
    Case(
        "payload-at-max-buffer",
        GREET + REQ_V4 + b"x" * socks5.DEFAULT_MAX_BUFFER,
        [
            ConnectRequest("127.0.0.1", 80, AddressType.IPV4),
            Payload(b"x" * socks5.DEFAULT_MAX_BUFFER),
        ],
        b"\x05\x00",
        State.AWAIT_DECISION,
    ),
]


def _comparable(events: Sequence[Event]) -> list[object]:
    """ProtocolError messages are for humans: compare only their reply code."""
    return [
        ("ProtocolError", ev.reply_code) if isinstance(ev, ProtocolError) else ev
        for ev in merge_payload(events)
    ]


@pytest.mark.parametrize("chunker", [whole, byte_at_a_time], ids=["whole", "bytewise"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_wire_table(case: Case, chunker: Chunker) -> None:
    conn = Socks5ServerConnection(auth=creds() if case.auth else None)
    sent = bytearray()
    events: list[Event] = []
    for chunk in chunker(case.data):
        if conn.state in TERMINAL_STATES:
            break  # the glue closes here
        events += conn.receive_data(chunk)
        sent += conn.data_to_send()
    expected = case.events
    if chunker is byte_at_a_time and case.bytewise_events is not None:
        expected = case.bytewise_events
    assert _comparable(events) == _comparable(expected)
    assert bytes(sent) == case.sent
    assert conn.state is case.state
    for ev in events:
        if isinstance(ev, ProtocolError):
            assert ev.message  # every error says what was wrong


@pytest.mark.parametrize("code", [c for c in ReplyCode if c is not ReplyCode.SUCCEEDED])
def test_reject_every_reply_code(code: ReplyCode) -> None:
    conn = Socks5ServerConnection()
    conn.receive_data(GREET + REQ_V4)
    assert conn.data_to_send() == b"\x05\x00"
    conn.reject(code)
    assert conn.data_to_send() == bytes((5, int(code), 0, 1, 0, 0, 0, 0, 0, 0))
    assert conn.state is State.CLOSED


def test_reject_accepts_plain_int_and_defaults_to_general_failure() -> None:
    conn = Socks5ServerConnection()
    conn.receive_data(GREET + REQ_V4)
    conn.data_to_send()
    conn.reject(5)
    assert conn.data_to_send() == refusal(5)
    conn = Socks5ServerConnection()
    conn.receive_data(GREET + REQ_V4)
    conn.data_to_send()
    conn.reject()
    assert conn.data_to_send() == refusal(1)


def test_reply_codes_are_the_rfc_values() -> None:
    assert [(c.name, c.value) for c in ReplyCode] == [
        ("SUCCEEDED", 0),
        ("GENERAL_FAILURE", 1),
        ("NOT_ALLOWED", 2),
        ("NETWORK_UNREACHABLE", 3),
        ("HOST_UNREACHABLE", 4),
        ("CONNECTION_REFUSED", 5),
        ("TTL_EXPIRED", 6),
        ("COMMAND_NOT_SUPPORTED", 7),
        ("ADDRESS_TYPE_NOT_SUPPORTED", 8),
    ]


@pytest.mark.parametrize(
    ("host", "port", "wire"),
    [
        ("0.0.0.0", 0, b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"),
        ("10.0.0.2", 40000, b"\x05\x00\x00\x01\x0a\x00\x00\x02\x9c\x40"),
        (ipaddress.IPv4Address("1.2.3.4"), 1, b"\x05\x00\x00\x01\x01\x02\x03\x04\x00\x01"),
        ("::1", 65535, b"\x05\x00\x00\x04" + b"\x00" * 15 + b"\x01\xff\xff"),
        ("[::1]", 80, b"\x05\x00\x00\x04" + b"\x00" * 15 + b"\x01\x00\x50"),
        (
            ipaddress.IPv6Address("2001:db8::"),
            80,
            b"\x05\x00\x00\x04\x20\x01\x0d\xb8" + b"\x00" * 12 + b"\x00\x50",
        ),
        ("proxy.local", 1080, b"\x05\x00\x00\x03\x0bproxy.local\x04\x38"),
    ],
)
def test_accept_encodes_bound_address(
    host: str | ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, wire: bytes
) -> None:
    conn = Socks5ServerConnection()
    conn.receive_data(GREET + REQ_V4)
    conn.data_to_send()
    conn.accept(host, port)
    assert conn.data_to_send() == wire
    assert conn.state is State.DONE


def test_accept_defaults_to_zero_address() -> None:
    conn = Socks5ServerConnection()
    conn.receive_data(GREET + REQ_V4)
    conn.data_to_send()
    conn.accept()
    assert conn.data_to_send() == b"\x05\x00\x00\x01" + b"\x00" * 6


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("1.2.3.4", -1),
        ("1.2.3.4", 65536),
        ("bücher", 1),
        ("a" * 256, 1),
        ("", 1),
    ],
)
def test_accept_refuses_unencodable_address(host: str, port: int) -> None:
    conn = Socks5ServerConnection()
    conn.receive_data(GREET + REQ_V4)
    with pytest.raises(LocalProtocolError):
        conn.accept(host, port)
    assert conn.state is State.AWAIT_DECISION  # nothing happened; the caller may retry
    conn.accept("1.2.3.4", 1)
    assert state_of(conn) is State.DONE


def test_encode_reply_is_public() -> None:
    assert encode_reply(ReplyCode.HOST_UNREACHABLE) == refusal(4)


@pytest.mark.parametrize("code", list(ReplyCode))
def test_encode_reply_of_every_code_and_a_bound_address(code: ReplyCode) -> None:
    # (the three leading bytes come from a table for the usual dotted-quad case)
    expected = bytes((5, int(code), 0, 1, 10, 0, 0, 7)) + (40000).to_bytes(2, "big")
    assert encode_reply(code, "10.0.0.7", 40000) == expected
    assert encode_reply(code, "10.0.0.7", 40000) == expected  # the quad remembered
    assert encode_reply(code, "::1", 1)[:4] == bytes((5, int(code), 0, 4))


# -- misuse and the states after the end -------------------------------------------------


@pytest.mark.parametrize(
    "setup",
    [
        b"",  # GREETING
        GREET,  # REQUEST
        GREET + REQ_V4[:5],  # REQUEST, partial
    ],
)
def test_decision_before_a_request_is_local_error(setup: bytes) -> None:
    conn = Socks5ServerConnection()
    conn.receive_data(setup)
    before = conn.state
    with pytest.raises(LocalProtocolError):
        conn.accept()
    with pytest.raises(LocalProtocolError):
        conn.reject(ReplyCode.NOT_ALLOWED)
    assert conn.state is before


def test_decision_in_auth_state_is_local_error() -> None:
    conn = Socks5ServerConnection(auth=creds())
    conn.receive_data(GREET_AUTH)
    with pytest.raises(LocalProtocolError):
        conn.accept()


@pytest.mark.parametrize("code", [0, ReplyCode.SUCCEEDED, 9, 256, -1])
def test_reject_with_bad_code_is_local_error(code: int) -> None:
    conn = Socks5ServerConnection()
    conn.receive_data(GREET + REQ_V4)
    with pytest.raises(LocalProtocolError):
        conn.reject(code)
    assert conn.state is State.AWAIT_DECISION


def test_second_decision_is_local_error() -> None:
    conn = Socks5ServerConnection()
    conn.receive_data(GREET + REQ_V4)
    conn.accept()
    with pytest.raises(LocalProtocolError):
        conn.accept()
    with pytest.raises(LocalProtocolError):
        conn.reject()
    conn = Socks5ServerConnection()
    conn.receive_data(GREET + REQ_V4)
    conn.reject()
    with pytest.raises(LocalProtocolError):
        conn.accept()


def test_receive_after_accept_is_local_error() -> None:
    conn = Socks5ServerConnection()
    conn.receive_data(GREET + REQ_V4)
    conn.accept()
    with pytest.raises(LocalProtocolError, match="handshake is over"):
        conn.receive_data(b"relay bytes")


def test_receive_after_reject_or_auth_failure_is_local_error() -> None:
    conn = Socks5ServerConnection()
    conn.receive_data(GREET + REQ_V4)
    conn.reject()
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")
    conn = Socks5ServerConnection(auth=creds())
    assert conn.receive_data(GREET_AUTH + b"\x01\x01a\x01b") == [AuthFailed(b"a")]
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"")


def test_remote_error_sticks() -> None:
    conn = Socks5ServerConnection()
    (ev,) = conn.receive_data(GREET + b"\x05\x03")
    assert isinstance(ev, ProtocolError)
    assert ev.reply_code is ReplyCode.COMMAND_NOT_SUPPORTED
    assert "0x03" in ev.message
    for _ in range(2):
        with pytest.raises(RemoteProtocolError) as info:
            conn.receive_data(b"anything")
        assert info.value.message == ev.message
        assert info.value.reply_code is ReplyCode.COMMAND_NOT_SUPPORTED
    assert conn.data_to_send() == b"\x05\x00" + refusal(7)
    assert conn.data_to_send() == b""


def test_error_hierarchy() -> None:
    assert issubclass(LocalProtocolError, Socks5Error)
    assert issubclass(RemoteProtocolError, Socks5Error)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)
    err = RemoteProtocolError("x", ReplyCode.TTL_EXPIRED, b"w")
    assert (err.message, err.reply_code, err.wire, str(err)) == (
        "x",
        ReplyCode.TTL_EXPIRED,
        b"w",
        "x",
    )


@pytest.mark.parametrize("bad", [-1, 1.5, "10"])
def test_max_buffer_must_be_a_non_negative_int(bad: object) -> None:
    # A compiled build (setup.py) refuses a value of the wrong type at the call
    # (TypeError, naming the type) before the constructor's own check runs.
    with pytest.raises((ValueError, TypeError), match=r"max_buffer|int object expected"):
        Socks5ServerConnection(max_buffer=bad)  # type: ignore[arg-type]


def test_error_messages_are_clear() -> None:
    def message(data: bytes, auth: bool = False) -> str:
        conn = Socks5ServerConnection(auth=creds() if auth else None)
        (ev,) = [e for e in conn.receive_data(data) if isinstance(e, ProtocolError)]
        return ev.message

    assert "not SOCKS5" in message(b"\x04")
    assert "no acceptable method" in message(b"\x05\x01\x02")
    assert "02 (username/password)" in message(GREET, auth=True)
    assert "subnegotiation version" in message(GREET_AUTH + b"\x02", auth=True)
    assert "command 0x02 is not supported" in message(GREET + b"\x05\x02")
    assert "address type 0x07" in message(GREET + b"\x05\x01\x00\x07")
    assert "empty domain" in message(GREET + b"\x05\x01\x00\x03\x00")
    assert "control character" in message(GREET + b"\x05\x01\x00\x03\x01\x01\x00\x50")
    assert "neither ASCII nor UTF-8" in message(GREET + b"\x05\x01\x00\x03\x01\xff\x00\x50")
    assert "port 0" in message(GREET + b"\x05\x01\x00\x01\x01\x01\x01\x01\x00\x00")
    last = Socks5ServerConnection(max_buffer=0).receive_data(GREET + REQ_V4 + b"x")[-1]
    assert isinstance(last, ProtocolError)
    assert "limit 0" in last.message


# -- segmentation, pipelining, early data ------------------------------------------------


def test_auth_callback_sees_exact_credentials_and_username_is_kept() -> None:
    seen: list[tuple[bytes, bytes]] = []

    def auth(user: bytes, password: bytes) -> bool:
        seen.append((user, password))
        return True

    conn = Socks5ServerConnection(auth=auth)
    user, password = bytes(range(1, 256)), b"\x00" * 255  # longest, any bytes
    conn.receive_data(GREET_AUTH + b"\x01\xff" + user + b"\xff" + password)
    assert seen == [(user, password)]
    assert conn.username == user
    assert conn.auth_required
    assert not Socks5ServerConnection().auth_required
    assert Socks5ServerConnection().username is None


def test_auth_callback_exception_propagates_and_leaves_state() -> None:
    def auth(user: bytes, password: bytes) -> bool:
        raise KeyError("backend down")

    conn = Socks5ServerConnection(auth=auth)
    with pytest.raises(KeyError):
        conn.receive_data(GREET_AUTH + LOGIN)
    assert conn.state is State.AUTH


@pytest.mark.parametrize("chunker", [whole, byte_at_a_time], ids=["whole", "bytewise"])
@pytest.mark.parametrize(
    ("host", "atyp"),
    [
        ("192.0.2.7", AddressType.IPV4),
        ("2001:db8::dead:beef", AddressType.IPV6),
        ("::", AddressType.IPV6),
        ("example.org", AddressType.DOMAIN_NAME),
        (".".join(["a" * 63] * 4), AddressType.DOMAIN_NAME),  # 255: the most ATYP 03 holds
        ("b" * 255, AddressType.DOMAIN_NAME),
        ("-_.~!$&'()*+,;=", AddressType.DOMAIN_NAME),  # printable ASCII passes as is
        ("::ffff:10.1.2.3", AddressType.IPV6),
    ],
    ids=[
        "ipv4",
        "ipv6",
        "ipv6-any",
        "domain",
        "domain-255-labels",
        "domain-255",
        "punct",
        "mapped",
    ],
)
@pytest.mark.parametrize("auth", [False, True], ids=["noauth", "auth"])
def test_client_server_pair(host: str, atyp: AddressType, auth: bool, chunker: Chunker) -> None:
    client = Socks5Client(methods=b"\x02" if auth else b"\x00")
    server = Socks5ServerConnection(auth=creds() if auth else None)
    pair = Pair(client, server, chunker)
    client.greet()
    assert pair.run() == []
    assert client.received == [("method", 5, 2 if auth else 0)]
    if auth:
        client.login(b"alice", b"s3cret")
        assert pair.run() == []
        assert client.received[-1] == ("auth", 1, 0)
    client.connect(host, 65535)
    assert pair.run() == [ConnectRequest(host, 65535, atyp)]
    assert server.state is State.AWAIT_DECISION
    server.accept("198.51.100.1", 5555)
    pair.server_to_client()
    assert client.received[-1] == Reply(0, 1, "198.51.100.1", 5555)
    assert state_of(server) is State.DONE


@pytest.mark.parametrize("chunker", [whole, byte_at_a_time], ids=["whole", "bytewise"])
def test_pair_optimistic_client_sends_everything_at_once(chunker: Chunker) -> None:
    client = Socks5Client(methods=b"\x00\x02")
    pair = Pair(client, Socks5ServerConnection(auth=creds()), chunker)
    client.greet().login(b"alice", b"s3cret").connect("example.com", 443).send(b"hello")
    events = merge_payload(pair.run())
    assert events == [
        ConnectRequest("example.com", 443, AddressType.DOMAIN_NAME),
        Payload(b"hello"),
    ]
    assert client.received == [("method", 5, 2), ("auth", 1, 0)]
    pair.server.reject(ReplyCode.HOST_UNREACHABLE)
    pair.server_to_client()
    assert client.received[-1] == Reply(4, 1, "0.0.0.0", 0)


def test_pair_wrong_password() -> None:
    client = Socks5Client(methods=b"\x02")
    pair = Pair(client, Socks5ServerConnection(auth=creds()))
    client.greet().login(b"alice", b"nope").connect("example.com", 443)
    assert pair.run() == [AuthFailed(b"alice")]
    assert client.received == [("method", 5, 2), ("auth", 1, 1)]


def test_early_data_accumulates_across_calls_up_to_the_limit() -> None:
    conn = Socks5ServerConnection(max_buffer=10)
    assert conn.receive_data(GREET + REQ_V4 + b"12345") == [
        ConnectRequest("127.0.0.1", 80, AddressType.IPV4),
        Payload(b"12345"),
    ]
    assert conn.receive_data(b"") == []
    assert conn.receive_data(b"67890") == [Payload(b"67890")]
    (ev,) = conn.receive_data(b"!")
    assert isinstance(ev, ProtocolError)
    assert ev.reply_code is ReplyCode.GENERAL_FAILURE
    assert conn.data_to_send() == b"\x05\x00" + refusal(1)
    with pytest.raises(LocalProtocolError):
        conn.accept()


def test_zero_max_buffer_allows_exactly_the_request() -> None:
    conn = Socks5ServerConnection(max_buffer=0)
    assert conn.receive_data(GREET + REQ_V4) == [ConnectRequest("127.0.0.1", 80, AddressType.IPV4)]
    conn.accept()
    assert conn.state is State.DONE


def split_everywhere(data: bytes, cuts: int) -> Iterator[list[bytes]]:
    """Every way of cutting ``data`` at ``cuts`` positions (empty pieces included)."""
    for points in itertools.combinations_with_replacement(range(len(data) + 1), cuts):
        bounds = [0, *points, len(data)]
        yield [data[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize(
    ("data", "auth"),
    [
        (GREET + REQ_V4 + b"pay", False),
        (GREET_AUTH + LOGIN + b"\x05\x01\x00\x03\x03a.b\x00\x01", True),
        (GREET + b"\x05\x01\x00\x03\x00", False),
    ],
)
def test_every_two_cut_segmentation_agrees(data: bytes, auth: bool) -> None:
    def run(chunks: list[bytes]) -> tuple[list[object], bytes, State]:
        conn = Socks5ServerConnection(auth=creds() if auth else None)
        events = feed(conn, chunks)
        return _comparable(events), conn.data_to_send(), conn.state

    expected = run([data])
    for chunks in split_everywhere(data, 2):
        assert run(chunks) == expected, chunks


# -- the module's boundaries -------------------------------------------------------------


def test_module_does_no_io() -> None:
    tree = ast.parse(source_of(socks5).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "selectors", "time", "vproxy"}


def test_events_are_slotted() -> None:
    for event in (
        ConnectRequest("a", 1, AddressType.DOMAIN_NAME),
        AuthFailed(b"u"),
        ProtocolError("m", None),
        Payload(b"x"),
    ):
        assert not hasattr(event, "__dict__"), event  # slotted (or compiled)
    with pytest.raises(AttributeError):
        Payload(b"x").other = b"y"  # type: ignore[attr-defined]
