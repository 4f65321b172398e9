"""The parser: SPEC §3.1 examples, short names, values, System: commands, writing back."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from vproxy.control.command import (
    Action,
    Address,
    Command,
    CommandSyntaxError,
    ControllerType,
    IpType,
    Method,
    NamePattern,
    PortRange,
    Preposition,
    Ref,
    ResourceType,
    SecurityDefault,
    SystemCommand,
    SystemOp,
    TransportProtocol,
    format_command,
    parse,
    parse_words,
)

T = ResourceType
A = Action

SPEC_EXAMPLES: list[tuple[str, Command]] = [
    (
        "add event-loop-group worker",
        Command(A.ADD, T.EVENT_LOOP_GROUP, "worker"),
    ),
    (
        "add event-loop worker1 to event-loop-group worker",
        Command(A.ADD, T.EVENT_LOOP, "worker1", (Ref(T.EVENT_LOOP_GROUP, "worker"),)),
    ),
    (
        "add server-group ngx timeout 500 period 1000 up 2 down 3 method wrr "
        "event-loop-group worker",
        Command(
            A.ADD,
            T.SERVER_GROUP,
            "ngx",
            params={
                "timeout": 500,
                "period": 1000,
                "up": 2,
                "down": 3,
                "method": Method.WRR,
                "event-loop-group": "worker",
            },
        ),
    ),
    (
        "add server backend1 to server-group ngx address 127.0.0.1:8080 weight 10",
        Command(
            A.ADD,
            T.SERVER,
            "backend1",
            (Ref(T.SERVER_GROUP, "ngx"),),
            {"address": Address("127.0.0.1", 8080), "weight": 10},
        ),
    ),
    (
        "add upstream backend-groups",
        Command(A.ADD, T.UPSTREAM, "backend-groups"),
    ),
    (
        "add server-group ngx to upstream backend-groups weight 10",
        Command(
            A.ADD,
            T.SERVER_GROUP,
            "ngx",
            (Ref(T.UPSTREAM, "backend-groups"),),
            {"weight": 10},
        ),
    ),
    (
        "add tcp-lb lb0 acceptor-elg acceptor event-loop-group worker address "
        "127.0.0.1:18080 upstream backend-groups in-buffer-size 16384 out-buffer-size 16384",
        Command(
            A.ADD,
            T.TCP_LB,
            "lb0",
            params={
                "acceptor-elg": "acceptor",
                "event-loop-group": "worker",
                "address": Address("127.0.0.1", 18080),
                "upstream": "backend-groups",
                "in-buffer-size": 16384,
                "out-buffer-size": 16384,
            },
        ),
    ),
    (
        "list-detail server in server-group ngx",
        Command(A.LIST_DETAIL, T.SERVER, None, (Ref(T.SERVER_GROUP, "ngx"),)),
    ),
    (
        "update server-group ngx method wlc",
        Command(A.UPDATE, T.SERVER_GROUP, "ngx", params={"method": Method.WLC}),
    ),
    (
        "update server backend1 in server-group ngx weight 5",
        Command(A.UPDATE, T.SERVER, "backend1", (Ref(T.SERVER_GROUP, "ngx"),), {"weight": 5}),
    ),
    (
        "add security-group secg0 default allow",
        Command(A.ADD, T.SECURITY_GROUP, "secg0", params={"default": SecurityDefault.ALLOW}),
    ),
    (
        "add security-group-rule r0 to security-group secg0 network 10.0.0.0/8 "
        "protocol TCP port-range 22,22 default deny",
        Command(
            A.ADD,
            T.SECURITY_GROUP_RULE,
            "r0",
            (Ref(T.SECURITY_GROUP, "secg0"),),
            {
                "network": IPv4Network("10.0.0.0/8"),
                "protocol": TransportProtocol.TCP,
                "port-range": PortRange(22, 22),
                "default": SecurityDefault.DENY,
            },
        ),
    ),
    (
        "add socks5-server s5 address 127.0.0.1:18081 upstream backend-groups "
        "security-group secg0 allow-non-backend",
        Command(
            A.ADD,
            T.SOCKS5_SERVER,
            "s5",
            params={
                "address": Address("127.0.0.1", 18081),
                "upstream": "backend-groups",
                "security-group": "secg0",
            },
            flags=frozenset({"allow-non-backend"}),
        ),
    ),
    (
        "list connection in tcp-lb lb0",
        Command(A.LIST, T.CONNECTION, None, (Ref(T.TCP_LB, "lb0"),)),
    ),
    (
        "list bytes-in in server backend1 in server-group ngx",
        Command(
            A.LIST,
            T.BYTES_IN,
            None,
            (Ref(T.SERVER, "backend1"), Ref(T.SERVER_GROUP, "ngx")),
        ),
    ),
    (
        "force-remove conn /.*/ from el worker1 in elg worker",
        Command(
            A.FORCE_REMOVE,
            T.CONNECTION,
            NamePattern(".*"),
            (Ref(T.EVENT_LOOP, "worker1"), Ref(T.EVENT_LOOP_GROUP, "worker")),
        ),
    ),
    (
        "remove server-group ngx from upstream backend-groups",
        Command(A.REMOVE, T.SERVER_GROUP, "ngx", (Ref(T.UPSTREAM, "backend-groups"),)),
    ),
]


@pytest.mark.parametrize(("line", "expected"), SPEC_EXAMPLES, ids=[x[0] for x in SPEC_EXAMPLES])
def test_spec_examples(line: str, expected: Command) -> None:
    command = parse(line)
    assert command == expected
    assert parse(format_command(command)) == expected
    assert parse(format_command(command, short=True)) == expected
    assert parse(expected.to_line()) == expected


def test_spec_examples_cover_the_whole_list() -> None:
    assert len(SPEC_EXAMPLES) == 17


def test_command_relations() -> None:
    add = parse("add server backend1 to server-group ngx address 127.0.0.1:8080")
    assert isinstance(add, Command)
    assert add.preposition is Preposition.TO
    assert add.target == add.parent == Ref(T.SERVER_GROUP, "ngx")
    assert add.form is not None
    assert add.form.action is A.ADD
    listing = parse("list bytes-in in server backend1 in server-group ngx")
    assert isinstance(listing, Command)
    assert listing.preposition is Preposition.IN
    assert listing.target is None
    assert listing.parent == Ref(T.SERVER, "backend1")
    detach = parse("remove server-group ngx from upstream u")
    assert isinstance(detach, Command)
    assert detach.preposition is Preposition.FROM
    assert detach.target == Ref(T.UPSTREAM, "u")
    standalone = parse("remove server-group ngx")
    assert isinstance(standalone, Command)
    assert standalone.preposition is None
    assert standalone.target is None


ACTION_WORDS = [
    ("add", "a", A.ADD),
    ("list", "l", A.LIST),
    ("list-detail", "L", A.LIST_DETAIL),
    ("update", "u", A.UPDATE),
    ("remove", "r", A.REMOVE),
    ("force-remove", "R", A.FORCE_REMOVE),
]


@pytest.mark.parametrize(("long", "short", "action"), ACTION_WORDS)
def test_action_short_forms(long: str, short: str, action: Action) -> None:
    rest = {
        A.ADD: "upstream u0",
        A.LIST: "upstream",
        A.LIST_DETAIL: "upstream",
        A.UPDATE: "security-group g default deny",
        A.REMOVE: "upstream u0",
        A.FORCE_REMOVE: "upstream u0",
    }[action]
    by_long, by_short = parse(f"{long} {rest}"), parse(f"{short} {rest}")
    assert isinstance(by_long, Command)
    assert by_long.action is action
    assert by_long == by_short


def test_actions_are_case_sensitive() -> None:
    assert parse("l upstream") != parse("L upstream")
    with pytest.raises(CommandSyntaxError, match='unknown action "ADD"'):
        parse("ADD upstream u0")


TYPE_NAMES = [
    ("tcp-lb", "tl"),
    ("socks5-server", "socks5"),
    ("event-loop-group", "elg"),
    ("event-loop", "el"),
    ("upstream", "ups"),
    ("server-group", "sg"),
    ("server", "svr"),
    ("security-group", "secg"),
    ("security-group-rule", "secgr"),
    ("cert-key", "ck"),
    ("smart-group-delegate", None),
    ("smart-node-delegate", None),
    ("server-sock", "ss"),
    ("connection", "conn"),
    ("session", "sess"),
    ("dns-cache", None),
    ("bytes-in", "bin"),
    ("bytes-out", "bout"),
    ("accepted-conn-count", None),
]

# A valid `list` of each type, with the type written as {}.
LIST_LINES = {
    "tcp-lb": "list {}",
    "socks5-server": "list {}",
    "event-loop-group": "list {}",
    "event-loop": "list {} in elg g",
    "upstream": "list {}",
    "server-group": "list {}",
    "server": "list {} in sg g",
    "security-group": "list {}",
    "security-group-rule": "list {} in secg g",
    "cert-key": "list {}",
    "smart-group-delegate": "list {}",
    "smart-node-delegate": "list {}",
    "server-sock": "list {} in tl lb0",
    "connection": "list {} in el e in elg g",
    "session": "list {} in socks5 s",
    "dns-cache": "list {}",
    "bytes-in": "list {} in ss 127.0.0.1:80 in tl lb0",
    "bytes-out": "list {} in conn 1.2.3.4:5/[::1]:80 in tl lb0",
    "accepted-conn-count": "list {} in ss 0.0.0.0:80 in el e in elg g",
}


def test_every_type_of_spec_is_known() -> None:
    assert {long for long, _ in TYPE_NAMES} == {t.value for t in ResourceType}


@pytest.mark.parametrize(("long", "short"), TYPE_NAMES)
def test_type_short_names(long: str, short: str | None) -> None:
    command = parse(LIST_LINES[long].format(long))
    assert isinstance(command, Command)
    assert command.type is ResourceType(long)
    if short is not None:
        assert parse(LIST_LINES[long].format(short)) == command
    # Short names work in parent chains too.
    assert parse(LIST_LINES[long].format(long).replace(" elg ", " event-loop-group ")) == command


@pytest.mark.parametrize(
    ("line", "key", "value"),
    [
        ("add tl lb addr 127.0.0.1:0 ups u", "address", Address("127.0.0.1", 0)),
        ("add tl lb address [::1]:80 ups u", "address", Address("::1", 80)),
        ("add tl lb address [0:0::1]:80 ups u", "address", Address("::1", 80)),
        ("add tl lb address 0.0.0.0:65535 ups u", "address", Address("0.0.0.0", 65535)),
        ("add tl lb address 1.2.3.4:1 ups u aelg a", "acceptor-elg", "a"),
        ("add tl lb address 1.2.3.4:1 ups u elg (worker-elg)", "event-loop-group", "(worker-elg)"),
        ("add tl lb address 1.2.3.4:1 ups u protocol HTTP/1.x", "protocol", "http/1.x"),
        ("add tl lb address 1.2.3.4:1 ups u protocol h2", "protocol", "h2"),
        ("add tl lb address 1.2.3.4:1 ups u protocol framed-int32", "protocol", "framed-int32"),
        ("add tl lb address 1.2.3.4:1 ups u protocol my.proto/v2", "protocol", "my.proto/v2"),
        ("add tl lb address 1.2.3.4:1 ups u secg s", "security-group", "s"),
        ("add tl lb address 1.2.3.4:1 ups u ck a,b", "cert-key", ("a", "b")),
        ("add tl lb address 1.2.3.4:1 ups u timeout 1", "timeout", 1),
        ("add tl lb address 1.2.3.4:1 ups u in-buffer-size 256", "in-buffer-size", 256),
        ("add tl lb address 1.2.3.4:1 ups u out-buffer-size 16777216", "out-buffer-size", 16777216),
        (
            "add svr s to sg g address backend.example.com:80",
            "address",
            Address("backend.example.com", 80),
        ),
        (
            "add svr s to sg g address Backend.Example.COM.:80",
            "address",
            Address("backend.example.com", 80),
        ),
        ("add svr s to sg g address localhost:80", "address", Address("localhost", 80)),
        ("add svr s to sg g addr [2001:db8::1]:443 w 0", "address", Address("2001:db8::1", 443)),
        ("add svr s to sg g addr 1.2.3.4:80 w 1000", "weight", 1000),
        ("add sg g timeout 1 period 3600000 up 1 down 1000 method SOURCE", "method", Method.SOURCE),
        (
            'add sg g timeout 1 period 1 up 1 down 1 annotations {"host":"a.com"}',
            "annotations",
            {"host": "a.com"},
        ),
        (
            'add sg g timeout 1 period 1 up 1 down 1 annotations \'{"a": "b c"}\'',
            "annotations",
            {"a": "b c"},
        ),
        ("add sg g timeout 1 period 1 up 1 down 1 annotations {}", "annotations", {}),
        ("add secg g default DENY", "default", SecurityDefault.DENY),
        (
            "add secgr r to secg g net ::/0 port-range 1,65535 default allow",
            "network",
            IPv6Network("::/0"),
        ),
        (
            "add secgr r to secg g net 0.0.0.0/0 port-range 1,65535 default allow",
            "port-range",
            PortRange(1, 65535),
        ),
        (
            "add secgr r to secg g net 10.0.0.0/8 protocol udp port-range 1,2 default allow",
            "protocol",
            TransportProtocol.UDP,
        ),
        ("add ck c cert /a.pem,/b.pem key /k.pem", "cert", ("/a.pem", "/b.pem")),
        ("add ck c cert 'C:\\my certs\\a.pem' key k.pem", "cert", ("C:\\my certs\\a.pem",)),
        ('add ck c cert a.pem key "/tmp/my key.pem"', "key", "/tmp/my key.pem"),
        ("add smart-group-delegate d service svc zone z server-group sg0", "server-group", "sg0"),
        ("add smart-node-delegate d service svc zone z nic eth0 port 80", "nic", "eth0"),
        (
            "add smart-node-delegate d service svc zone z nic eth0 port 80 ip-type v6",
            "ip-type",
            IpType.V6,
        ),
        (
            "add smart-node-delegate d service svc zone z addr 10.0.0.1 port 80",
            "address",
            IPv4Address("10.0.0.1"),
        ),
        (
            "add smart-node-delegate d service svc zone z address fe80::1 port 1",
            "address",
            IPv6Address("fe80::1"),
        ),
    ],
)
def test_values(line: str, key: str, value: object) -> None:
    command = parse(line)
    assert isinstance(command, Command)
    assert command.params[key] == value
    assert parse(command.to_line()) == command


def test_aliases_normalise_to_long_names() -> None:
    short = parse("a tl lb addr 1.2.3.4:80 ups u aelg a elg w secg s ck c1,c2")
    long = parse(
        "add tcp-lb lb address 1.2.3.4:80 upstream u acceptor-elg a event-loop-group w "
        "security-group s cert-key c1,c2"
    )
    assert short == long
    assert isinstance(short, Command)
    assert set(short.params) == {
        "address",
        "upstream",
        "acceptor-elg",
        "event-loop-group",
        "security-group",
        "cert-key",
    }


def test_parameters_and_flags_in_any_order() -> None:
    one = parse("add socks5 s allow-non-backend ups u address 1.2.3.4:80 timeout 5")
    two = parse("add socks5 s timeout 5 address 1.2.3.4:80 ups u allow-non-backend")
    assert one == two


def test_parser_applies_no_defaults() -> None:
    command = parse("add tcp-lb lb0 address 127.0.0.1:80 upstream u")
    assert isinstance(command, Command)
    assert command.params == {"address": Address("127.0.0.1", 80), "upstream": "u"}
    assert command.flags == frozenset()


@pytest.mark.parametrize(
    ("line", "name"),
    [
        (
            "force-remove conn 127.0.0.1:5000/127.0.0.1:80 from tl lb0",
            "127.0.0.1:5000/127.0.0.1:80",
        ),
        ("R conn [::1]:5000/[::1]:80 from ss [::1]:80 in tl lb0", "[::1]:5000/[::1]:80"),
        ("R sess a->b from socks5 s", "a->b"),
        ("R dns-cache example.com", "example.com"),
        ("R conn /127\\.0\\.0\\.1:.*/ from tl lb0", NamePattern("127\\.0\\.0\\.1:.*")),
        ('R conn "/a b/" from tl lb0', NamePattern("a b")),
        ("R sess // from tl lb0", NamePattern("")),
        ("R dns-cache /.*/", NamePattern(".*")),
    ],
)
def test_force_remove_names_and_patterns(line: str, name: object) -> None:
    command = parse(line)
    assert isinstance(command, Command)
    assert command.name == name
    assert parse(command.to_line()) == command


def test_name_pattern_matches_like_search() -> None:
    pattern = NamePattern("127\\.0\\.0\\.1")
    assert pattern.matches("127.0.0.1:5000/127.0.0.1:80")
    assert not pattern.matches("10.0.0.1:5000/10.0.0.2:80")
    assert str(pattern) == "/127\\.0\\.0\\.1/"


@pytest.mark.parametrize(
    "line",
    [
        "list tcp-lb lb0",
        "list-detail tcp-lb lb0",
        "L sg g in ups u",
        "l svr s1 in sg g",
        "list-detail tcp-lb",
    ],
)
def test_list_takes_an_optional_name(line: str) -> None:
    command = parse(line)
    assert isinstance(command, Command)
    assert parse(command.to_line()) == command


def test_default_names_in_parentheses() -> None:
    command = parse("list-detail event-loop in event-loop-group (worker-elg)")
    assert isinstance(command, Command)
    assert command.parents == (Ref(T.EVENT_LOOP_GROUP, "(worker-elg)"),)


def test_parse_words_skips_the_lexer() -> None:
    words = ["add", "ck", "c", "cert", "/tmp/a b.pem", "key", "/tmp/k.pem"]
    command = parse_words(words)
    assert isinstance(command, Command)
    assert command.params["cert"] == ("/tmp/a b.pem",)
    assert parse(command.to_line()) == command


# --------------------------------------------------------------------- System: ...

SYSTEM_EXAMPLES: list[tuple[str, SystemCommand]] = [
    ("System: help", SystemCommand(SystemOp.MAN)),
    ("System: man", SystemCommand(SystemOp.MAN)),
    ("help", SystemCommand(SystemOp.MAN)),
    ("man", SystemCommand(SystemOp.MAN)),
    ("system: man", SystemCommand(SystemOp.MAN)),
    ("man tcp-lb", SystemCommand(SystemOp.MAN, topic=T.TCP_LB)),
    ("System: man tl", SystemCommand(SystemOp.MAN, topic=T.TCP_LB)),
    ("man server add", SystemCommand(SystemOp.MAN, topic=T.SERVER, topic_action=A.ADD)),
    ("System: man conn R", SystemCommand(SystemOp.MAN, T.CONNECTION, A.FORCE_REMOVE)),
    ("System: list config", SystemCommand(SystemOp.LIST_CONFIG)),
    ("System: save /tmp/a.conf", SystemCommand(SystemOp.SAVE, path="/tmp/a.conf")),
    ('System: load "/tmp/my a.conf"', SystemCommand(SystemOp.LOAD, path="/tmp/my a.conf")),
    ("System: shutdown", SystemCommand(SystemOp.SHUTDOWN)),
    (
        "System: add resp-controller r0 address 127.0.0.1:16309 password 123456",
        SystemCommand(
            SystemOp.CONTROLLER,
            controller=ControllerType.RESP,
            action=A.ADD,
            name="r0",
            params={"address": Address("127.0.0.1", 16309), "password": "123456"},
        ),
    ),
    (
        "System: add http-controller h0 address [::1]:18776",
        SystemCommand(
            SystemOp.CONTROLLER,
            controller=ControllerType.HTTP,
            action=A.ADD,
            name="h0",
            params={"address": Address("::1", 18776)},
        ),
    ),
    (
        "System: a http-controller h0 addr 0.0.0.0:0 token 's e c r e t'",
        SystemCommand(
            SystemOp.CONTROLLER,
            controller=ControllerType.HTTP,
            action=A.ADD,
            name="h0",
            params={"address": Address("0.0.0.0", 0), "token": "s e c r e t"},
        ),
    ),
    (
        "System: list resp-controller",
        SystemCommand(SystemOp.CONTROLLER, controller=ControllerType.RESP, action=A.LIST),
    ),
    (
        "System: L http-controller",
        SystemCommand(SystemOp.CONTROLLER, controller=ControllerType.HTTP, action=A.LIST_DETAIL),
    ),
    (
        "System: remove resp-controller r0",
        SystemCommand(
            SystemOp.CONTROLLER, controller=ControllerType.RESP, action=A.REMOVE, name="r0"
        ),
    ),
]


@pytest.mark.parametrize(("line", "expected"), SYSTEM_EXAMPLES, ids=[x[0] for x in SYSTEM_EXAMPLES])
def test_system_commands(line: str, expected: SystemCommand) -> None:
    command = parse(line)
    assert command == expected
    assert parse(format_command(command)) == expected
    assert parse(format_command(command, short=True)) == expected
    assert format_command(command).startswith("System: ")


@pytest.mark.parametrize(
    ("line", "privileged"),
    [
        ("help", False),
        ("System: list config", False),
        ("System: save a", True),
        ("System: load a", True),
        ("System: shutdown", True),
        ("System: add resp-controller r address 127.0.0.1:1 password p", True),
        ("System: remove http-controller h", True),
        ("System: list resp-controller", False),
        ("System: list-detail http-controller", False),
    ],
)
def test_privileged_system_commands(line: str, privileged: bool) -> None:
    command = parse(line)
    assert isinstance(command, SystemCommand)
    assert command.privileged is privileged


@pytest.mark.parametrize(
    ("line", "word"),
    [
        ("System:", None),
        ("System: reboot", "reboot"),
        ("System: save", None),
        ("System: save a b", "b"),
        ("System: shutdown now", "now"),
        ("System: list config x", "x"),
        ("System: list confg", "confg"),
        ("System: update resp-controller r", "update"),
        ("System: add resp-controller r address 127.0.0.1:1", None),
        ("System: add resp-controller r password p", None),
        ("System: add resp-controller r address 127.0.0.1:1 password p token t", "token"),
        ("System: add resp-controller r address localhost:1 password p", "localhost:1"),
        ("System: add http-controller h address 1.2.3.4:1 token ''", ""),
        ("System: add resp-controller", None),
        ("System: man nothing", "nothing"),
        ("System: man tcp-lb fly", "fly"),
        ("System: man connection update", "update"),
        ("man tcp-lb add extra", "extra"),
        ("System: save ''", ""),
        ('System: load "a\\nb"', "a\nb"),
        ("System: remove resp-controller", None),
    ],
)
def test_system_command_errors(line: str, word: str | None) -> None:
    with pytest.raises(CommandSyntaxError) as info:
        parse(line)
    assert info.value.word == word


# ------------------------------------------------------------------- value objects


def test_address_helpers() -> None:
    assert Address("127.0.0.1", 80).ip == IPv4Address("127.0.0.1")
    assert Address("::1", 80).ip == IPv6Address("::1")
    assert Address("example.com", 80).ip is None
    assert str(Address("::1", 80)) == "[::1]:80"
    assert str(Address("example.com", 80)) == "example.com:80"


def test_port_range_helpers() -> None:
    ports = PortRange(20, 22)
    assert 20 in ports
    assert 22 in ports
    assert 23 not in ports
    assert "21" not in ports
    assert str(ports) == "20,22"


def test_parse_value_and_format_value() -> None:
    from vproxy.control.command import GRAMMAR, format_value, parse_value

    spec = GRAMMAR[T.SERVER].forms[0].params[1]
    assert spec.name == "weight"
    assert parse_value(spec, "7") == 7
    assert format_value(7) == "7"
    assert format_value(("a", "b")) == "a,b"
    assert format_value({"host": "a b"}) == '{"host":"a b"}'
    with pytest.raises(CommandSyntaxError, match='invalid value "x" for weight') as info:
        parse_value(spec, "x")
    assert info.value.word == "x"


def test_hand_built_commands() -> None:
    from vproxy.control.command import find_form

    assert find_form(T.SERVER, A.ADD, ()) is None
    odd = Command(A.ADD, T.SERVER, "s", params={"zzz": 1, "weight": 2}, flags=frozenset({"f"}))
    assert odd.form is None
    assert odd.to_line() == "add server s zzz 1 weight 2 f"
    system = SystemCommand(SystemOp.SAVE, path="/tmp/x y")
    assert system.to_line() == 'System: save "/tmp/x y"'
    assert parse(system.to_line(short=True)) == system


@pytest.mark.parametrize(
    ("words", "word"),
    [
        (["force-remove", "conn", "/\ud800/", "from", "tl", "x"], "/\ud800/"),
        (["add", "sg", "g", "annotations", '{"a":"\ud800"}'], '{"a":"\ud800"}'),
        (["add", "sg", "g", "annotations", '{"a":"\\ud800"}'], '{"a":"\\ud800"}'),
        (["add", "sg", "g", "annotations", '{"a":' + "[" * 60000], '{"a":' + "[" * 60000),
        (["add", "sg", "g", "annotations", "{" + " " * 65536 + "}"], "{" + " " * 65536 + "}"),
        (["add", "ck", "c", "cert", "a\ud800", "key", "k"], "a\ud800"),
    ],
    ids=["pattern", "json raw", "json escaped", "json deep", "json long", "path"],
)
def test_values_that_are_not_text_or_too_big(words: list[str], word: str) -> None:
    with pytest.raises(CommandSyntaxError) as info:
        parse_words(words)
    assert info.value.word == word
    info.value.resp_text.encode("utf-8")
