"""Security groups (SPEC §1 "SecurityGroup"): who may connect to a listener.

Owns: :class:`SecurityGroupRule` (source network + transport protocol + local port
range -> allow or deny), :class:`SecurityGroup` (named, ordered rules and a default for
no match), and the decision :meth:`SecurityGroup.allowed` that listeners ask at accept
time.

Must not: accept, close or look at connections, or know which listeners use a group;
the listener asks, and acts on the answer.

Thread model: worker-loop threads call :meth:`SecurityGroup.allowed` while the control
thread edits the group. Every edit builds a new immutable snapshot (rules, their
compiled matchers and the default) under a lock and publishes it with one attribute
store; ``allowed`` reads that attribute once, so it never takes a lock and always sees
one consistent version of the group.

Addresses: an IPv4-mapped IPv6 source (``::ffff:10.1.2.3``, what a dual-stack socket
reports for an IPv4 client) is the IPv4 client it stands for, and a rule network that
lies inside ``::ffff:0:0/96`` is likewise matched as the IPv4 network it maps. So
``10.0.0.0/8`` matches ``::ffff:10.1.2.3``, and ``::/0`` (an IPv6 rule) does not.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
from collections.abc import Iterable
from typing import Final, Literal, TypeAlias

__all__ = [
    "PROTOCOLS",
    "Network",
    "SecurityGroup",
    "SecurityGroupError",
    "SecurityGroupRule",
    "TransportName",
    "parse_network",
]

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
TransportName: TypeAlias = Literal["TCP", "UDP"]
PROTOCOLS: Final[tuple[TransportName, ...]] = ("TCP", "UDP")

_MAPPED_V4: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_MAX_PORT: Final = 0xFFFF
_SOURCE_CACHE_SIZE: Final = 4096

# A compiled rule, as a plain tuple for the hot loop:
# (ip version, netmask int, network int, protocol, port low, port high, allow)
_Matcher: TypeAlias = tuple[int, int, int, str, int, int, bool]


class SecurityGroupError(ValueError):
    """A security group or rule was refused: bad network, ports, protocol or name."""


def parse_network(text: str) -> Network:
    """Read a CIDR network such as ``10.0.0.0/8`` or ``2001:db8::/32``.

    A bare address is its own one-address network (``/32`` or ``/128``).

    Args:
        text: The network text.

    Returns:
        The network.

    Raises:
        SecurityGroupError: The text is not a network, or has host bits set.
    """
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise SecurityGroupError(
            f"{text!r} is not a CIDR network (expected e.g. 10.0.0.0/8 or 2001:db8::/32)"
        ) from None
    raise SecurityGroupError(f"host bits are set in {text} (did you mean {loose}?)")


# The spellings callers really use, looked up before the general normalization.
_COMMON_PROTOCOLS: Final[dict[str, TransportName]] = {
    "TCP": "TCP",
    "UDP": "UDP",
    "tcp": "TCP",
    "udp": "UDP",
}


def _normalize_protocol(protocol: str) -> TransportName:
    upper = protocol.upper() if isinstance(protocol, str) else None
    if upper == "TCP":
        return "TCP"
    if upper == "UDP":
        return "UDP"
    raise SecurityGroupError(f"unknown protocol {protocol!r} (expected TCP or UDP)")


def _check_port(what: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SecurityGroupError(f"{what} must be an int, not {value!r}")
    if not 0 <= value <= _MAX_PORT:
        raise SecurityGroupError(f"{what} {value} is outside 0..65535")
    return value


def _match_key(network: Network) -> tuple[int, int, int]:
    """(version, mask, network) of a rule network, IPv4-mapped ones as IPv4."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED_V4):
        v4 = ipaddress.IPv4Network(
            (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
        )
        return (4, int(v4.netmask), int(v4.network_address))
    return (network.version, int(network.netmask), int(network.network_address))


@functools.lru_cache(maxsize=_SOURCE_CACHE_SIZE)
def _parse_source(
    source_ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> tuple[int, int]:
    """(version, int) of a client address, IPv4-mapped ones as IPv4. Cached: a busy
    listener sees the same few clients over and over."""
    try:
        addr = ipaddress.ip_address(source_ip) if isinstance(source_ip, str) else source_ip
    except ValueError:
        raise SecurityGroupError(f"{source_ip!r} is not an IP address") from None
    if not isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise SecurityGroupError(f"{source_ip!r} is not an IP address")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return (4, int(addr.ipv4_mapped))
    return (addr.version, int(addr))


class SecurityGroupRule:
    """One rule: clients from ``network`` using ``protocol`` on a local port in
    ``port_low..port_high`` (inclusive) are allowed or denied. Immutable.

    Example:
        >>> SecurityGroupRule("office", "10.0.0.0/8", "tcp", 80, 443, True)
        SecurityGroupRule('office', IPv4Network('10.0.0.0/8'), 'TCP', 80, 443, allow=True)
    """

    __slots__ = ("_allow", "_matcher", "_name", "_network", "_port_high", "_port_low", "_protocol")

    def __init__(
        self,
        name: str,
        network: Network | str,
        protocol: str,
        port_low: int,
        port_high: int,
        allow: bool,
    ) -> None:
        """Create a rule.

        Args:
            name: The rule's name, unique within its group.
            network: The client network, as an ``ipaddress`` network or CIDR text
                (host bits must not be set).
            protocol: ``"TCP"`` or ``"UDP"`` (any case).
            port_low: The lowest local port matched, 0..65535.
            port_high: The highest local port matched, ``port_low``..65535.
            allow: ``True`` to allow matching clients, ``False`` to deny them.

        Raises:
            SecurityGroupError: Any argument is invalid.
        """
        if not isinstance(name, str) or not name:
            raise SecurityGroupError(f"rule name must be a non-empty string, not {name!r}")
        if isinstance(network, str):
            net = parse_network(network)
        elif isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network):
            net = network
        else:
            raise SecurityGroupError(f"network must be an IP network, not {network!r}")
        proto = _normalize_protocol(protocol)
        low = _check_port("port_low", port_low)
        high = _check_port("port_high", port_high)
        if low > high:
            raise SecurityGroupError(f"port range {low},{high} is empty: low is above high")
        if not isinstance(allow, bool):
            raise SecurityGroupError(f"allow must be a bool, not {allow!r}")
        self._name = name
        self._network: Network = net
        self._protocol: TransportName = proto
        self._port_low = low
        self._port_high = high
        self._allow = allow
        version, mask, value = _match_key(net)
        self._matcher: _Matcher = (version, mask, value, proto, low, high, allow)

    @property
    def name(self) -> str:
        """The rule's name."""
        return self._name

    @property
    def network(self) -> Network:
        """The client network matched."""
        return self._network

    @property
    def protocol(self) -> TransportName:
        """The transport protocol matched."""
        return self._protocol

    @property
    def port_low(self) -> int:
        """The lowest local port matched."""
        return self._port_low

    @property
    def port_high(self) -> int:
        """The highest local port matched."""
        return self._port_high

    @property
    def allow(self) -> bool:
        """Whether a matching client is allowed (``False``: denied)."""
        return self._allow

    def matches(
        self,
        source_ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
        protocol: str,
        local_port: int,
    ) -> bool:
        """Tell whether this rule applies to a client.

        Args:
            source_ip: The client address.
            protocol: ``"TCP"`` or ``"UDP"``.
            local_port: The listener's port the client came in on.

        Returns:
            ``True`` if the rule matches (its ``allow`` then decides).

        Raises:
            SecurityGroupError: An argument is invalid.
        """
        version, value = _parse_source(source_ip)
        proto = _normalize_protocol(protocol)
        port = _check_port("local_port", local_port)
        return _hit(self._matcher, version, value, proto, port)

    def _key(self) -> tuple[object, ...]:
        return (
            self._name,
            self._network,
            self._protocol,
            self._port_low,
            self._port_high,
            self._allow,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecurityGroupRule):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"SecurityGroupRule({self._name!r}, {self._network!r}, {self._protocol!r}, "
            f"{self._port_low}, {self._port_high}, allow={self._allow})"
        )

    def __setattr__(self, attr: str, value: object) -> None:
        if hasattr(self, "_matcher"):
            raise AttributeError(f"SecurityGroupRule is immutable (cannot set {attr})")
        object.__setattr__(self, attr, value)


