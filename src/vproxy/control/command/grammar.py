"""The vocabulary of the command language, as data tables.

Owns every word the language knows (SPEC §3.1): actions and their short forms, resource
types and their short names, and for each (type, action) the *forms* it may take: which
parent chains may follow the name (``in``/``to``/``from``), which parameters are
required or optional with their value kinds, ranges and documented defaults, which
flags are allowed, and which of them exclude each other. The parser and ``man`` both
read these tables, so the help text cannot disagree with what is accepted.

The defaults recorded here are for documentation and for the executor, which applies
them; the parser never fills them in. Must not contain parsing code paths per resource,
touch any state, or do I/O.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

from .values import IpType, Method, SecurityDefault, TransportProtocol

__all__ = [
    "ACTIONS",
    "ACTION_BY_WORD",
    "ACTION_PREPOSITION",
    "BUILTIN_PROTOCOLS",
    "CONTROLLERS",
    "CONTROLLER_BY_WORD",
    "GRAMMAR",
    "NAME_RULES",
    "RESERVED_WORDS",
    "TYPE_BY_WORD",
    "Action",
    "ControllerSpec",
    "ControllerType",
    "FlagSpec",
    "Form",
    "NameKind",
    "NameRule",
    "NameUse",
    "ParamSpec",
    "Preposition",
    "ResourceType",
    "TypeSpec",
    "ValueKind",
    "find_form",
    "forms_for",
]


class Action(enum.StrEnum):
    """What a command does; the value is the long word."""

    ADD = "add"
    LIST = "list"
    LIST_DETAIL = "list-detail"
    UPDATE = "update"
    REMOVE = "remove"
    FORCE_REMOVE = "force-remove"


class Preposition(enum.StrEnum):
    """The word that introduces a parent: ``in``, ``to`` or ``from``."""

    IN = "in"
    TO = "to"
    FROM = "from"


class ResourceType(enum.StrEnum):
    """A kind of resource; the value is the long name."""

    TCP_LB = "tcp-lb"
    SOCKS5_SERVER = "socks5-server"
    EVENT_LOOP_GROUP = "event-loop-group"
    EVENT_LOOP = "event-loop"
    UPSTREAM = "upstream"
    SERVER_GROUP = "server-group"
    SERVER = "server"
    SECURITY_GROUP = "security-group"
    SECURITY_GROUP_RULE = "security-group-rule"
    CERT_KEY = "cert-key"
    SMART_GROUP_DELEGATE = "smart-group-delegate"
    SMART_NODE_DELEGATE = "smart-node-delegate"
    SERVER_SOCK = "server-sock"
    CONNECTION = "connection"
    SESSION = "session"
    DNS_CACHE = "dns-cache"
    BYTES_IN = "bytes-in"
    BYTES_OUT = "bytes-out"
    ACCEPTED_CONN_COUNT = "accepted-conn-count"


class ValueKind(enum.StrEnum):
    """How the value word of a parameter is read (see ``values.py``)."""

    INT = "INT"  # decimal, within ParamSpec.minimum..maximum
    ADDRESS = "ADDRESS"  # IPv4:PORT | [IPv6]:PORT | HOSTNAME:PORT (if hostname_ok)
    IP = "IP"  # a bare IPv4 or IPv6 address
    NAME = "NAME"  # a reference to a resource by name
    NAME_LIST = "NAME,..."  # comma-separated names, no duplicates
    NETWORK = "CIDR"  # 10.0.0.0/8, no host bits set
    PORT_RANGE = "LOW,HIGH"
    CHOICE = "CHOICE"  # one member of ParamSpec.choices, case-insensitive
    PROTOCOL = "PROTOCOL"  # built-in or registered processor name
    JSON_OBJECT = "JSON"  # an object with string values
    PATH = "FILE"
    PATH_LIST = "FILE,..."
    TOKEN = "WORD"  # a name-like word: service, zone, nic
    SECRET = "SECRET"  # password or token: any text without control characters


class NameUse(enum.StrEnum):
    """Whether a form takes a resource name right after the type."""

    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"
    REQUIRED_OR_PATTERN = "name or /regex/"


class NameKind(enum.StrEnum):
    """Which characters a name may hold."""

    NAME = "name"  # configured resources
    ID = "id"  # observed resources (connections, sessions, ...), named by the system


@dataclass(frozen=True, slots=True)
class NameRule:
    """The form of a name: allowed characters and maximal length."""

    pattern: re.Pattern[str]
    max_length: int
    description: str


NAME_RULES: Final[Mapping[NameKind, NameRule]] = {
    NameKind.NAME: NameRule(
        re.compile(r"[A-Za-z0-9._:()-]+"),
        128,
        "1 to 128 characters among letters, digits and . _ : - ( )",
    ),
    # Connection ids look like 127.0.0.1:5000/[::1]:80, sessions like a->b: allow the
    # slash, brackets and ">" but never a leading slash, which starts a /regex/.
    NameKind.ID: NameRule(
        re.compile(r"[A-Za-z0-9._:()\[\]>-][A-Za-z0-9._:()\[\]/>-]*"),
        256,
        "1 to 256 characters among letters, digits and . _ : - ( ) [ ] / >, not starting with /",
    ),
}

RESERVED_WORDS: Final[frozenset[str]] = frozenset(p.value for p in Preposition)
"""Words that can never be names, because they introduce parents."""

BUILTIN_PROTOCOLS: Final[tuple[str, ...]] = (
    "tcp",
    "http/1.x",
    "h2",
    "http",
    "dubbo",
    "framed-int32",
)
"""The processors every build has; other names must be registered before use."""


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One ``KEY VALUE`` parameter of a form.

    Attributes:
        name: The long name, the key in ``Command.params``.
        kind: How the value is read.
        aliases: Other accepted keys (short forms).
        required: Whether the form needs it.
        default: What the executor uses when it is absent, written as on the command
            line; None when there is no default (or on update: "unchanged").
        default_note: How to describe an absent value that has no default value.
        minimum: Smallest accepted INT.
        maximum: Largest accepted INT.
        choices: The enum for CHOICE.
        ref: The resource type a NAME/NAME_LIST refers to.
        hostname_ok: ADDRESS accepts a host name.
        port_zero_ok: ADDRESS accepts port 0 (listen on a free port).
        doc: One line of help.
    """

    name: str
    kind: ValueKind
    aliases: tuple[str, ...] = ()
    required: bool = False
    default: str | None = None
    default_note: str | None = None
    minimum: int = 0
    maximum: int = 0
    choices: type[enum.StrEnum] | None = None
    ref: ResourceType | None = None
    hostname_ok: bool = False
    port_zero_ok: bool = False
    doc: str = ""

    @property
    def words(self) -> tuple[str, ...]:
        """Every key that selects this parameter, the long name first."""
        return (self.name, *self.aliases)

    @property
    def value_help(self) -> str:
        """A short description of the accepted values, for ``man`` and errors."""
        if self.kind is ValueKind.INT:
            return f"integer {self.minimum}..{self.maximum}"
        if self.kind is ValueKind.CHOICE and self.choices is not None:
            return "|".join(member.value for member in self.choices)
        if self.kind is ValueKind.ADDRESS:
            host = "HOST" if self.hostname_ok else "IP"
            low = 0 if self.port_zero_ok else 1
            return f"{host}:PORT (port {low}..65535)"
        if self.kind in (ValueKind.NAME, ValueKind.NAME_LIST) and self.ref is not None:
            return f"{self.ref.value} {self.kind.value}"
        return self.kind.value


