"""Property tests for the SOCKS5 server handshake (vproxy.processor.socks5).

Three claims, each checked by hypothesis:

* any bytes, cut anywhere, give events or a ``Socks5Error`` and nothing else, and the
  events obey the contract (errors last, well-formed requests);
* how the bytes are cut does not change the outcome;
* the transition table is total and has no dead end, and the object follows it.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
from collections import deque
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vproxy.processor.socks5 import (
    _TRANSITIONS,
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
    _Action,
    _Input,
)

FUZZ = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROPERTY = settings(max_examples=500, deadline=None, database=None)


def check_auth(user: bytes, password: bytes) -> bool:
    return (user, password) == (b"u", b"p")


# -- inputs: random bytes, and real handshakes with damage -------------------------------


@st.composite
def handshakes(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A plausible client stream (greeting, maybe login, request, payload) and whether
    the server should require auth."""
    auth = draw(st.booleans())
    # Mostly what a real client sends, so the fuzz gets past the greeting and login;
    # the damaged() strategy and raw binary cover the rest.
    good = b"\x02" if auth else b"\x00"
    methods = draw(st.sampled_from([good, good, good, b"\x01\x00\x02", b"", b"\x01"]))
    out = bytes((5, len(methods))) + methods
    if auth:
        user = draw(st.sampled_from([b"u", b"u", b"u", b"x", b""]))
        password = draw(st.sampled_from([b"p", b"p", b"p", b"y", b""]))
        out += bytes((1, len(user))) + user + bytes((len(password),)) + password
    atyp = draw(st.sampled_from([1, 1, 3, 3, 3, 4, 4, 0, 2]))
    if atyp == 1:
        addr = draw(st.binary(min_size=4, max_size=4))
    elif atyp == 4:
        addr = draw(st.binary(min_size=16, max_size=16))
    elif atyp == 3:
        name = draw(
            st.one_of(
                st.text(max_size=40).map(lambda t: t.encode("utf-8")),
                st.binary(max_size=255),
                st.lists(
                    st.sampled_from([b"a", b"example", b"xn--bcher-kva", b"c0-m"]),
                    min_size=1,
                    max_size=4,
                ).map(b".".join),
            )
        )
        name = name[:255]
        addr = bytes((len(name),)) + name
    else:
        addr = draw(st.binary(max_size=6))
    cmd = draw(st.sampled_from([1, 1, 1, 1, 1, 2, 3]))
    port = draw(st.sampled_from([0, 1, 80, 80, 443, 65535]))
    out += bytes((5, cmd, draw(st.integers(0, 255)), atyp)) + addr + port.to_bytes(2, "big")
    out += draw(st.binary(max_size=64))
    return out, auth


@st.composite
def damaged(draw: st.DrawFn) -> tuple[bytes, bool]:
    data, auth = draw(handshakes())
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        if not buf:
            break
        i = draw(st.integers(0, len(buf) - 1))
        op = draw(st.sampled_from(["flip", "drop", "insert"]))
        if op == "flip":
            buf[i] = draw(st.integers(0, 255))
        elif op == "drop":
            del buf[i]
        else:
            buf[i:i] = draw(st.binary(min_size=1, max_size=3))
    return bytes(buf), auth


streams = st.one_of(
    st.tuples(st.binary(max_size=600), st.booleans()),
    handshakes(),
    handshakes(),  # twice: intact handshakes reach the deep states most often
    damaged(),
)


def cut(data: bytes, seed: int) -> list[bytes]:
    """Cut ``data`` at up to 12 places chosen by ``seed`` (one draw, not twelve)."""
    rng = random.Random(seed)
    points = [rng.randint(0, len(data)) for _ in range(seed % 13)]
    bounds = sorted({0, len(data), *points})
    return [data[a:b] for a, b in itertools.pairwise(bounds)] or [b""]


def run(
    data: bytes, chunks: list[bytes], auth: bool, max_buffer: int = 4096
) -> tuple[list[object], bytes, State]:
    """Feed like the glue does (stop at a terminal state); comparable outcome."""
    conn = Socks5ServerConnection(auth=check_auth if auth else None, max_buffer=max_buffer)
    events: list[Event] = []
    for chunk in chunks:
        if conn.state in TERMINAL_STATES:
            break
        events += conn.receive_data(chunk)
    merged: list[object] = []
    for ev in events:
        if isinstance(ev, Payload) and merged and isinstance(merged[-1], Payload):
            merged[-1] = Payload(merged[-1].data + ev.data)
        elif isinstance(ev, ProtocolError):
            merged.append(("ProtocolError", ev.reply_code))
        else:
            merged.append(ev)
    return merged, conn.data_to_send(), conn.state


