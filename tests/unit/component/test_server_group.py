"""Pure tests of the server-group balancing policy (SPEC §1 "ServerGroup").

Groups are made without an event-loop group, so no health check runs: health is
flipped by hand with ``set_healthy``. No sockets, no sleeping (but for the test of
``set_local_health_checks``, which needs a loop to show a check started).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vproxy.component import server_group as sg_mod
from vproxy.component.health_check import HealthCheckConfig
from vproxy.component.server_group import (
    Method,
    Server,
    ServerGroup,
    ServerGroupError,
    SmoothWrr,
    pick_source,
    pick_wlc,
)

BIG = settings(max_examples=2000, deadline=None)  # the properties that matter most
MID = settings(max_examples=300, deadline=None)


def make_group(
    weights: Sequence[int],
    healthy: Sequence[bool] | None = None,
    method: Method | str = Method.WRR,
) -> tuple[ServerGroup, list[Server]]:
    """A group with servers s0, s1, ... at 10.0.0.<i+1>:80 with the given weights."""
    g = ServerGroup("g", method=method)
    servers = [g.add(f"s{i}", (f"10.0.0.{i + 1}", 80), w) for i, w in enumerate(weights)]
    for s, up in zip(
        servers, healthy if healthy is not None else [True] * len(servers), strict=True
    ):
        if up:
            g.set_healthy(s, True)
    return g, servers


def picks(g: ServerGroup, n: int, source: str | None = None) -> list[Server | None]:
    return [g.next(source) for _ in range(n)]


def expected_cycle(servers: Sequence[Server]) -> dict[str, int]:
    return {s.name: s.weight for s in servers if s.healthy and s.weight > 0}


def counts(chosen: Sequence[Server | None]) -> dict[str, int]:
    assert None not in chosen
    return dict(Counter(s.name for s in chosen if s is not None))


ipv4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))


# -- SmoothWrr ----------------------------------------------------------------------------
def next_int(wrr: SmoothWrr) -> int:
    """The next pick of a WRR over integer items (not None: callers have weights)."""
    item = wrr.next()
    assert isinstance(item, int)
    return item


wrr_weights = st.lists(st.integers(0, 40), min_size=1, max_size=8)


@BIG
@given(weights=wrr_weights, cycles=st.integers(1, 3))
def test_smooth_wrr_full_cycle_returns_each_item_weight_times(
    weights: list[int], cycles: int
) -> None:
    wrr = SmoothWrr(list(range(len(weights))), weights)
    total = sum(weights)
    seq = [next_int(wrr) for _ in range(total * cycles)]
    if total == 0:
        assert wrr.next() is None
        return
    # every window of `total` consecutive picks, not just the first, is a full cycle
    want = {i: w for i, w in enumerate(weights) if w > 0}
    for start in range(0, len(seq) - total + 1, max(1, total // 3)):
        assert dict(Counter(seq[start : start + total])) == want
    assert all(weights[i] > 0 for i in seq)  # weight 0 never


@MID
@given(weights=wrr_weights.filter(lambda ws: sum(ws) > 0))
def test_smooth_wrr_is_smooth(weights: list[int]) -> None:
    """No item ever runs a whole pick ahead of its fair share.

    Sound bound: the state values sum to 0 after each pick and the picked value
    is the maximum (>= total/n > 0) before ``total`` is taken off, so every value
    stays above ``-total``; value_i = k*w_i - total*count_i, hence
    ``count_i < k*w_i/total + 1`` after any k picks.
    """
    wrr = SmoothWrr(list(range(len(weights))), weights)
    total = sum(weights)
    seen = [0] * len(weights)
    for k in range(1, 2 * total + 1):
        seen[next_int(wrr)] += 1
        for i, w in enumerate(weights):
            assert seen[i] * total < k * w + total


@MID
@given(weights=wrr_weights, n=st.integers(0, 200))
def test_smooth_wrr_is_deterministic(weights: list[int], n: int) -> None:
    a = SmoothWrr(list(range(len(weights))), weights)
    b = SmoothWrr(list(range(len(weights))), weights)
    assert [a.next() for _ in range(n)] == [b.next() for _ in range(n)]


def test_smooth_wrr_known_sequence() -> None:
    # the nginx example: weights 5, 1, 1 -> a a b a c a a
    wrr = SmoothWrr(["a", "b", "c"], [5, 1, 1])
    assert [wrr.next() for _ in range(7)] == list("aabacaa")


def test_smooth_wrr_empty_and_all_zero() -> None:
    assert SmoothWrr([], []).next() is None
    assert SmoothWrr(["a", "b"], [0, 0]).next() is None


def test_smooth_wrr_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="zip"):
        SmoothWrr(["a", "b"], [1])


# -- ServerGroup, wrr ----------------------------------------------------------------------
def test_wrr_1_2_3_over_600_picks() -> None:
    g, _ = make_group([1, 2, 3])
    assert counts(picks(g, 600)) == {"s0": 100, "s1": 200, "s2": 300}


def test_servers_start_down_and_none_healthy_means_none() -> None:
    g, servers = make_group([1, 2, 3], healthy=[False, False, False])
    assert not any(s.healthy for s in servers)
    assert g.healthy_servers == ()
    for method in Method:
        g.set_method(method)
        assert g.next("10.1.1.1") is None


@pytest.mark.parametrize("method", list(Method))
def test_only_zero_weight_servers_healthy_means_none(method: Method) -> None:
    g, _ = make_group([0, 0, 5], healthy=[True, True, False], method=method)
    assert picks(g, 10, "10.1.1.1") == [None] * 10


health_and_weight = st.lists(st.tuples(st.integers(0, 12), st.booleans()), min_size=1, max_size=6)


@MID
@given(servers=health_and_weight)
def test_unhealthy_and_zero_weight_servers_are_never_returned(
    servers: list[tuple[int, bool]],
) -> None:
    weights = [w for w, _ in servers]
    g, members = make_group(weights, healthy=[up for _, up in servers])
    want = expected_cycle(members)
    total = sum(want.values())
    for method in Method:
        g.set_method(method)
        for i in range(max(total, 5)):
            got = g.next(f"10.9.{i // 256}.{i % 256}")
            if not want:
                assert got is None
            else:
                assert got is not None
                assert got.healthy
                assert got.weight > 0
        if method is Method.WRR:
            g.set_method(Method.WRR)  # restarts the cycle
            chosen = picks(g, total)
            assert (counts(chosen) if want else {}) == want


changes = st.lists(
    st.tuples(
        st.integers(0, 30),  # picks before the change (a partial cycle)
        st.integers(0, 5),  # which server
        st.one_of(
            st.tuples(st.just("weight"), st.integers(0, 12)),
            st.tuples(st.just("health"), st.booleans()),
        ),
    ),
    max_size=6,
)


@BIG
@given(initial=health_and_weight, ops=changes)
def test_wrr_cycle_holds_from_each_change_on(
    initial: list[tuple[int, bool]],
    ops: list[tuple[int, int, tuple[str, object]]],
) -> None:
    g, members = make_group([w for w, _ in initial], healthy=[up for _, up in initial])
    for before, idx, (kind, value) in ops:
        picks(g, before)  # stop somewhere in the middle of a cycle
        s = members[idx % len(members)]
        if kind == "weight":
            assert isinstance(value, int)
            g.update_server(s.name, weight=value)
            assert s.weight == value
        else:
            assert isinstance(value, bool)
            g.set_healthy(s, value)
            assert s.healthy is value
        want = expected_cycle(members)
        total = sum(want.values())
        chosen = picks(g, total)
        assert (counts(chosen) if total else {}) == want
        if not total:
            assert g.next() is None


def test_set_healthy_twice_is_one_edge_and_listeners_hear_it() -> None:
    g, (a, b) = make_group([1, 1], healthy=[False, False])
    heard: list[tuple[str, bool]] = []

    def broken(server: Server, up: bool) -> None:
        raise RuntimeError("listener bug")

    g.add_health_listener(broken)  # a failing listener does not stop the others
    g.add_health_listener(lambda s, up: heard.append((s.name, up)))
    g.set_healthy(a, True)
    g.set_healthy(a, True)
    g.set_healthy(b, True)
    g.set_healthy(a, False)
    assert heard == [("s0", True), ("s1", True), ("s0", False)]
    assert g.healthy_servers == (b,)
    g.remove_health_listener(broken)
    g.remove_health_listener(broken)  # absent: ignored


def test_the_edge_observer_hears_every_group_after_its_listeners() -> None:
    g, (a, b) = make_group([1, 1], healthy=[False, False])
    h, (c,) = make_group([1], healthy=[False])
    heard: list[tuple[str, str, bool]] = []
    g.add_health_listener(lambda s, up: heard.append(("listener", s.name, up)))

    def observer(group: ServerGroup, server: Server, up: bool) -> None:
        heard.append((group.name + "/" + ("g" if group is g else "h"), server.name, up))
        if server is b:
            raise RuntimeError("observer bug")  # logged; the edge still happened

    sg_mod.set_edge_observer(observer)
    try:
        g.set_healthy(a, True)
        g.set_healthy(a, True)  # no edge
        g.set_healthy(b, True)
        h.set_healthy(c, True)
        assert g.healthy_servers == (a, b)
        g.remove("s0")
        g.set_healthy(a, False)  # removed: no edge for anyone
    finally:
        sg_mod.set_edge_observer(None)
    g.set_healthy(b, False)
    assert heard == [
        ("listener", "s0", True),
        ("g/g", "s0", True),
        ("listener", "s1", True),
        ("g/g", "s1", True),
        ("g/h", "s0", True),
        ("listener", "s1", False),
    ]


def test_servers_get_no_check_where_local_checks_are_off() -> None:
    from vproxy.net.event_loop import EventLoopGroup

    elg = EventLoopGroup("hc", loops=1)
    g = ServerGroup("g", event_loop_group=elg)
    try:
        checked = g.add("a", ("127.0.0.1", 9))
        sg_mod.set_local_health_checks(False)
        try:
            unchecked = g.add("b", ("127.0.0.1", 10))
        finally:
            sg_mod.set_local_health_checks(True)
        assert checked._health_client is not None
        assert unchecked._health_client is None
        assert not unchecked.healthy  # it waits for set_healthy
        g.set_healthy(unchecked, True)
        assert g.healthy_servers == (unchecked,)
    finally:
        g.close()
        elg.close()


def test_removed_server_is_never_returned_and_its_edges_ignored() -> None:
    g, (a, b) = make_group([5, 1])
    heard: list[str] = []
    g.add_health_listener(lambda s, up: heard.append(s.name))
    assert g.remove("s0") is a
    assert set(picks(g, 12)) == {b}
    g.set_healthy(a, False)
    assert heard == []
    with pytest.raises(KeyError):
        g.remove("s0")
    with pytest.raises(KeyError):
        g.update_server("s0", weight=3)
    with pytest.raises(KeyError):
        g.get("s0")
    assert g.get("s1") is b
    assert g.servers == (b,)


def test_set_method_accepts_names_and_rejects_others() -> None:
    g, _ = make_group([1])
    g.set_method("wlc")
    assert g.method is Method.WLC
    with pytest.raises(ServerGroupError, match=r"method must be one of wrr, wlc, source, got 'rr'"):
        g.set_method("rr")
    assert g.method is Method.WLC
    with pytest.raises(ServerGroupError, match="method must be one of"):
        ServerGroup("x", method="least-conn")


def test_set_health_config_reaches_every_server() -> None:
    g, (a, b) = make_group([1, 1], healthy=[False, False])
    a.health.feed(True)  # one success towards the default up=2
    assert g.connect_timeout_ms == HealthCheckConfig().timeout
    cfg = HealthCheckConfig(up=1, down=1, timeout=250)
    g.set_health_config(cfg)
    assert g.health_config is cfg
    assert g.connect_timeout_ms == 250  # sessions' connects follow the check's timeout
    assert ServerGroup("t", health_check=cfg).connect_timeout_ms == 250
    assert a.health.config is cfg
    assert b.health.config is cfg
    assert a.health.feed(True) is True
    c = g.add("s9", ("10.0.0.9", 80), 1)
    assert c.health.config is cfg  # new servers use the group's settings


# -- wlc --------------------------------------------------------------------------------
def loaded(weights: Sequence[int], loads: Sequence[int]) -> list[Server]:
    servers = []
    for i, (w, n) in enumerate(zip(weights, loads, strict=True)):
        s = Server(f"s{i}", f"10.0.0.{i + 1}", 80, w, None)
        for _ in range(n):
            s.session_opened(object())
        servers.append(s)
    return servers


@BIG
@given(
    spec=st.lists(st.tuples(st.integers(0, 10), st.integers(0, 20)), max_size=8),
    start=st.integers(0, 1000),
)
def test_pick_wlc_minimises_active_per_weight(spec: list[tuple[int, int]], start: int) -> None:
    servers = loaded([w for w, _ in spec], [n for _, n in spec])
    got = pick_wlc(servers, start)
    usable = [s for s in servers if s.weight > 0]
    if not usable:
        assert got is None
        return
    assert got is not None
    best = min(Fraction(s.active, s.weight) for s in usable)
    assert Fraction(got.active, got.weight) == best
    # among the tied, the first at or after `start` (in rotation order) wins
    n = len(servers)
    order = [servers[(start + k) % n] for k in range(n)]
    tied = [s for s in order if s.weight > 0 and Fraction(s.active, s.weight) == best]
    assert got is tied[0]


def test_pick_wlc_ties_rotate_with_start() -> None:
    servers = loaded([2, 2, 2], [1, 1, 1])
    assert [pick_wlc(servers, k) for k in range(6)] == servers * 2
    assert pick_wlc([]) is None


def test_pick_wlc_weighs_sessions() -> None:
    # 4 sessions on weight 4 (1 each) beats 2 on weight 1
    servers = loaded([1, 4], [2, 4])
    assert pick_wlc(servers) is servers[1]
    servers[1].session_opened(object())  # 5/4 still < 2/1
    assert pick_wlc(servers) is servers[1]


def test_group_wlc_spreads_equal_servers_and_avoids_loaded_ones() -> None:
    g, servers = make_group([1, 1, 1], method="wlc")
    assert {s.name for s in picks(g, 3) if s} == {"s0", "s1", "s2"}  # ties rotate
    for s in servers[:2]:
        s.session_opened(object())
    assert set(picks(g, 5)) == {servers[2]}
    sess = object()
    servers[2].session_opened(sess)
    servers[2].session_opened(object())
    assert servers[2] not in picks(g, 5)
    servers[2].session_closed(sess, 10, 20)
    assert (servers[2].closed_bytes_in, servers[2].closed_bytes_out) == (10, 20)
    assert servers[2].active == 1


# -- source -----------------------------------------------------------------------------
@BIG
@given(sources=st.lists(ipv4, min_size=1, max_size=60, unique=True), gone=st.integers(0, 3))
def test_source_removing_one_of_four_remaps_only_its_sources(sources: list[str], gone: int) -> None:
    g, servers = make_group([10, 10, 20, 5], method="source")
    before = {src: g.next(src) for src in sources}
    assert before == {src: g.next(src) for src in sources}  # same source, same server
    g.remove(servers[gone].name)
    for src in sources:
        after = g.next(src)
        assert after is not None
        if before[src] is servers[gone]:
            assert after is not servers[gone]
        else:
            assert after is before[src]


@MID
@given(
    sources=st.lists(ipv4 | st.builds("127.0.0.{}".format, st.integers(0, 255)), max_size=60),
    weight=st.integers(1, 30),
)
def test_source_adding_a_server_only_takes_sources_onto_it(sources: list[str], weight: int) -> None:
    g, _ = make_group([10, 10, 10], method="source")
    before = {src: g.next(src) for src in sources}
    new = g.add("new", ("10.0.1.1", 80), weight)
    g.set_healthy(new, True)
    for src in sources:
        after = g.next(src)
        assert after is before[src] or after is new


@MID
@given(sources=st.lists(ipv4, min_size=1, max_size=60), down=st.integers(0, 2))
def test_source_unhealthy_server_moves_only_its_sources_and_they_come_back(
    sources: list[str], down: int
) -> None:
    g, servers = make_group([3, 3, 3], method="source")
    before = {src: g.next(src) for src in sources}
    g.set_healthy(servers[down], False)
    for src in sources:
        after = g.next(src)
        assert after is not servers[down]
        if before[src] is not servers[down]:
            assert after is before[src]
    g.set_healthy(servers[down], True)
    assert before == {src: g.next(src) for src in sources}


def test_source_is_stable_across_groups_with_the_same_servers() -> None:
    g1, _ = make_group([1, 2, 3], method="source")
    g2, _ = make_group([1, 2, 3], method="source")
    for i in range(256):
        a, b = g1.next(f"192.168.0.{i}"), g2.next(f"192.168.0.{i}")
        assert a is not None
        assert b is not None
        assert a.name == b.name
    assert g1.next() is g1.next(None)  # no source: still a server, always the same


def test_source_distribution_follows_weights() -> None:
    g, _ = make_group([1, 2, 3, 4], method="source")
    n = 10_000
    got = Counter(
        s.name for i in range(n) if (s := g.next(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"))
    )
    assert sum(got.values()) == n
    for i, w in enumerate([1, 2, 3, 4]):
        share = got[f"s{i}"] / n
        assert abs(share - w / 10) < 0.03, (got, i)


def test_pick_source_skips_zero_weight_and_handles_empty() -> None:
    servers = loaded([0, 0], [0, 0])
    assert pick_source(servers, "1.2.3.4") is None
    assert pick_source([], "1.2.3.4") is None
    servers = loaded([0, 7], [0, 0])
    assert all(pick_source(servers, f"1.2.3.{i}") is servers[1] for i in range(50))


def test_unit_hash_never_reaches_one() -> None:
    # the largest 64-bit digest once rounded to 1.0 and made log() zero
    for digest in (b"\xff" * 8, b"\x00" * 8):
        u = sg_mod._unit(digest)
        assert 0.0 < u < 1.0
        assert math.log(u) < 0.0
    assert sg_mod._unit_hash(b"x") == sg_mod._unit(hashlib.blake2b(b"x", digest_size=8).digest())


# -- errors and plumbing ------------------------------------------------------------------
def test_duplicate_name_is_refused() -> None:
    g, _ = make_group([1])
    with pytest.raises(ServerGroupError, match=r"server s0 already exists in server-group g"):
        g.add("s0", ("10.0.0.99", 80))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("10.0.0.1", 80), ("10.0.0.1", 80)),
        (("::1", 80), ("0:0::1", 80)),
        (("2001:db8::1", 443), ("2001:DB8:0::1", 443)),
    ],
)
def test_duplicate_address_is_refused(first: tuple[str, int], second: tuple[str, int]) -> None:
    g = ServerGroup("g")
    a = g.add("a", first)
    with pytest.raises(ServerGroupError, match=r"server a in server-group g already has address"):
        g.add("b", second)
    assert g.servers == (a,)


def test_same_host_other_port_is_fine() -> None:
    g = ServerGroup("g")
    g.add("a", ("10.0.0.1", 80))
    g.add("b", ("10.0.0.1", 81))
    assert [s.address for s in g.servers] == [("10.0.0.1", 80), ("10.0.0.1", 81)]


# Values of another type: compiled (setup.py), the call itself refuses them with a
# TypeError naming the expected type, and a bool passes as 0 or 1; interpreted, the
# method's own check refuses them. Either way nothing changes.
BAD_TYPE = r"must be an integer .*, got|object expected; got"


@pytest.mark.parametrize("weight", [-1, 10_001, 1.5, "10", None])
def test_bad_weight_is_refused(weight: object) -> None:
    g, (s,) = make_group([4])
    with pytest.raises((ServerGroupError, TypeError), match=BAD_TYPE):
        g.add("x", ("10.0.0.50", 80), weight)  # type: ignore[arg-type]
    with pytest.raises((ServerGroupError, TypeError), match=BAD_TYPE):
        g.update_server("s0", weight=weight)  # type: ignore[arg-type]
    assert s.weight == 4
    assert len(g.servers) == 1


@pytest.mark.parametrize("port", [0, -1, 65536, "80", 80.0])
def test_bad_port_is_refused(port: object) -> None:
    g = ServerGroup("g")
    with pytest.raises((ServerGroupError, TypeError), match=BAD_TYPE):
        g.add("x", ("10.0.0.1", port))  # type: ignore[arg-type]
    assert g.servers == ()


@pytest.mark.parametrize("host", ["example.com", "", "1.2.3", "10.0.0.256", "localhost"])
def test_non_ip_host_is_refused(host: str) -> None:
    g = ServerGroup("g")
    with pytest.raises(ServerGroupError, match=r"server address must be an IP address, got"):
        g.add("x", (host, 80))


def test_closed_group_refuses_servers() -> None:
    g, _ = make_group([1])
    g.close()
    with pytest.raises(ServerGroupError, match=r"server-group g is closed"):
        g.add("x", ("10.0.0.77", 80))


def test_server_presentation() -> None:
    g = ServerGroup("g")
    v4 = g.add("a", ("10.0.0.1", 80), 3)
    v6 = g.add("b", ("2001:DB8::1", 443))
    assert v4.address_text == "10.0.0.1:80"
    assert v6.host == "2001:db8::1"  # normalised
    assert v6.address_text == "[2001:db8::1]:443"
    assert v6.address == ("2001:db8::1", 443)
    assert repr(v4) == "Server('a', 10.0.0.1:80, w=3, DOWN)"
    g.set_healthy(v4, True)
    assert "UP" in repr(v4)
    assert v6.weight == 10  # the default
    v4.connect_failed()
    assert v4.connect_failures == 1