@dataclass(frozen=True, slots=True)
class FlagSpec:
    """A bare-word flag of a form."""

    name: str
    doc: str = ""


@dataclass(frozen=True, slots=True)
class Form:
    """One accepted shape of a (type, action) pair.

    Attributes:
        action: The action.
        parents: The parent chains the form accepts, each a tuple of types from the
            nearest parent outwards; ``()`` means "no parent". The first link is
            introduced by ``ACTION_PREPOSITION[action]``, the others by ``in``.
        name: Whether a name follows the type.
        params: The parameters, in the order ``format_command`` writes them.
        flags: The flags allowed.
        exactly_one_of: Groups of parameters of which exactly one must be given.
        exclusive_flags: Groups of flags of which at most one may be given.
        needs_change: True for updates: at least one parameter or flag is needed.
        summary: One line of help.
    """

    action: Action
    parents: tuple[tuple[ResourceType, ...], ...] = ((),)
    name: NameUse = NameUse.REQUIRED
    params: tuple[ParamSpec, ...] = ()
    flags: tuple[FlagSpec, ...] = ()
    exactly_one_of: tuple[tuple[str, ...], ...] = ()
    exclusive_flags: tuple[tuple[str, ...], ...] = ()
    needs_change: bool = False
    summary: str = ""

    def param(self, word: str) -> ParamSpec | None:
        """The parameter selected by ``word`` (long name or alias), if any."""
        for spec in self.params:
            if word in spec.words:
                return spec
        return None

    def flag(self, word: str) -> FlagSpec | None:
        """The flag named ``word``, if any."""
        for spec in self.flags:
            if spec.name == word:
                return spec
        return None