def _hit(m: _Matcher, version: int, value: int, protocol: str, port: int) -> bool:
    return m[0] == version and value & m[1] == m[2] and m[3] == protocol and m[4] <= port <= m[5]


class _Snapshot:
    """One published version of a group; never mutated after construction."""

    __slots__ = ("default_allow", "matchers", "rules")

    def __init__(self, rules: tuple[SecurityGroupRule, ...], default_allow: bool) -> None:
        self.rules = rules
        self.matchers: tuple[_Matcher, ...] = tuple(r._matcher for r in rules)
        self.default_allow = default_allow


class SecurityGroup:
    """A named, ordered list of rules and a default: the first matching rule decides.

    Example:
        >>> group = SecurityGroup("secg0", default_allow=False)
        >>> group.add_rule(SecurityGroupRule("lan", "10.0.0.0/8", "TCP", 1, 65535, True))
        >>> group.allowed("10.1.2.3", "TCP", 80), group.allowed("192.0.2.1", "TCP", 80)
        (True, False)
        >>> group.allowed("::ffff:10.1.2.3", "TCP", 80)
        True
    """

    __slots__ = ("_lock", "_name", "_snapshot")

    def __init__(
        self, name: str, default_allow: bool, rules: Iterable[SecurityGroupRule] = ()
    ) -> None:
        """Create a group.

        Args:
            name: The group's name.
            default_allow: What happens to a client no rule matches.
            rules: Initial rules, in order.

        Raises:
            SecurityGroupError: Bad name or default, or duplicate rule names.
        """
        if not isinstance(name, str) or not name:
            raise SecurityGroupError(f"group name must be a non-empty string, not {name!r}")
        self._name = name
        self._lock = threading.Lock()
        self._snapshot = _Snapshot((), _check_default(default_allow))
        for rule in rules:
            self.add_rule(rule)

    @property
    def name(self) -> str:
        """The group's name."""
        return self._name

    @property
    def default_allow(self) -> bool:
        """What happens to a client no rule matches (``True``: allowed)."""
        return self._snapshot.default_allow

    @property
    def rules(self) -> tuple[SecurityGroupRule, ...]:
        """The rules, in matching order (an immutable snapshot)."""
        return self._snapshot.rules

    def get_rule(self, name: str) -> SecurityGroupRule:
        """Return the rule called ``name``.

        Args:
            name: The rule's name.

        Returns:
            The rule.

        Raises:
            SecurityGroupError: No rule has that name.
        """
        for rule in self._snapshot.rules:
            if rule.name == name:
                return rule
        raise SecurityGroupError(f"security group {self._name!r} has no rule {name!r}")

    def add_rule(self, rule: SecurityGroupRule) -> None:
        """Append a rule (it is matched after the existing ones).

        Args:
            rule: The rule.

        Raises:
            SecurityGroupError: A rule with the same name exists, or ``rule`` is not a
                :class:`SecurityGroupRule`.
        """
        if not isinstance(rule, SecurityGroupRule):
            raise SecurityGroupError(f"expected a SecurityGroupRule, not {rule!r}")
        with self._lock:
            snap = self._snapshot
            if any(r.name == rule.name for r in snap.rules):
                raise SecurityGroupError(
                    f"security group {self._name!r} already has a rule {rule.name!r}"
                )
            self._snapshot = _Snapshot((*snap.rules, rule), snap.default_allow)

    def remove_rule(self, name: str) -> SecurityGroupRule:
        """Remove the rule called ``name``.

        Args:
            name: The rule's name.

        Returns:
            The removed rule.

        Raises:
            SecurityGroupError: No rule has that name.
        """
        with self._lock:
            snap = self._snapshot
            kept = tuple(r for r in snap.rules if r.name != name)
            if len(kept) == len(snap.rules):
                raise SecurityGroupError(f"security group {self._name!r} has no rule {name!r}")
            removed = next(r for r in snap.rules if r.name == name)
            self._snapshot = _Snapshot(kept, snap.default_allow)
        return removed

    def set_default(self, allow: bool) -> None:
        """Change what happens to a client no rule matches.

        Args:
            allow: ``True`` to allow, ``False`` to deny.

        Raises:
            SecurityGroupError: ``allow`` is not a bool.
        """
        allow = _check_default(allow)
        with self._lock:
            self._snapshot = _Snapshot(self._snapshot.rules, allow)

    def allowed(
        self,
        source_ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
        protocol: str,
        local_port: int,
    ) -> bool:
        """Decide whether a client may connect: the first matching rule, else the default.

        Safe to call from any thread while the group is edited.

        Args:
            source_ip: The client address (IPv4-mapped IPv6 is treated as IPv4).
            protocol: ``"TCP"`` or ``"UDP"`` (any case).
            local_port: The listener's port the client came in on.

        Returns:
            ``True`` if the client is allowed.

        Raises:
            SecurityGroupError: Unknown protocol or port out of range; a malformed
                ``source_ip`` too, except when the group has no rules (then the address
                is not even parsed and the default is returned).
        """
        snap = self._snapshot  # one read: a consistent version of the group
        proto = _COMMON_PROTOCOLS.get(protocol) if isinstance(protocol, str) else None
        if proto is None:
            proto = _normalize_protocol(protocol)
        if type(local_port) is not int or not 0 <= local_port <= _MAX_PORT:
            _check_port("local_port", local_port)  # raises with the right message
        matchers = snap.matchers
        if not matchers:
            return snap.default_allow
        version, value = _parse_source(source_ip)
        port = local_port
        for m in matchers:
            if m[0] == version and value & m[1] == m[2] and m[3] == proto and m[4] <= port <= m[5]:
                return m[6]
        return snap.default_allow

    def __repr__(self) -> str:
        snap = self._snapshot
        return (
            f"SecurityGroup({self._name!r}, default_allow={snap.default_allow}, "
            f"rules={len(snap.rules)})"
        )


def _check_default(allow: bool) -> bool:
    if not isinstance(allow, bool):
        raise SecurityGroupError(f"default must be a bool (allow/deny), not {allow!r}")
    return allow
