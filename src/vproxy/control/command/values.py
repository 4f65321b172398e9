"""Typed parameter values of the command language and their one-word text forms.

Owns the value classes a parsed command carries (:class:`Address`, :class:`PortRange`,
:class:`NamePattern` and the closed enums such as :class:`Method`) and the pure
functions that turn one word into such a value. Each parse function raises
:class:`ValueProblem` with a short reason; the parser adds the word, its position and
the parameter name. Must not know about resources, grammar tables or state, and must
not do I/O.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import TypeAlias, TypeVar

__all__ = [
    "Address",
    "IpType",
    "Method",
    "NamePattern",
    "ParamValue",
    "PortRange",
    "SecurityDefault",
    "TransportProtocol",
    "ValueProblem",
    "has_control_char",
    "has_surrogate",
]


class Method(enum.StrEnum):
    """How a server group picks its next server."""

    WRR = "wrr"
    WLC = "wlc"
    SOURCE = "source"


class SecurityDefault(enum.StrEnum):
    """What a security group or rule does with a matching connection."""

    ALLOW = "allow"
    DENY = "deny"


class TransportProtocol(enum.StrEnum):
    """The transport a security-group rule applies to."""

    TCP = "TCP"
    UDP = "UDP"


class IpType(enum.StrEnum):
    """Which address family a smart-node-delegate registers from its nic."""

    V4 = "v4"
    V6 = "v6"


@dataclass(frozen=True, slots=True)
class Address:
    """A ``HOST:PORT`` pair.

    Attributes:
        host: An IP address in its canonical text form (IPv6 without brackets), or a
            lower-case host name where the parameter allows names.
        port: The port, 0..65535 (0 only for listen addresses).
    """

    host: str
    port: int

    @property
    def ip(self) -> IPv4Address | IPv6Address | None:
        """The host as an IP address, or None when it is a host name."""
        try:
            return ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PortRange:
    """An inclusive range of ports written ``LOW,HIGH``."""

    low: int
    high: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def __str__(self) -> str:
        return f"{self.low},{self.high}"


@dataclass(frozen=True, slots=True)
class NamePattern:
    """A ``/regex/`` standing for every name it matches (``re.search`` semantics).

    Attributes:
        pattern: The regular expression between the slashes; known to compile.
    """

    pattern: str

    def matches(self, name: str) -> bool:
        """Tell whether ``name`` is selected by this pattern.

        Args:
            name: A resource name.

        Returns:
            True when the expression matches anywhere in ``name``.
        """
        return re.search(self.pattern, name) is not None

    def __str__(self) -> str:
        return f"/{self.pattern}/"


ParamValue: TypeAlias = (
    int
    | str
    | Address
    | IPv4Address
    | IPv6Address
    | IPv4Network
    | IPv6Network
    | PortRange
    | tuple[str, ...]
    | dict[str, str]
)
"""Any typed value of a parameter (the closed enums are ``str`` subclasses)."""


class ValueProblem(ValueError):
    """A word is not a valid value; the message says what was expected."""


# Code points that may never appear in a word outside quotes, nor in names, paths or
# secrets: C0 and C1 controls, DEL, the Unicode line/paragraph separators, and lone
# surrogates (not text: a line holding one cannot be written to a config file).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_DIGITS = re.compile(r"[0-9]{1,10}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_PROTOCOL = re.compile(r"[a-z0-9][a-z0-9/._-]{0,63}")
_MAX_PATH = 4096
_MAX_SECRET = 256
_MAX_JSON = 65536
_DOTTED_DIGITS = re.compile(r"[0-9.]+")

_E = TypeVar("_E", bound=enum.StrEnum)


def has_control_char(text: str) -> bool:
    """Tell whether ``text`` holds a control character, a line separator or a surrogate.

    Args:
        text: Any text.

    Returns:
        True when a C0/C1 control, DEL, U+2028, U+2029 or a lone surrogate occurs.
    """
    return _CONTROL.search(text) is not None


def has_surrogate(text: str) -> bool:
    """Tell whether ``text`` holds a lone surrogate, which UTF-8 cannot encode.

    Args:
        text: Any text.

    Returns:
        True when a code point in U+D800..U+DFFF occurs in ``text``.
    """
    return _SURROGATE.search(text) is not None


def parse_int(word: str, low: int, high: int) -> int:
    """Read a decimal integer within ``low..high``.

    Args:
        word: ASCII digits only: no sign, spaces or underscores.
        low: The smallest accepted value.
        high: The largest accepted value.

    Returns:
        The integer.

    Raises:
        ValueProblem: The word is not such an integer.
    """
    if _DIGITS.fullmatch(word) is None or not low <= int(word) <= high:
        raise ValueProblem(f"expected an integer from {low} to {high}")
    return int(word)


def _port(text: str, low: int) -> int:
    if _DIGITS.fullmatch(text) is None or not low <= int(text) <= 65535:
        raise ValueProblem(f"the port must be an integer from {low} to 65535")
    return int(text)


def parse_address(word: str, *, hostname_ok: bool, port_zero_ok: bool) -> Address:
    """Read ``IPv4:PORT``, ``[IPv6]:PORT`` or, where allowed, ``HOSTNAME:PORT``.

    Args:
        word: The address text.
        hostname_ok: Whether a DNS name may stand for the host.
        port_zero_ok: Whether port 0 (a free port picked at bind time) is accepted.

    Returns:
        The address, its IP in canonical form or its host name in lower case.

    Raises:
        ValueProblem: The word is not such an address.
    """
    host_kinds = "IPv4:PORT, [IPv6]:PORT" + (" or HOSTNAME:PORT" if hostname_ok else "")
    low = 0 if port_zero_ok else 1
    if word.startswith("["):
        end = word.find("]")
        if end < 0 or word[end + 1 : end + 2] != ":":
            raise ValueProblem(f"expected {host_kinds}")
        try:
            ip6 = IPv6Address(word[1:end])
        except ValueError:
            raise ValueProblem(f"{word[1:end]!r} is not an IPv6 address") from None
        return Address(str(ip6), _port(word[end + 2 :], low))
    host, colon, port_text = word.rpartition(":")
    if not colon or not host:
        raise ValueProblem(f"expected {host_kinds}")
    if ":" in host:
        raise ValueProblem("an IPv6 address needs brackets, as in [::1]:80")
    port = _port(port_text, low)
    if _DOTTED_DIGITS.fullmatch(host) is not None:
        try:
            return Address(str(IPv4Address(host)), port)
        except ValueError:
            raise ValueProblem(f"{host!r} is not an IPv4 address") from None
    if hostname_ok and _HOSTNAME.fullmatch(host) is not None:
        return Address(host.lower().rstrip("."), port)
    raise ValueProblem(f"expected {host_kinds}")


def parse_ip(word: str) -> IPv4Address | IPv6Address:
    """Read a bare IPv4 or IPv6 address.

    Args:
        word: The address text, IPv6 without brackets.

    Returns:
        The address.

    Raises:
        ValueProblem: The word is not an IP address.
    """
    try:
        return ip_address(word)
    except ValueError:
        raise ValueProblem("expected an IPv4 or IPv6 address") from None


def parse_network(word: str) -> IPv4Network | IPv6Network:
    """Read a CIDR network such as ``10.0.0.0/8``.

    Args:
        word: ``IP/PREFIX`` with no host bits set.

    Returns:
        The network.

    Raises:
        ValueProblem: The word is not a CIDR network.
    """
    address, slash, prefix = word.partition("/")
    if not slash or _DIGITS.fullmatch(prefix) is None:
        raise ValueProblem("expected a CIDR network such as 10.0.0.0/8")
    try:
        return ip_network(word, strict=True)
    except ValueError:
        pass
    try:
        loose = ip_network(word, strict=False)
    except ValueError:
        raise ValueProblem("expected a CIDR network such as 10.0.0.0/8") from None
    raise ValueProblem(f"host bits are set in {address}/{prefix} (did you mean {loose}?)")


def parse_port_range(word: str) -> PortRange:
    """Read ``LOW,HIGH`` with 1 <= LOW <= HIGH <= 65535.

    Args:
        word: The range text.

    Returns:
        The range.

    Raises:
        ValueProblem: The word is not such a range.
    """
    low_text, comma, high_text = word.partition(",")
    expected = "expected a port range LOW,HIGH with 1 <= LOW <= HIGH <= 65535"
    if not comma:
        raise ValueProblem(expected)
    try:
        low, high = _port(low_text, 1), _port(high_text, 1)
    except ValueProblem:
        raise ValueProblem(expected) from None
    if low > high:
        raise ValueProblem(expected)
    return PortRange(low, high)


def parse_choice(word: str, choices: type[_E]) -> _E:
    """Read one of the members of a closed enum, ignoring case.

    Args:
        word: The value text.
        choices: The enum whose values are accepted.

    Returns:
        The member.

    Raises:
        ValueProblem: The word names no member.
    """
    for member in choices:
        if member.value.lower() == word.lower():
            return member
    raise ValueProblem("expected one of: " + ", ".join(m.value for m in choices))


def parse_protocol(word: str) -> str:
    """Read an application protocol name (built-in or registered later).

    Args:
        word: The name; case is folded to lower case.

    Returns:
        The lower-case name.

    Raises:
        ValueProblem: The word cannot be a protocol name.
    """
    name = word.lower()
    if _PROTOCOL.fullmatch(name) is None:
        raise ValueProblem(
            "expected a protocol name: tcp, http/1.x, h2, http, dubbo, framed-int32 or a "
            "registered name matching [a-z0-9][a-z0-9/._-]*"
        )
    return name


def parse_json_object(word: str) -> dict[str, str]:
    """Read a JSON object whose values are all strings (annotations).

    Args:
        word: The JSON text.

    Returns:
        The object as a dict.

    Raises:
        ValueProblem: The word is not such an object.
    """
    if len(word) > _MAX_JSON:
        raise ValueProblem(f"a JSON object of at most {_MAX_JSON} characters")
    if not word.startswith("{"):
        raise ValueProblem('expected a JSON object such as {"host":"example.com"}')
    try:
        value = json.loads(word)
    except RecursionError:
        raise ValueProblem("the JSON object is nested too deeply") from None
    except ValueError as exc:
        raise ValueProblem(f"invalid JSON: {exc}") from None
    # Text that starts with "{" and parses is an object: a dict with str keys.
    annotations: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(item, str):
            raise ValueProblem(f"the value of {key!r} must be a JSON string")
        if has_surrogate(key) or has_surrogate(item):
            raise ValueProblem(f"the entry {key!r} holds a lone surrogate, which is not text")
        annotations[key] = item
    return annotations


def parse_path(word: str) -> str:
    """Read a file path.

    Args:
        word: The path, relative or absolute.

    Returns:
        The path unchanged.

    Raises:
        ValueProblem: The path is empty, too long or holds a control character.
    """
    if not word or len(word) > _MAX_PATH or has_control_char(word):
        raise ValueProblem(
            f"expected a file path of 1 to {_MAX_PATH} characters without control characters"
        )
    return word


def parse_path_list(word: str) -> tuple[str, ...]:
    """Read a comma-separated list of file paths.

    Args:
        word: ``PATH[,PATH...]``.

    Returns:
        The paths in order.

    Raises:
        ValueProblem: An element is not a valid path.
    """
    try:
        return tuple(parse_path(part) for part in word.split(","))
    except ValueProblem:
        raise ValueProblem("expected comma-separated file paths, none empty") from None


def parse_secret(word: str) -> str:
    """Read a password or token.

    Args:
        word: The secret.

    Returns:
        The secret unchanged.

    Raises:
        ValueProblem: It is empty, too long or holds a control character.
    """
    if not word or len(word) > _MAX_SECRET or has_control_char(word):
        raise ValueProblem(f"expected 1 to {_MAX_SECRET} characters without control characters")
    return word