@dataclass(frozen=True, slots=True)
class TypeSpec:
    """Everything about one resource type.

    Attributes:
        type: The type.
        short: Its short name, if any.
        summary: One line of help.
        observable: True for types the system creates (they are only listed or
            force-removed).
        name_kind: The characters its names may hold.
        forms: Its forms, for all actions.
    """

    type: ResourceType
    short: str | None
    summary: str
    observable: bool
    name_kind: NameKind
    forms: tuple[Form, ...]


# --------------------------------------------------------------------------- actions

ACTIONS: Final[Mapping[Action, tuple[str, str]]] = {
    Action.ADD: ("a", 'create a resource, or attach it "to" a parent'),
    Action.LIST: ("l", "list names (or a count for counters)"),
    Action.LIST_DETAIL: ("L", "list with every setting"),
    Action.UPDATE: ("u", "change settings of a resource while it runs"),
    Action.REMOVE: ("r", 'remove, or detach "from" a parent; refused while in use'),
    Action.FORCE_REMOVE: ("R", "remove even while in use; closes connections/sessions"),
}
"""Each action's short form and one line of help."""

ACTION_BY_WORD: Final[Mapping[str, Action]] = {
    **{action.value: action for action in Action},
    **{short: action for action, (short, _) in ACTIONS.items()},
}

ACTION_PREPOSITION: Final[Mapping[Action, Preposition]] = {
    Action.ADD: Preposition.TO,
    Action.LIST: Preposition.IN,
    Action.LIST_DETAIL: Preposition.IN,
    Action.UPDATE: Preposition.IN,
    Action.REMOVE: Preposition.FROM,
    Action.FORCE_REMOVE: Preposition.FROM,
}
"""The word introducing the first parent for each action; further links use ``in``."""

# ------------------------------------------------------------------- parameter specs

_MIB = 1024 * 1024
_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS

_T = ResourceType  # short alias for the tables below


def _optional(spec: ParamSpec) -> ParamSpec:
    """The same parameter on an update: optional, absent means unchanged."""
    return replace(spec, required=False, default=None, default_note=None)