# -- any bytes: events or Socks5Error, nothing else ---------------------------------------


def check_event(ev: Event) -> None:
    if isinstance(ev, ConnectRequest):
        assert 1 <= ev.port <= 65535
        if ev.address_type is AddressType.IPV4:
            assert str(ipaddress.IPv4Address(ev.host)) == ev.host
        elif ev.address_type is AddressType.IPV6:
            assert ipaddress.IPv6Address(ev.host)
            assert "[" not in ev.host
        else:
            assert ev.host.isascii()
            assert all(0x21 <= ord(c) <= 0x7E for c in ev.host)
            assert ev.host
    elif isinstance(ev, Payload):
        assert ev.data
    elif isinstance(ev, ProtocolError):
        assert ev.message
        assert ev.reply_code is None or ev.reply_code is not ReplyCode.SUCCEEDED
    else:
        assert isinstance(ev, AuthFailed)


@FUZZ
@given(
    stream=streams,
    seed=st.integers(0, 2**32),
    max_buffer=st.sampled_from([0, 5, 4096]),
    after=st.binary(max_size=4),
)
def test_any_bytes_in_any_segmentation(
    stream: tuple[bytes, bool], seed: int, max_buffer: int, after: bytes
) -> None:
    data, auth = stream
    conn = Socks5ServerConnection(auth=check_auth if auth else None, max_buffer=max_buffer)
    events: list[Event] = []
    for chunk in [*cut(data, seed), after]:  # keeps feeding after the end, too
        state = conn.state
        try:
            got = conn.receive_data(chunk)
        except Socks5Error as exc:
            error: Socks5Error | None = exc
        else:
            error = None
        if error is not None:
            assert state in TERMINAL_STATES
            assert conn.state is state
            assert isinstance(error, RemoteProtocolError) == (state is State.ERROR)
            break
        events += got
        for ev in got:
            check_event(ev)
        finals = [i for i, ev in enumerate(got) if isinstance(ev, ProtocolError | AuthFailed)]
        assert finals in ([], [len(got) - 1])  # an ending event is the last one
        if any(isinstance(ev, ProtocolError) for ev in got):
            assert conn.state is State.ERROR
        if any(isinstance(ev, AuthFailed) for ev in got):
            assert conn.state is State.CLOSED
    requests = [ev for ev in events if isinstance(ev, ConnectRequest)]
    assert len(requests) <= 1
    if any(isinstance(ev, Payload) for ev in events):
        assert isinstance(events[0], ConnectRequest)
    assert sum(len(ev.data) for ev in events if isinstance(ev, Payload)) <= max_buffer
    # The caller's decision still works, or fails only as LocalProtocolError.
    try:
        conn.accept("192.0.2.1", 1)
    except LocalProtocolError:
        assert conn.state is not State.AWAIT_DECISION
    else:
        assert conn.state is State.DONE


@FUZZ
@given(stream=streams, seed=st.integers(0, 2**32))
def test_segmentation_does_not_change_the_outcome(stream: tuple[bytes, bool], seed: int) -> None:
    data, auth = stream
    assert run(data, cut(data, seed), auth) == run(data, [data], auth)


_usual = st.builds(
    lambda ip, port, rsv, tail, greeting: greeting + bytes((5, 1, rsv, 1)) + ip + port + tail,
    ip=st.binary(min_size=4, max_size=4),
    port=st.sampled_from([b"\x00\x00", b"\x00\x50", b"\xff\xff"]) | st.binary(max_size=2),
    rsv=st.sampled_from([0, 0, 0, 7]),
    tail=st.binary(max_size=12),
    greeting=st.sampled_from([b"\x05\x01\x00", b"\x05\x02\x00\x02", b"\x05\x01\x02", b""]),
)


