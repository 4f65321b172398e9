"""Tests for security groups (vproxy.component.security_group): pure policy, no sockets.

Table tests pin the matching rules (/0, /32, /128, IPv4-mapped sources, inclusive port
ranges, first match wins, the default); a hypothesis property compares ``allowed``
with a brute-force reference written with ``ipaddress`` containment; a thread test
checks readers never see a half-made edit.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vproxy.component.security_group import (
    Network,
    SecurityGroup,
    SecurityGroupError,
    SecurityGroupRule,
    parse_network,
)

RuleSpec = tuple[str, str, int, int, bool]  # network, protocol, low, high, allow


def group(default: bool, *specs: RuleSpec) -> SecurityGroup:
    g = SecurityGroup("g", default_allow=default)
    for i, (net, proto, low, high, allow) in enumerate(specs):
        g.add_rule(SecurityGroupRule(f"r{i}", net, proto, low, high, allow))
    return g


ALL_TCP = ("TCP", 0, 65535)

# (rules, default, source, protocol, port, expected)
Case = tuple[Sequence[RuleSpec], bool, str, str, int, bool]
CASES: dict[str, Case] = {
    # the default when nothing matches
    "no-rules-default-allow": ((), True, "10.0.0.1", "TCP", 80, True),
    "no-rules-default-deny": ((), False, "10.0.0.1", "TCP", 80, False),
    "no-match-default-allow": (
        (("10.0.0.0/8", *ALL_TCP, False),),
        True,
        "11.0.0.1",
        "TCP",
        80,
        True,
    ),
    "no-match-default-deny": (
        (("10.0.0.0/8", *ALL_TCP, True),),
        False,
        "11.0.0.1",
        "TCP",
        80,
        False,
    ),
    # /0
    "v4-any-matches-v4": ((("0.0.0.0/0", *ALL_TCP, True),), False, "203.0.113.9", "TCP", 1, True),
    "v4-any-not-v6": ((("0.0.0.0/0", *ALL_TCP, True),), False, "2001:db8::1", "TCP", 1, False),
    "v6-any-matches-v6": ((("::/0", *ALL_TCP, True),), False, "2001:db8::1", "TCP", 1, True),
    "v6-any-not-v4": ((("::/0", *ALL_TCP, True),), False, "10.0.0.1", "TCP", 1, False),
    "v6-any-not-mapped-v4": (
        (("::/0", *ALL_TCP, True),),
        False,
        "::ffff:10.0.0.1",
        "TCP",
        1,
        False,
    ),
    # /32 and /128
    "v4-host-exact": ((("192.0.2.7/32", *ALL_TCP, True),), False, "192.0.2.7", "TCP", 9, True),
    "v4-host-neighbour": ((("192.0.2.7/32", *ALL_TCP, True),), False, "192.0.2.8", "TCP", 9, False),
    "v4-bare-address-is-host": (
        (("192.0.2.7", *ALL_TCP, True),),
        False,
        "192.0.2.7",
        "TCP",
        9,
        True,
    ),
    "v6-host-exact": ((("2001:db8::7/128", *ALL_TCP, True),), False, "2001:db8::7", "TCP", 9, True),
    "v6-host-other-spelling": (
        (("2001:db8::7/128", *ALL_TCP, True),),
        False,
        "2001:0db8:0000::0007",
        "TCP",
        9,
        True,
    ),
    "v6-host-neighbour": (
        (("2001:db8::7/128", *ALL_TCP, True),),
        False,
        "2001:db8::8",
        "TCP",
        9,
        False,
    ),
    "v4-prefix-edge-in": (
        (("10.1.0.0/16", *ALL_TCP, True),),
        False,
        "10.1.255.255",
        "TCP",
        9,
        True,
    ),
    "v4-prefix-edge-out": ((("10.1.0.0/16", *ALL_TCP, True),), False, "10.2.0.0", "TCP", 9, False),
    "v6-prefix-in": (
        (("2001:db8::/32", *ALL_TCP, True),),
        False,
        "2001:db8:ffff::1",
        "TCP",
        9,
        True,
    ),
    "v6-prefix-out": ((("2001:db8::/32", *ALL_TCP, True),), False, "2001:db9::1", "TCP", 9, False),
    # IPv4-mapped IPv6 sources and rules
    "mapped-source-v4-rule": (
        (("10.0.0.0/8", *ALL_TCP, True),),
        False,
        "::ffff:10.1.2.3",
        "TCP",
        9,
        True,
    ),
    "mapped-source-v4-host": (
        (("10.1.2.3/32", *ALL_TCP, True),),
        False,
        "::ffff:10.1.2.3",
        "TCP",
        9,
        True,
    ),
    "mapped-source-v4-any": (
        (("0.0.0.0/0", *ALL_TCP, True),),
        False,
        "::ffff:1.1.1.1",
        "TCP",
        9,
        True,
    ),
    "mapped-source-miss": (
        (("10.0.0.0/8", *ALL_TCP, True),),
        False,
        "::ffff:11.1.2.3",
        "TCP",
        9,
        False,
    ),
    "mapped-hex-spelling": (
        (("10.0.0.0/8", *ALL_TCP, True),),
        False,
        "::ffff:a01:203",
        "TCP",
        9,
        True,
    ),
    "mapped-rule-v4-source": (
        (("::ffff:10.0.0.0/104", *ALL_TCP, True),),
        False,
        "10.9.9.9",
        "TCP",
        9,
        True,
    ),
    "mapped-rule-mapped-source": (
        (("::ffff:0:0/96", *ALL_TCP, True),),
        False,
        "::ffff:192.0.2.1",
        "TCP",
        9,
        True,
    ),
    "mapped-rule-not-v6": (
        (("::ffff:0:0/96", *ALL_TCP, True),),
        False,
        "2001:db8::1",
        "TCP",
        9,
        False,
    ),
    "compat-not-mapped": ((("10.0.0.0/8", *ALL_TCP, True),), False, "::10.1.2.3", "TCP", 9, False),
    # ports, inclusive
    "port-low-edge": ((("0.0.0.0/0", "TCP", 80, 90, True),), False, "10.0.0.1", "TCP", 80, True),
    "port-high-edge": ((("0.0.0.0/0", "TCP", 80, 90, True),), False, "10.0.0.1", "TCP", 90, True),
    "port-below": ((("0.0.0.0/0", "TCP", 80, 90, True),), False, "10.0.0.1", "TCP", 79, False),
    "port-above": ((("0.0.0.0/0", "TCP", 80, 90, True),), False, "10.0.0.1", "TCP", 91, False),
    "port-single": ((("0.0.0.0/0", "TCP", 443, 443, True),), False, "10.0.0.1", "TCP", 443, True),
    "port-65535": (
        (("0.0.0.0/0", "TCP", 65535, 65535, True),),
        False,
        "10.0.0.1",
        "TCP",
        65535,
        True,
    ),
    # protocol
    "udp-rule-tcp-client": (
        (("0.0.0.0/0", "UDP", 0, 65535, True),),
        False,
        "10.0.0.1",
        "TCP",
        53,
        False,
    ),
    "udp-rule-udp-client": (
        (("0.0.0.0/0", "UDP", 0, 65535, True),),
        False,
        "10.0.0.1",
        "UDP",
        53,
        True,
    ),
    "protocol-any-case": (
        (("0.0.0.0/0", "tcp", 0, 65535, True),),
        False,
        "10.0.0.1",
        "Tcp",
        1,
        True,
    ),
    # order: the first match wins
    "deny-before-allow": (
        (("10.0.0.0/8", *ALL_TCP, False), ("10.0.0.0/8", *ALL_TCP, True)),
        True,
        "10.0.0.1",
        "TCP",
        1,
        False,
    ),
    "allow-before-deny": (
        (("10.0.0.0/8", *ALL_TCP, True), ("10.0.0.0/8", *ALL_TCP, False)),
        False,
        "10.0.0.1",
        "TCP",
        1,
        True,
    ),
    "narrow-exception-first": (
        (("10.0.0.5/32", *ALL_TCP, False), ("10.0.0.0/8", *ALL_TCP, True)),
        False,
        "10.0.0.5",
        "TCP",
        1,
        False,
    ),
    "narrow-exception-after-is-shadowed": (
        (("10.0.0.0/8", *ALL_TCP, True), ("10.0.0.5/32", *ALL_TCP, False)),
        False,
        "10.0.0.5",
        "TCP",
        1,
        True,
    ),
    "miss-falls-through-to-later-rule": (
        (("10.0.0.0/8", "UDP", 0, 65535, False), ("10.0.0.0/8", "TCP", 1000, 2000, False)),
        True,
        "10.0.0.5",
        "TCP",
        1500,
        False,
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_allowed_table(case: Case) -> None:
    specs, default, source, protocol, port, expected = case
    g = group(default, *specs)
    assert g.allowed(source, protocol, port) is expected
    assert g.allowed(ipaddress.ip_address(source), protocol, port) is expected
    assert reference(g.rules, default, source, protocol, port) is expected


# -- rules: validation and messages ----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("r", "10.0.0.1/8", "TCP", 1, 2, True),
            r"host bits are set in 10\.0\.0\.1/8 \(did you mean 10\.0\.0\.0/8\?\)",
        ),
        (("r", "2001:db8::1/32", "TCP", 1, 2, True), r"host bits are set .*2001:db8::/32"),
        (("r", "10.0.0.0/33", "TCP", 1, 2, True), "is not a CIDR network"),
        (("r", "banana", "TCP", 1, 2, True), "is not a CIDR network"),
        (("r", "", "TCP", 1, 2, True), "is not a CIDR network"),
        (("r", 42, "TCP", 1, 2, True), "must be an IP network"),
        (
            ("r", "10.0.0.0/8", "SCTP", 1, 2, True),
            r"unknown protocol 'SCTP' \(expected TCP or UDP\)",
        ),
        (("r", "10.0.0.0/8", "", 1, 2, True), "unknown protocol"),
        (("r", "10.0.0.0/8", None, 1, 2, True), "unknown protocol"),
        (("r", "10.0.0.0/8", "TCP", 90, 80, True), "port range 90,80 is empty: low is above high"),
        (("r", "10.0.0.0/8", "TCP", -1, 80, True), r"port_low -1 is outside 0\.\.65535"),
        (("r", "10.0.0.0/8", "TCP", 1, 65536, True), r"port_high 65536 is outside 0\.\.65535"),
        (("r", "10.0.0.0/8", "TCP", True, 80, True), "port_low must be an int"),
        (("r", "10.0.0.0/8", "TCP", 1, 8.0, True), "port_high must be an int"),
        (("r", "10.0.0.0/8", "TCP", 1, 2, "yes"), "allow must be a bool"),
        (("", "10.0.0.0/8", "TCP", 1, 2, True), "rule name must be a non-empty string"),
    ],
)
def test_rule_validation(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(SecurityGroupError, match=message):
        SecurityGroupRule(*args)  # type: ignore[arg-type]


def test_security_group_error_is_a_value_error() -> None:
    assert issubclass(SecurityGroupError, ValueError)


def test_rule_accepts_network_objects_and_normalizes() -> None:
    net = ipaddress.ip_network("2001:db8::/32")
    rule = SecurityGroupRule("r", net, "udp", 53, 53, False)
    assert (rule.name, rule.network, rule.protocol, rule.port_low, rule.port_high, rule.allow) == (
        "r",
        net,
        "UDP",
        53,
        53,
        False,
    )
    assert rule == SecurityGroupRule("r", "2001:db8::/32", "UDP", 53, 53, False)
    assert hash(rule) == hash(SecurityGroupRule("r", "2001:db8::/32", "UDP", 53, 53, False))
    assert rule != SecurityGroupRule("r", "2001:db8::/32", "UDP", 53, 53, True)
    assert rule != "r"
    assert "2001:db8::/32" in repr(rule)


def test_rule_is_immutable() -> None:
    rule = SecurityGroupRule("r", "10.0.0.0/8", "TCP", 1, 2, True)
    with pytest.raises(AttributeError):
        rule._allow = False
    with pytest.raises(AttributeError):
        rule.allow = False  # type: ignore[misc]


def test_rule_matches() -> None:
    rule = SecurityGroupRule("r", "10.0.0.0/8", "TCP", 80, 80, False)
    assert rule.matches("10.2.3.4", "TCP", 80)
    assert rule.matches("::ffff:10.2.3.4", "tcp", 80)
    assert not rule.matches("10.2.3.4", "UDP", 80)
    assert not rule.matches("10.2.3.4", "TCP", 81)


def test_parse_network() -> None:
    assert parse_network("10.0.0.0/8") == ipaddress.IPv4Network("10.0.0.0/8")
    assert parse_network("::/0") == ipaddress.IPv6Network("::/0")
    assert parse_network("1.2.3.4") == ipaddress.IPv4Network("1.2.3.4/32")
    with pytest.raises(SecurityGroupError, match="host bits"):
        parse_network("1.2.3.4/0")


# -- groups: editing --------------------------------------------------------------------


def test_rules_keep_their_order_and_names_are_unique() -> None:
    g = SecurityGroup("secg0", default_allow=True)
    a = SecurityGroupRule("a", "10.0.0.0/8", "TCP", 1, 2, True)
    b = SecurityGroupRule("b", "10.0.0.0/8", "TCP", 1, 2, False)
    c = SecurityGroupRule("c", "::/0", "UDP", 1, 2, False)
    for rule in (a, b, c):
        g.add_rule(rule)
    assert g.rules == (a, b, c)
    with pytest.raises(SecurityGroupError, match="security group 'secg0' already has a rule 'b'"):
        g.add_rule(SecurityGroupRule("b", "0.0.0.0/0", "UDP", 1, 2, True))
    assert list(g.rules) == [a, b, c]
    assert g.remove_rule("b") is b
    assert list(g.rules) == [a, c]
    with pytest.raises(SecurityGroupError, match="security group 'secg0' has no rule 'b'"):
        g.remove_rule("b")
    g.add_rule(b)  # the name is free again; it goes last
    assert list(g.rules) == [a, c, b]
    assert g.get_rule("c") is c
    with pytest.raises(SecurityGroupError, match="has no rule 'zz'"):
        g.get_rule("zz")
    with pytest.raises(SecurityGroupError, match="expected a SecurityGroupRule"):
        g.add_rule("a")  # type: ignore[arg-type]


def test_initial_rules_and_default() -> None:
    a = SecurityGroupRule("a", "10.0.0.0/8", "TCP", 1, 65535, True)
    g = SecurityGroup("g", False, [a])
    assert g.rules == (a,)
    assert g.name == "g"
    assert g.default_allow is False
    with pytest.raises(SecurityGroupError, match="already has a rule 'a'"):
        SecurityGroup("g", False, [a, a])


def test_set_default() -> None:
    g = SecurityGroup("g", default_allow=False)
    assert not g.allowed("10.0.0.1", "TCP", 1)
    g.set_default(True)
    assert g.default_allow is True
    assert g.allowed("10.0.0.1", "TCP", 1)
    with pytest.raises(SecurityGroupError, match="default must be a bool"):
        g.set_default(1)  # type: ignore[arg-type]
    assert g.default_allow is True


@pytest.mark.parametrize(("name", "default"), [("", True), (None, True), ("g", "deny"), ("g", 0)])
def test_group_validation(name: object, default: object) -> None:
    with pytest.raises(SecurityGroupError):
        SecurityGroup(name, default)  # type: ignore[arg-type]


def test_rules_snapshot_does_not_change_under_the_caller() -> None:
    g = group(True, ("10.0.0.0/8", *ALL_TCP, False))
    before = g.rules
    g.add_rule(SecurityGroupRule("x", "::/0", "TCP", 1, 2, True))
    assert len(before) == 1
    assert len(g.rules) == 2


# -- allowed: argument errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "protocol", "port", "message"),
    [
        ("10.0.0.1", "ICMP", 1, "unknown protocol 'ICMP'"),
        ("10.0.0.1", "TCP", 65536, "local_port 65536 is outside"),
        ("10.0.0.1", "TCP", -5, "local_port -5 is outside"),
        ("10.0.0.256", "TCP", 1, "is not an IP address"),
        ("example.com", "TCP", 1, "is not an IP address"),
        ("10.0.0.0/8", "TCP", 1, "is not an IP address"),
    ],
)
def test_allowed_argument_errors(source: str, protocol: str, port: int, message: str) -> None:
    g = group(True, ("10.0.0.0/8", *ALL_TCP, False))
    with pytest.raises(SecurityGroupError, match=message):
        g.allowed(source, protocol, port)


def test_allowed_refuses_a_non_address_object() -> None:
    g = group(True, ("10.0.0.0/8", *ALL_TCP, False))
    with pytest.raises(SecurityGroupError, match="is not an IP address"):
        g.allowed(167772161, "TCP", 1)  # type: ignore[arg-type]


def test_group_repr() -> None:
    assert repr(group(False, ("10.0.0.0/8", *ALL_TCP, True))) == (
        "SecurityGroup('g', default_allow=False, rules=1)"
    )


def test_no_rules_fast_path_skips_address_parsing_only() -> None:
    g = SecurityGroup("g", default_allow=True)
    assert g.allowed("not an address", "TCP", 1)  # documented: not parsed without rules
    with pytest.raises(SecurityGroupError, match="unknown protocol"):
        g.allowed("10.0.0.1", "QUIC", 1)
    with pytest.raises(SecurityGroupError, match="outside"):
        g.allowed("10.0.0.1", "TCP", 70000)


def test_scoped_ipv6_source() -> None:
    g = group(False, ("fe80::/10", *ALL_TCP, True))
    assert g.allowed("fe80::1%eth0", "TCP", 22)


# -- threads: readers see whole versions ------------------------------------------------


def test_readers_never_see_a_half_made_edit() -> None:
    """The writer moves between two versions that both allow 10.0.0.1 (no rules +
    default allow; an allow rule + default deny), in an order whose intermediate
    versions allow it too. A reader that mixed the rules of one version with the
    default of another would see a deny."""
    g = SecurityGroup("g", default_allow=True)
    rule = SecurityGroupRule("lan", "10.0.0.0/8", "TCP", 0, 65535, True)
    stop = threading.Event()
    denials: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                for _ in range(200):
                    if not g.allowed("10.0.0.1", "TCP", 80):
                        denials.append(1)
        except BaseException as exc:  # report to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(3000):
            g.add_rule(rule)
            g.set_default(False)
            g.set_default(True)
            g.remove_rule("lan")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors
    assert not denials


# -- the property: allowed == brute force ------------------------------------------------

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def reference(
    rules: Sequence[SecurityGroupRule], default: bool, source: str, protocol: str, port: int
) -> bool:
    """The obvious, slow reading of the rules, by ``ipaddress`` containment."""
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(source)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for rule in rules:
        net: Network = rule.network
        if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
            v4_first = net.network_address.ipv4_mapped
            assert v4_first is not None
            net = ipaddress.IPv4Network(f"{v4_first}/{net.prefixlen - 96}")
        same_family = isinstance(addr, ipaddress.IPv4Address) == isinstance(
            net, ipaddress.IPv4Network
        )
        if (
            same_family
            and addr in net
            and rule.protocol == protocol.upper()
            and rule.port_low <= port <= rule.port_high
        ):
            return rule.allow
    return default


# Addresses cluster around a few bases so rules and sources often overlap.
_BASES = [0, 0x0A000000, 0xC0000201, 0xFFFFFFFF]
_V6_BASES = [0, 1, 0x20010DB8 << 96, 0xFFFF << 32, (0xFFFF << 32) | 0x0A000000, (1 << 128) - 1]


_V4_PREFIXES = [0, 1, 8, 16, 24, 30, 31, 32]
_V6_PREFIXES = [0, 1, 32, 64, 95, 96, 97, 104, 120, 127, 128]
_PORTS = [0, 1, 79, 80, 81, 443, 1024, 65534, 65535]
_PROTOCOLS = ["TCP", "UDP", "tcp", "udp"]

# Each rule and each query is drawn as ONE integer whose bit fields pick its parts:
# hypothesis pays per draw, and 2000 examples of nested composites take a minute.
# (Shrinking still works: smaller integers give simpler rules.)


def _field(value: int, shift: int, choices: Sequence[object] | int) -> int:
    size = choices if isinstance(choices, int) else len(choices)
    return (value >> shift & 0xFFFF) % size


def _network(bits: int) -> Network:
    v6 = bits & 1
    xor = bits >> 1 & 0xFF
    if v6:
        value = _V6_BASES[_field(bits, 9, _V6_BASES)] ^ xor
        return ipaddress.IPv6Network((value, _V6_PREFIXES[_field(bits, 25, _V6_PREFIXES)]), False)
    value = _BASES[_field(bits, 9, _BASES)] ^ xor
    return ipaddress.IPv4Network((value, _V4_PREFIXES[_field(bits, 25, _V4_PREFIXES)]), False)


def _rules(raw: list[int]) -> list[SecurityGroupRule]:
    out = []
    for i, bits in enumerate(raw):
        low, high = sorted((_PORTS[_field(bits, 41, _PORTS)], _PORTS[_field(bits, 57, _PORTS)]))
        protocol = _PROTOCOLS[_field(bits, 73, _PROTOCOLS)]
        allow = bool(bits >> 89 & 1)
        out.append(SecurityGroupRule(f"r{i}", _network(bits), protocol, low, high, allow))
    return out


def _query(bits: int) -> tuple[str, str, int]:
    kind = _field(bits, 0, 3)
    xor = bits >> 16 & 0x1FF
    if kind == 2:
        source = str(ipaddress.IPv6Address(_V6_BASES[_field(bits, 25, _V6_BASES)] ^ xor))
    else:
        v4 = ipaddress.IPv4Address(_BASES[_field(bits, 25, _BASES)] ^ xor)
        source = f"::ffff:{v4}" if kind == 1 else str(v4)
    return source, _PROTOCOLS[_field(bits, 41, _PROTOCOLS)], _PORTS[_field(bits, 57, _PORTS)]


rule_lists = st.lists(st.integers(0, (1 << 90) - 1), max_size=8).map(_rules)
queries_st = st.lists(st.integers(0, (1 << 73) - 1).map(_query), min_size=1, max_size=8)
sources = st.integers(0, (1 << 73) - 1).map(lambda bits: _query(bits)[0])
PORTS = st.sampled_from(_PORTS)


@settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    rules=rule_lists,
    default=st.booleans(),
    queries=queries_st,
)
def test_allowed_equals_brute_force(
    rules: list[SecurityGroupRule], default: bool, queries: list[tuple[str, str, int]]
) -> None:
    g = SecurityGroup("g", default, rules)
    for source, protocol, port in queries:
        assert g.allowed(source, protocol, port) is reference(
            rules, default, source, protocol, port
        )


@settings(max_examples=300, deadline=None, database=None)
@given(
    rules=rule_lists,
    removals=st.lists(st.integers(0, 7), max_size=5),
    source=sources,
    port=PORTS,
)
def test_edits_keep_order_and_decisions(
    rules: list[SecurityGroupRule], removals: list[int], source: str, port: int
) -> None:
    g = SecurityGroup("g", True, rules)
    kept = list(rules)
    for index in removals:
        name = f"r{index}"
        if any(r.name == name for r in kept):
            g.remove_rule(name)
            kept = [r for r in kept if r.name != name]
        else:
            with pytest.raises(SecurityGroupError):
                g.remove_rule(name)
    assert list(g.rules) == kept
    assert g.allowed(source, "TCP", port) is reference(kept, True, source, "TCP", port)