_LISTEN = ParamSpec(
    "address",
    ValueKind.ADDRESS,
    aliases=("addr",),
    required=True,
    port_zero_ok=True,
    doc="where to listen; port 0 picks a free port",
)
_UPSTREAM = ParamSpec(
    "upstream",
    ValueKind.NAME,
    aliases=("ups",),
    required=True,
    ref=_T.UPSTREAM,
    doc="the upstream whose servers receive the connections",
)
_ACCEPTOR_ELG = ParamSpec(
    "acceptor-elg",
    ValueKind.NAME,
    aliases=("aelg",),
    default="(acceptor-elg)",
    ref=_T.EVENT_LOOP_GROUP,
    doc="the event-loop group that accepts connections",
)
_WORKER_ELG = ParamSpec(
    "event-loop-group",
    ValueKind.NAME,
    aliases=("elg",),
    default="(worker-elg)",
    ref=_T.EVENT_LOOP_GROUP,
    doc="the event-loop group that handles accepted connections",
)
_IN_BUFFER = ParamSpec(
    "in-buffer-size",
    ValueKind.INT,
    default="16384",
    minimum=256,
    maximum=16 * _MIB,
    doc="bytes buffered from the client before reading pauses",
)
_OUT_BUFFER = replace(
    _IN_BUFFER, name="out-buffer-size", doc="bytes buffered from the backend before reading pauses"
)
_IDLE_TIMEOUT = ParamSpec(
    "timeout",
    ValueKind.INT,
    default="900000",
    minimum=1,
    maximum=_DAY_MS,
    doc="idle timeout of a connection, in milliseconds",
)
_MAX_CONNECTIONS = ParamSpec(
    "max-connections",
    ValueKind.INT,
    default="100000",
    minimum=1,
    maximum=10_000_000,
    doc="live sessions allowed; one more is closed at accept and counted as refused",
)
_HANDSHAKE_TIMEOUT = ParamSpec(
    "handshake-timeout",
    ValueKind.INT,
    default="10000",
    minimum=1,
    maximum=_HOUR_MS,
    doc="milliseconds a client has for its TLS (tcp-lb) or socks5 handshake",
)
_HALF_CLOSED_TIMEOUT = ParamSpec(
    "half-closed-timeout",
    ValueKind.INT,
    default_note="min(timeout, 60000)",
    minimum=1,
    maximum=_DAY_MS,
    doc="idle timeout of a session once one direction has ended, in milliseconds",
)
_HEAD_TIMEOUT = ParamSpec(
    "request-head-timeout",
    ValueKind.INT,
    default="10000",
    minimum=1,
    maximum=_HOUR_MS,
    doc="L7 modes: milliseconds a client has for a whole request head (or h2 preface)",
)
_MAX_HEAD_SIZE = ParamSpec(
    "max-head-size",
    ValueKind.INT,
    default="32768",
    minimum=1024,
    maximum=_MIB,
    doc="L7 modes: bytes of one request head (h2: decoded header list)",
)
_MAX_HEADERS = ParamSpec(
    "max-headers",
    ValueKind.INT,
    default="100",
    minimum=1,
    maximum=10_000,
    doc="L7 modes: header fields in one request head",
)
_MAX_STREAMS = ParamSpec(
    "max-concurrent-streams",
    ValueKind.INT,
    default="100",
    minimum=1,
    maximum=10_000,
    doc="h2: streams a client may have open at once",
)
_MAX_PIPELINED = ParamSpec(
    "max-pipelined",
    ValueKind.INT,
    default="64",
    minimum=1,
    maximum=10_000,
    doc="L7 modes: requests (or frames) of one client in flight before reading pauses",
)
_L7_LIMIT_PARAMS = (_HEAD_TIMEOUT, _MAX_HEAD_SIZE, _MAX_HEADERS, _MAX_STREAMS, _MAX_PIPELINED)
_PROTOCOL = ParamSpec(
    "protocol",
    ValueKind.PROTOCOL,
    default="tcp",
    doc="tcp, http/1.x, h2, http, dubbo, framed-int32 or a registered processor",
)
_SECURITY_GROUP = ParamSpec(
    "security-group",
    ValueKind.NAME,
    aliases=("secg",),
    default_note="none: allow all",
    ref=_T.SECURITY_GROUP,
    doc="the security group applied when accepting",
)
_CERT_KEYS = ParamSpec(
    "cert-key",
    ValueKind.NAME_LIST,
    aliases=("ck",),
    default_note="none: no TLS",
    ref=_T.CERT_KEY,
    doc="cert-keys for TLS termination, chosen by SNI",
)
_HC_TIMEOUT = ParamSpec(
    "timeout",
    ValueKind.INT,
    required=True,
    minimum=1,
    maximum=_HOUR_MS,
    doc="health-check connect timeout, in milliseconds",
)
_HC_PERIOD = replace(_HC_TIMEOUT, name="period", doc="health-check interval, in milliseconds")
_HC_UP = ParamSpec(
    "up",
    ValueKind.INT,
    required=True,
    minimum=1,
    maximum=1000,
    doc="consecutive successes before a server is UP",
)
_HC_DOWN = replace(_HC_UP, name="down", doc="consecutive failures before a server is DOWN")
_METHOD = ParamSpec(
    "method",
    ValueKind.CHOICE,
    default="wrr",
    choices=Method,
    doc="wrr: smooth weighted round robin, wlc: weighted least connections, "
    "source: consistent hash of the client ip",
)
_HC_ELG = replace(
    _WORKER_ELG, default="(control-elg)", doc="the event-loop group running health checks"
)
_ANNOTATIONS = ParamSpec(
    "annotations",
    ValueKind.JSON_OBJECT,
    default="{}",
    doc='a JSON object of strings; "host" is matched against the hint',
)
_WEIGHT = ParamSpec(
    "weight",
    ValueKind.INT,
    aliases=("w",),
    default="10",
    minimum=0,
    maximum=1000,
    doc="relative share of new connections; 0 drains",
)
_BACKEND = ParamSpec(
    "address",
    ValueKind.ADDRESS,
    aliases=("addr",),
    required=True,
    hostname_ok=True,
    doc="the backend to connect to",
)
_SECG_DEFAULT = ParamSpec(
    "default",
    ValueKind.CHOICE,
    default="allow",
    choices=SecurityDefault,
    doc="what happens to connections no rule matches",
)
_NETWORK = ParamSpec(
    "network",
    ValueKind.NETWORK,
    aliases=("net",),
    required=True,
    doc="the client network the rule matches",
)
_TRANSPORT = ParamSpec(
    "protocol",
    ValueKind.CHOICE,
    default="TCP",
    choices=TransportProtocol,
    doc="the transport the rule matches",
)
_PORT_RANGE = ParamSpec(
    "port-range",
    ValueKind.PORT_RANGE,
    required=True,
    doc="the local ports the rule matches, inclusive",
)
_RULE_ACTION = replace(
    _SECG_DEFAULT, required=True, default=None, doc="what happens to a matching connection"
)
_CERT = ParamSpec(
    "cert",
    ValueKind.PATH_LIST,
    required=True,
    doc="PEM certificate files: the leaf first, then the chain",
)
_KEY = ParamSpec("key", ValueKind.PATH, required=True, doc="the PEM private-key file")
_SERVICE = ParamSpec("service", ValueKind.TOKEN, required=True, doc="the service name")
_ZONE = ParamSpec("zone", ValueKind.TOKEN, required=True, doc="the discovery zone")
_DELEGATE_SG = ParamSpec(
    "server-group",
    ValueKind.NAME,
    required=True,
    ref=_T.SERVER_GROUP,
    doc="the server group kept in step with the instances",
)
_NIC = ParamSpec("nic", ValueKind.TOKEN, doc="the network interface whose address is registered")
_NODE_IP = ParamSpec("address", ValueKind.IP, aliases=("addr",), doc="the IP address to register")
_NODE_PORT = ParamSpec(
    "port", ValueKind.INT, required=True, minimum=1, maximum=65535, doc="the port to register"
)
_IP_TYPE = ParamSpec(
    "ip-type",
    ValueKind.CHOICE,
    default="v4",
    choices=IpType,
    doc="which address of the nic is registered",
)