@FUZZ
@given(
    data=_usual | streams.map(lambda s: s[0]),
    seed=st.integers(0, 2**32),
    max_buffer=st.sampled_from([0, 5, 4096]),
    auth=st.booleans(),
    decision=st.sampled_from(
        [None, ("127.0.0.1", 4321), ("::1", 80), ("a.example", 1), ("0.0.0.0", 0), "reject"]
    ),
)
def test_fast_path_matches_the_table(
    data: bytes, seed: int, max_buffer: int, auth: bool, decision: object
) -> None:
    """The usual handshake's shortcut gives what the transition table gives: events,
    bytes to send, state and errors, however the bytes are cut; and so does the
    caller's decision after it (accept with a bound address, or reject), including
    at the wrong time (LocalProtocolError)."""

    def outcome(shortcut: bool) -> tuple[object, ...]:
        conn = Socks5ServerConnection(auth=check_auth if auth else None, max_buffer=max_buffer)
        conn._shortcut = shortcut
        events: list[object] = []
        error: tuple[str, object] | None = None
        for chunk in cut(data, seed):
            try:
                got = conn.receive_data(chunk)
            except Socks5Error as exc:
                error = (type(exc).__name__, exc.reply_code)
                break
            events += [("PE", e.reply_code) if isinstance(e, ProtocolError) else e for e in got]
        sent = conn.data_to_send()
        misuse = None
        try:
            if decision == "reject":
                conn.reject(ReplyCode.CONNECTION_REFUSED)
            elif isinstance(decision, tuple):
                conn.accept(*decision)
        except LocalProtocolError as exc:
            misuse = str(exc)
        return events, sent, conn.data_to_send(), conn.state, error, misuse

    assert outcome(True) == outcome(False)


@settings(max_examples=200, deadline=None, database=None)
@given(stream=streams)
def test_byte_at_a_time_matches_whole(stream: tuple[bytes, bool]) -> None:
    data, auth = stream
    bytewise = [data[i : i + 1] for i in range(len(data))]
    assert run(data, bytewise, auth) == run(data, [data], auth)


# -- the transition table ---------------------------------------------------------------


def progress_edges(state: State) -> list[tuple[_Input, State]]:
    return [
        (inp, nxt)
        for inp in _Input
        for action, nxt in [_TRANSITIONS[(state, inp)]]
        if action is not _Action.MISUSE
    ]


def reachable(start: State) -> set[State]:
    seen = {start}
    todo = deque([start])
    while todo:
        for _, nxt in progress_edges(todo.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_table_is_total_and_misuse_never_moves() -> None:
    assert set(_TRANSITIONS) == {(s, i) for s in State for i in _Input}
    for (state, _), (action, nxt) in _TRANSITIONS.items():
        if action is _Action.MISUSE:
            assert nxt is state


def test_terminal_states_only_refuse() -> None:
    for state in TERMINAL_STATES:
        assert progress_edges(state) == []


def test_every_state_is_reachable_and_every_action_used() -> None:
    assert reachable(State.GREETING) == set(State)
    used = {action for action, _ in _TRANSITIONS.values()}
    assert used == set(_Action)


def test_peer_error_ends_every_live_state() -> None:
    for state in set(State) - TERMINAL_STATES:
        assert _TRANSITIONS[(state, _Input.PEER_ERROR)] == (_Action.FAIL, State.ERROR)


@PROPERTY
@given(inputs=st.lists(st.sampled_from(list(_Input)), max_size=60))
def test_no_walk_reaches_a_dead_end(inputs: list[_Input]) -> None:
    state = State.GREETING
    for inp in inputs:
        action, state = _TRANSITIONS[(state, inp)]
        assert isinstance(action, _Action)
        assert isinstance(state, State)
        # wherever we are, the handshake can still finish
        assert reachable(state) & TERMINAL_STATES
        if state not in TERMINAL_STATES:
            assert progress_edges(state)


Op = Callable[[Socks5ServerConnection], object]

OPS: dict[str, bytes | None] = {
    "greet-none": b"\x05\x01\x00",
    "greet-userpass": b"\x05\x01\x02",
    "login-good": b"\x01\x01u\x01p",
    "login-bad": b"\x01\x01u\x01q",
    "request": b"\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50",
    "garbage": b"\x09",
    "payload": b"data",
    "accept": None,
    "reject": None,
}


@PROPERTY
@given(auth=st.booleans(), ops=st.lists(st.sampled_from(sorted(OPS)), max_size=12))
def test_object_follows_the_table(auth: bool, ops: list[str]) -> None:
    conn = Socks5ServerConnection(auth=check_auth if auth else None)
    for op in ops:
        before = conn.state
        if op in ("accept", "reject"):
            inp = _Input.ACCEPT if op == "accept" else _Input.REJECT
            action, expected = _TRANSITIONS[(before, inp)]
            if action is _Action.MISUSE:
                with pytest.raises(LocalProtocolError):
                    conn.accept() if op == "accept" else conn.reject()
            else:
                conn.accept() if op == "accept" else conn.reject()
            assert conn.state is expected
            continue
        data = OPS[op]
        assert data is not None
        if before in TERMINAL_STATES:
            error = RemoteProtocolError if before is State.ERROR else LocalProtocolError
            with pytest.raises(error):
                conn.receive_data(data)
            assert conn.state is before
            continue
        conn.receive_data(data)
        assert conn.state in reachable(before)
