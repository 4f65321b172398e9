"""Pure tests of group selection in an upstream (SPEC §1 "Upstream").

Server groups are made without an event-loop group (no health checks run) and
made healthy with ``set_healthy``. No sockets, no sleeping.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vproxy.component.server_group import ServerGroup
from vproxy.component.upstream import (
    Upstream,
    UpstreamError,
    hint_match_level,
    normalize_host,
)

BIG = settings(max_examples=2000, deadline=None)
MID = settings(max_examples=300, deadline=None)

_next_ip = iter(range(1, 1 << 24))


def group(
    name: str,
    *,
    healthy: bool = True,
    host: str | None = None,
    server_weight: int = 10,
) -> ServerGroup:
    """A group with one server (on a fresh address) that is UP unless ``healthy`` is False."""
    g = ServerGroup(name, annotations={"host": host} if host else None)
    n = next(_next_ip)
    s = g.add(f"{name}-svr", (f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", 80), server_weight)
    if healthy:
        g.set_healthy(s, True)
    return g


def upstream(*members: tuple[ServerGroup, int]) -> Upstream:
    u = Upstream("ups")
    for g, w in members:
        u.add(g, w)
    return u


def names(u: Upstream, n: int, hint: str | None = None) -> list[str | None]:
    return [g.name if (g := u.select_group(hint)) else None for _ in range(n)]


# -- normalize_host / hint_match_level ---------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("example.com:8080", "example.com"),
        ("EXAMPLE.com.:443", "example.com"),
        ("  api.example.com  ", "api.example.com"),
        ("10.0.0.1:80", "10.0.0.1"),
        ("[::1]:8080", "::1"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),  # bare IPv6: the colons are not a port
        ("", ""),
    ],
)
def test_normalize_host(raw: str, norm: str) -> None:
    assert normalize_host(raw) == norm


label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)
hostname = st.lists(label, min_size=1, max_size=4).map(".".join)


@MID
@given(host=hostname, port=st.integers(1, 65535), upper=st.booleans(), dot=st.booleans())
def test_normalize_host_strips_case_port_and_trailing_dot(
    host: str, port: int, upper: bool, dot: bool
) -> None:
    raw = (host.upper() if upper else host) + ("." if dot else "") + f":{port}"
    assert normalize_host(raw) == host
    assert normalize_host(normalize_host(raw)) == host  # idempotent


@pytest.mark.parametrize(
    ("hint", "host", "level"),
    [
        ("example.com", "example.com", 3),
        ("a.example.com", "example.com", 2),
        ("a.b.example.com", "example.com", 2),
        ("example.com", "a.example.com", 1),
        ("badexample.com", "example.com", 0),  # a suffix is not a subdomain
        ("example.com", "badexample.com", 0),
        ("example.org", "example.com", 0),
        ("", "example.com", 0),
        ("example.com", "", 0),
    ],
)
def test_hint_match_level(hint: str, host: str, level: int) -> None:
    assert hint_match_level(hint, host) == level


@MID
@given(a=hostname, b=hostname)
def test_hint_match_level_is_consistent(a: str, b: str) -> None:
    assert (hint_match_level(a, b) == 3) == (a == b)
    assert (hint_match_level(a, b) == 2) == (hint_match_level(b, a) == 1)
    assert hint_match_level(f"x.{a}", a) == 2
    assert hint_match_level(a, f"x.{a}") == 1


# -- hint matching -----------------------------------------------------------------------
def test_hint_exact_beats_subdomain_beats_superdomain() -> None:
    exact = group("api.example.com")
    parent = group("example.com")
    child = group("v1.api.example.com")
    other = group("other.org")
    u = upstream((child, 1), (parent, 1), (exact, 1), (other, 1))
    assert names(u, 5, "api.example.com") == ["api.example.com"] * 5
    u.remove("api.example.com")
    assert names(u, 5, "api.example.com") == ["example.com"] * 5  # hint is a subdomain
    u.remove("example.com")
    assert names(u, 5, "api.example.com") == ["v1.api.example.com"] * 5  # host is one
    u.remove("v1.api.example.com")
    assert names(u, 3, "api.example.com") == ["other.org"] * 3  # no match: WRR


def test_hint_prefers_the_closest_parent_domain() -> None:
    u = upstream((group("example.com"), 1), (group("b.example.com"), 1))
    assert names(u, 3, "a.b.example.com") == ["b.example.com"] * 3


def test_hint_matches_host_annotation_as_well_as_name() -> None:
    web = group("web", host="www.example.com")
    api = group("api", host="API.Example.com.")  # annotation normalised too
    u = upstream((web, 1), (api, 1))
    assert names(u, 3, "www.example.com") == ["web"] * 3
    assert names(u, 3, "api.example.com:8443") == ["api"] * 3
    assert names(u, 3, "api") == ["api"] * 3  # the name still matches
    assert names(u, 3, "x.www.example.com") == ["web"] * 3


def test_hint_annotation_exact_beats_name_subdomain() -> None:
    by_name = group("example.com")
    by_host = group("svc", host="shop.example.com")
    u = upstream((by_name, 1), (by_host, 1))
    assert names(u, 3, "shop.example.com") == ["svc"] * 3


@pytest.mark.parametrize("hint", ["API.EXAMPLE.COM", "api.example.com.", "api.example.com:443"])
def test_hint_ignores_case_trailing_dot_and_port(hint: str) -> None:
    u = upstream((group("api.example.com"), 1), (group("other"), 100))
    assert names(u, 4, hint) == ["api.example.com"] * 4


def test_ipv6_hint_with_port_matches() -> None:
    u = upstream((group("v6", host="[2001:db8::1]"), 1), (group("other"), 100))
    assert names(u, 2, "[2001:DB8::1]:443") == ["v6"] * 2


@pytest.mark.parametrize("why", ["unhealthy", "group-weight-0", "server-weight-0"])
def test_unusable_groups_are_not_matched(why: str) -> None:
    target = group(
        "api.example.com",
        healthy=why != "unhealthy",
        server_weight=0 if why == "server-weight-0" else 10,
    )
    fallback = group("fallback")
    u = upstream((target, 0 if why == "group-weight-0" else 1), (fallback, 1))
    assert names(u, 4, "api.example.com") == ["fallback"] * 4
    assert names(u, 4) == ["fallback"] * 4


def test_hint_falls_back_to_a_weaker_usable_match() -> None:
    u = upstream((group("api.example.com", healthy=False), 1), (group("example.com"), 1))
    assert names(u, 2, "api.example.com") == ["example.com"] * 2


# -- WRR across groups -------------------------------------------------------------------
def test_wrr_across_groups_1_to_3_over_a_cycle() -> None:
    u = upstream((group("a"), 1), (group("b"), 3))
    got = names(u, 4)
    assert Counter(got) == {"a": 1, "b": 3}
    assert Counter(names(u, 400)) == {"a": 100, "b": 300}
    # a hint that matches nothing is the same as no hint
    assert Counter(names(u, 400, "nothing.example")) == {"a": 100, "b": 300}


def test_a_light_healthy_group_is_not_starved_by_a_heavy_dead_one() -> None:
    # regression: WRR over all groups skipping dead picks gave up after len(groups)
    # tries, so a 1:10 upstream with the heavy group down mostly returned None
    u = upstream((group("light"), 1), (group("heavy", healthy=False), 10))
    assert names(u, 50) == ["light"] * 50


def test_update_weight_and_health_change_the_cycle() -> None:
    a, b = group("a"), group("b")
    u = upstream((a, 1), (b, 1))
    names(u, 1)  # mid-cycle
    u.update("b", weight=3)
    assert Counter(names(u, 4)) == {"a": 1, "b": 3}
    a.set_healthy(a.servers[0], False)
    assert names(u, 4) == ["b"] * 4
    a.set_healthy(a.servers[0], True)
    assert Counter(names(u, 4)) == {"a": 1, "b": 3}
    u.update("a", weight=0)
    assert names(u, 4) == ["b"] * 4


members = st.lists(
    st.tuples(st.integers(0, 12), st.booleans(), st.integers(0, 3)),  # weight, up, server weight
    min_size=1,
    max_size=6,
)


@BIG
@given(spec=members, skip=st.integers(0, 20), cycles=st.integers(1, 2))
def test_wrr_cycle_over_usable_groups(
    spec: list[tuple[int, bool, int]], skip: int, cycles: int
) -> None:
    groups = [group(f"g{i}", healthy=up, server_weight=sw) for i, (_, up, sw) in enumerate(spec)]
    u = upstream(*((g, w) for g, (w, _, _) in zip(groups, spec, strict=True)))
    want = {f"g{i}": w for i, (w, up, sw) in enumerate(spec) if w > 0 and up and sw > 0}
    total = sum(want.values())
    names(u, skip)  # wherever the cycle is now, a full one from a change on is exact
    u.update("g0", weight=spec[0][0])  # a change (same value) restarts the cycle
    got = names(u, total * cycles)
    if not want:
        assert names(u, 3) == [None] * 3
        return
    assert Counter(got) == {k: v * cycles for k, v in want.items()}
    for _ in range(5):  # every pick leads to a server
        assert u.next("10.1.2.3") is not None


@MID
@given(spec=members, hint=hostname)
def test_select_returns_only_usable_groups(spec: list[tuple[int, bool, int]], hint: str) -> None:
    groups = [
        group(f"h{i}.example", healthy=up, server_weight=sw) for i, (_, up, sw) in enumerate(spec)
    ]
    u = upstream(*((g, w) for g, (w, _, _) in zip(groups, spec, strict=True)))
    usable: set[str | None] = {
        f"h{i}.example" for i, (w, up, sw) in enumerate(spec) if w > 0 and up and sw > 0
    }
    for h in (hint, None, "h0.example", f"x.{hint}"):
        got = u.select_group(h)
        assert (got.name if got else None) in (usable or {None})


@MID
@given(a=st.integers(1, 50), b=st.integers(1, 50), hint=hostname)
def test_best_match_wins_regardless_of_weights(a: int, b: int, hint: str) -> None:
    assume(not hint.endswith("zz.example"))
    u = upstream((group("zz.example"), a), (group(hint), b))
    assert names(u, 3, hint) == [hint] * 3
    assert names(u, 3, f"sub.{hint}") == [hint] * 3


# -- next, membership, errors --------------------------------------------------------------
def test_next_returns_a_server_of_the_chosen_group() -> None:
    a, b = group("a"), group("b")
    u = upstream((a, 1), (b, 1))
    assert u.next("1.2.3.4", hint="b") is b.servers[0]
    assert {u.next() for _ in range(2)} == {a.servers[0], b.servers[0]}
    assert Upstream("empty").next() is None
    assert Upstream("empty").select_group("x") is None


def test_find_server() -> None:
    a = group("a")
    u = upstream((a, 1))
    s = a.servers[0]
    assert u.find_server(s.host, 80) is s
    assert u.find_server(s.host, 81) is None


def test_membership_changes() -> None:
    a, b = group("a"), group("b")
    u = upstream((a, 2))
    handle = u.add(b)
    assert handle.weight == 10  # the default
    assert [(h.group.name, h.weight) for h in u.groups] == [("a", 2), ("b", 10)]
    assert u.remove("a") is a
    assert [h.group for h in u.groups] == [b]
    assert repr(u) == "Upstream('ups', [('b', 10)])"
    with pytest.raises(KeyError):
        u.remove("a")
    with pytest.raises(KeyError):
        u.update("a", weight=1)


def test_duplicate_group_is_refused() -> None:
    u = upstream((group("a"), 1))
    with pytest.raises(UpstreamError, match=r"server-group a is already in upstream ups"):
        u.add(group("a"), 1)
    assert len(u.groups) == 1


@pytest.mark.parametrize("weight", [-1, 10_001, 2.5, "3", None])
def test_bad_group_weight_is_refused(weight: object) -> None:
    # Another type: a TypeError from the call when compiled (as in test_server_group).
    bad = r"weight must be an integer 0\.\.10000, got|object expected; got"
    u = upstream((group("a"), 4))
    with pytest.raises((UpstreamError, TypeError), match=bad):
        u.add(group("b"), weight)  # type: ignore[arg-type]
    with pytest.raises((UpstreamError, TypeError), match=bad):
        u.update("a", weight=weight)  # type: ignore[arg-type]
    assert [(h.group.name, h.weight) for h in u.groups] == [("a", 4)]


_LABELS = st.sampled_from(["a", "b", "example", "com", "test"])
_HOSTS = st.lists(_LABELS, min_size=1, max_size=3).map(".".join)


@MID
@given(
    names=st.lists(_HOSTS, min_size=1, max_size=4, unique=True),
    hosts=st.lists(st.none() | _HOSTS, min_size=4, max_size=4),
    healthy=st.lists(st.booleans(), min_size=4, max_size=4),
    hints=st.lists(_HOSTS.map(lambda h: h.upper() + ":8080"), min_size=1, max_size=6),
)
def test_cached_hint_ranking_picks_what_a_fresh_match_picks(
    names: list[str], hosts: list[str | None], healthy: list[bool], hints: list[str]
) -> None:
    ups = Upstream("u")
    for i, name in enumerate(names):
        ups.add(group(name, host=hosts[i], healthy=healthy[i]), 10)
    for hint in hints * 2:  # the second pass comes from the cache
        fresh = ups._match(normalize_host(hint))
        if fresh is not None:
            assert ups.select_group(hint) is fresh


def test_hint_cache_follows_annotations_membership_and_stays_bounded() -> None:
    ups = Upstream("u")
    a = group("a.test")
    b = group("b.test")
    ups.add(a, 10)
    ups.add(b, 10)
    assert ups.select_group("x.b.test") is b
    b.annotations = {"host": "other.test"}  # as `update server-group ... annotations`
    a.annotations = {"host": "x.b.test"}
    assert ups.select_group("x.b.test") is a
    ups.remove("a.test")
    assert ups.select_group("x.b.test") is b  # the name still matches as a parent
    for i in range(3000):  # client-chosen hints cannot grow the cache without bound
        ups.select_group(f"h{i}.example")
    assert len(ups._hints) <= 1024