_ALLOW_NON_BACKEND = FlagSpec("allow-non-backend", "any target may be reached")
_DENY_NON_BACKEND = FlagSpec(
    "deny-non-backend", "only servers of the upstream may be reached (the default)"
)

# ---------------------------------------------------------------------- parent paths

_TL = (_T.TCP_LB,)
_S5 = (_T.SOCKS5_SERVER,)
_EL = (_T.EVENT_LOOP, _T.EVENT_LOOP_GROUP)
_SVR = (_T.SERVER, _T.SERVER_GROUP)
_SOCK_OWNERS = (_TL, _S5, _EL)
_IN_SOCK = tuple((_T.SERVER_SOCK, *path) for path in _SOCK_OWNERS)
_CONN_OWNERS = (*_SOCK_OWNERS, *_IN_SOCK, _SVR)
_IN_CONN = tuple((_T.CONNECTION, *path) for path in _CONN_OWNERS)
_BYTES_OWNERS = (*_IN_SOCK, *_IN_CONN, _SVR)

# ------------------------------------------------------------------------ form kits


def _lifecycle(
    parents: tuple[tuple[ResourceType, ...], ...] = ((),),
) -> tuple[Form, ...]:
    """The list / list-detail / remove / force-remove forms every configured type has."""
    return (
        Form(
            Action.LIST,
            parents,
            NameUse.OPTIONAL,
            summary="list the names (with NAME: only that one)",
        ),
        Form(
            Action.LIST_DETAIL,
            parents,
            NameUse.OPTIONAL,
            summary="list with settings (with NAME: only that one)",
        ),
        Form(Action.REMOVE, parents, summary="remove; refused while in use"),
        Form(Action.FORCE_REMOVE, parents, summary="remove even while in use"),
    )


_LISTENER_PARAMS = (
    _LISTEN,
    _UPSTREAM,
    _ACCEPTOR_ELG,
    _WORKER_ELG,
    _IN_BUFFER,
    _OUT_BUFFER,
    _IDLE_TIMEOUT,
)
_TCP_LB_PARAMS = (
    _PROTOCOL,
    _SECURITY_GROUP,
    _CERT_KEYS,
    _MAX_CONNECTIONS,
    _HANDSHAKE_TIMEOUT,
    _HALF_CLOSED_TIMEOUT,
    *_L7_LIMIT_PARAMS,
)
_SOCKS5_PARAMS = (_SECURITY_GROUP, _MAX_CONNECTIONS, _HANDSHAKE_TIMEOUT, _HALF_CLOSED_TIMEOUT)

# ------------------------------------------------------------------------ the table

_TYPES: tuple[TypeSpec, ...] = (
    TypeSpec(
        _T.TCP_LB,
        "tl",
        "a TCP/HTTP load balancer listening on one address",
        False,
        NameKind.NAME,
        (
            Form(
                Action.ADD,
                params=(*_LISTENER_PARAMS, *_TCP_LB_PARAMS),
                summary="start listening and balancing to the upstream",
            ),
            Form(
                Action.UPDATE,
                params=tuple(_optional(p) for p in (*_LISTENER_PARAMS[1:], *_TCP_LB_PARAMS)),
                needs_change=True,
                summary="change any setting but the address",
            ),
            *_lifecycle(),
        ),
    ),
    TypeSpec(
        _T.SOCKS5_SERVER,
        "socks5",
        "a socks5 server whose targets are, by default, servers of its upstream",
        False,
        NameKind.NAME,
        (
            Form(
                Action.ADD,
                params=(*_LISTENER_PARAMS, *_SOCKS5_PARAMS),
                flags=(_ALLOW_NON_BACKEND, _DENY_NON_BACKEND),
                exclusive_flags=(("allow-non-backend", "deny-non-backend"),),
                summary="start a socks5 server",
            ),
            Form(
                Action.UPDATE,
                params=tuple(_optional(p) for p in (*_LISTENER_PARAMS[1:], *_SOCKS5_PARAMS)),
                flags=(_ALLOW_NON_BACKEND, _DENY_NON_BACKEND),
                exclusive_flags=(("allow-non-backend", "deny-non-backend"),),
                needs_change=True,
                summary="change any setting but the address",
            ),
            *_lifecycle(),
        ),
    ),
    TypeSpec(
        _T.EVENT_LOOP_GROUP,
        "elg",
        "a named group of event loops",
        False,
        NameKind.NAME,
        (Form(Action.ADD, summary="create an empty group"), *_lifecycle()),
    ),
    TypeSpec(
        _T.EVENT_LOOP,
        "el",
        "an event loop (one thread) in an event-loop group",
        False,
        NameKind.NAME,
        (
            Form(
                Action.ADD,
                ((_T.EVENT_LOOP_GROUP,),),
                summary="start a loop in the group",
            ),
            *_lifecycle(((_T.EVENT_LOOP_GROUP,),)),
        ),
    ),
    TypeSpec(
        _T.UPSTREAM,
        "ups",
        "a named list of weighted server groups",
        False,
        NameKind.NAME,
        (Form(Action.ADD, summary="create an empty upstream"), *_lifecycle()),
    ),
    TypeSpec(
        _T.SERVER_GROUP,
        "sg",
        "health-checked servers balanced by a method; may be attached to upstreams",
        False,
        NameKind.NAME,
        (
            Form(
                Action.ADD,
                params=(
                    _HC_TIMEOUT,
                    _HC_PERIOD,
                    _HC_UP,
                    _HC_DOWN,
                    _METHOD,
                    _HC_ELG,
                    _ANNOTATIONS,
                ),
                summary="create a server group",
            ),
            Form(
                Action.ADD,
                ((_T.UPSTREAM,),),
                params=(_WEIGHT,),
                summary="attach an existing server group to an upstream",
            ),
            Form(
                Action.UPDATE,
                params=tuple(
                    _optional(p)
                    for p in (_HC_TIMEOUT, _HC_PERIOD, _HC_UP, _HC_DOWN, _METHOD, _ANNOTATIONS)
                ),
                needs_change=True,
                summary="change health checks, method or annotations",
            ),
            Form(
                Action.UPDATE,
                ((_T.UPSTREAM,),),
                params=(_optional(_WEIGHT),),
                needs_change=True,
                summary="change the weight of the group in the upstream",
            ),
            *_lifecycle(((), (_T.UPSTREAM,))),
        ),
    ),
    TypeSpec(
        _T.SERVER,
        "svr",
        "a backend address in a server group",
        False,
        NameKind.NAME,
        (
            Form(
                Action.ADD,
                ((_T.SERVER_GROUP,),),
                params=(_BACKEND, _WEIGHT),
                summary="add a backend; it starts DOWN until checked healthy",
            ),
            Form(
                Action.UPDATE,
                ((_T.SERVER_GROUP,),),
                params=(_optional(_WEIGHT),),
                needs_change=True,
                summary="change the weight",
            ),
            *_lifecycle(((_T.SERVER_GROUP,),)),
        ),
    ),
    TypeSpec(
        _T.SECURITY_GROUP,
        "secg",
        "ordered allow/deny rules applied when accepting",
        False,
        NameKind.NAME,
        (
            Form(Action.ADD, params=(_SECG_DEFAULT,), summary="create a security group"),
            Form(
                Action.UPDATE,
                params=(_optional(_SECG_DEFAULT),),
                needs_change=True,
                summary="change the default",
            ),
            *_lifecycle(),
        ),
    ),
    TypeSpec(
        _T.SECURITY_GROUP_RULE,
        "secgr",
        "one rule of a security group: network + protocol + ports -> allow/deny",
        False,
        NameKind.NAME,
        (
            Form(
                Action.ADD,
                ((_T.SECURITY_GROUP,),),
                params=(_NETWORK, _TRANSPORT, _PORT_RANGE, _RULE_ACTION),
                summary="append a rule",
            ),
            *_lifecycle(((_T.SECURITY_GROUP,),)),
        ),
    ),
    TypeSpec(
        _T.CERT_KEY,
        "ck",
        "a certificate chain and private key loaded from PEM files",
        False,
        NameKind.NAME,
        (Form(Action.ADD, params=(_CERT, _KEY), summary="load a cert-key"), *_lifecycle()),
    ),
    TypeSpec(
        _T.SMART_GROUP_DELEGATE,
        None,
        "keeps a server group in step with the instances of a discovered service",
        False,
        NameKind.NAME,
        (
            Form(
                Action.ADD,
                params=(_SERVICE, _ZONE, _DELEGATE_SG),
                summary="start following a service",
            ),
            *_lifecycle(),
        ),
    ),
    TypeSpec(
        _T.SMART_NODE_DELEGATE,
        None,
        "registers a local service instance with the discovery registry",
        False,
        NameKind.NAME,
        (
            Form(
                Action.ADD,
                params=(_SERVICE, _ZONE, _NIC, _NODE_IP, _NODE_PORT, _IP_TYPE),
                exactly_one_of=(("nic", "address"),),
                summary="register an instance (by nic or by address)",
            ),
            *_lifecycle(),
        ),
    ),
    TypeSpec(
        _T.SERVER_SOCK,
        "ss",
        "a listening socket",
        True,
        NameKind.ID,
        (
            Form(Action.LIST, _SOCK_OWNERS, NameUse.NONE, summary="list listening sockets"),
            Form(Action.LIST_DETAIL, _SOCK_OWNERS, NameUse.NONE, summary="with statistics"),
        ),
    ),
    TypeSpec(
        _T.CONNECTION,
        "conn",
        "an open connection",
        True,
        NameKind.ID,
        (
            Form(Action.LIST, _CONN_OWNERS, NameUse.NONE, summary="list connections"),
            Form(Action.LIST_DETAIL, _CONN_OWNERS, NameUse.NONE, summary="with statistics"),
            Form(
                Action.FORCE_REMOVE,
                _CONN_OWNERS,
                NameUse.REQUIRED_OR_PATTERN,
                summary="close the named connection, or every one a /regex/ matches",
            ),
        ),
    ),
    TypeSpec(
        _T.SESSION,
        "sess",
        "a pair of frontend and backend connections",
        True,
        NameKind.ID,
        (
            Form(Action.LIST, (_TL, _S5), NameUse.NONE, summary="list sessions"),
            Form(Action.LIST_DETAIL, (_TL, _S5), NameUse.NONE, summary="with statistics"),
            Form(
                Action.FORCE_REMOVE,
                (_TL, _S5),
                NameUse.REQUIRED_OR_PATTERN,
                summary="close the named session, or every one a /regex/ matches",
            ),
        ),
    ),
    TypeSpec(
        _T.DNS_CACHE,
        None,
        "resolved host names",
        True,
        NameKind.ID,
        (
            Form(Action.LIST, name=NameUse.NONE, summary="list cached host names"),
            Form(Action.LIST_DETAIL, name=NameUse.NONE, summary="with addresses and expiry"),
            Form(
                Action.FORCE_REMOVE,
                name=NameUse.REQUIRED_OR_PATTERN,
                summary="forget a host name, or every one a /regex/ matches",
            ),
        ),
    ),
    TypeSpec(
        _T.BYTES_IN,
        "bin",
        "bytes received, a counter",
        True,
        NameKind.ID,
        (Form(Action.LIST, _BYTES_OWNERS, NameUse.NONE, summary="the count"),),
    ),
    TypeSpec(
        _T.BYTES_OUT,
        "bout",
        "bytes sent, a counter",
        True,
        NameKind.ID,
        (Form(Action.LIST, _BYTES_OWNERS, NameUse.NONE, summary="the count"),),
    ),
    TypeSpec(
        _T.ACCEPTED_CONN_COUNT,
        None,
        "connections accepted by a server socket, a counter",
        True,
        NameKind.ID,
        (Form(Action.LIST, _IN_SOCK, NameUse.NONE, summary="the count"),),
    ),
)

GRAMMAR: Final[Mapping[ResourceType, TypeSpec]] = {spec.type: spec for spec in _TYPES}
"""Every resource type and its forms, in the order of SPEC §3.1."""

TYPE_BY_WORD: Final[Mapping[str, ResourceType]] = {
    **{t.value: t for t in ResourceType},
    **{spec.short: spec.type for spec in _TYPES if spec.short is not None},
}


def forms_for(type_: ResourceType, action: Action) -> tuple[Form, ...]:
    """The forms of ``type_`` for ``action``, in table order.

    Args:
        type_: The resource type.
        action: The action.

    Returns:
        The forms; empty when the type does not support the action.
    """
    return tuple(form for form in GRAMMAR[type_].forms if form.action is action)


def find_form(type_: ResourceType, action: Action, path: tuple[ResourceType, ...]) -> Form | None:
    """The form of ``type_`` and ``action`` that accepts the parent chain ``path``.

    Args:
        type_: The resource type.
        action: The action.
        path: The parent types, nearest first.

    Returns:
        The form, or None when no form accepts that chain.
    """
    for form in forms_for(type_, action):
        if path in form.parents:
            return form
    return None


# ---------------------------------------------------------------- system controllers


class ControllerType(enum.StrEnum):
    """A controller that ``System:`` commands can add or remove."""

    RESP = "resp-controller"
    HTTP = "http-controller"


@dataclass(frozen=True, slots=True)
class ControllerSpec:
    """A controller type and its forms (no parents, no flags)."""

    type: ControllerType
    summary: str
    forms: tuple[Form, ...]


def _controller_forms(add_params: tuple[ParamSpec, ...], what: str) -> tuple[Form, ...]:
    return (
        Form(Action.ADD, params=add_params, summary=f"start a {what}"),
        Form(Action.LIST, name=NameUse.OPTIONAL, summary="list the names"),
        Form(Action.LIST_DETAIL, name=NameUse.OPTIONAL, summary="with addresses"),
        Form(Action.REMOVE, summary=f"stop a {what}"),
    )


_CONTROL_LISTEN = replace(_LISTEN, doc="where to listen; loopback is the sane choice")

CONTROLLERS: Final[Mapping[ControllerType, ControllerSpec]] = {
    ControllerType.RESP: ControllerSpec(
        ControllerType.RESP,
        "a Redis-protocol controller for redis-cli",
        _controller_forms(
            (
                _CONTROL_LISTEN,
                ParamSpec(
                    "password",
                    ValueKind.SECRET,
                    required=True,
                    doc="the password clients must AUTH with",
                ),
            ),
            "RESP controller",
        ),
    ),
    ControllerType.HTTP: ControllerSpec(
        ControllerType.HTTP,
        "a REST + JSON controller",
        _controller_forms(
            (
                _CONTROL_LISTEN,
                ParamSpec(
                    "token",
                    ValueKind.SECRET,
                    default_note="none: no authentication",
                    doc="the bearer token clients must send",
                ),
            ),
            "HTTP controller",
        ),
    ),
}

CONTROLLER_BY_WORD: Final[Mapping[str, ControllerType]] = {c.value: c for c in ControllerType}
