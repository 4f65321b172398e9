"""Malformed commands: each raises CommandSyntaxError naming the offending word.

Hand-written cases first, then hundreds generated from the grammar tables by breaking
a valid command of every form in every way the tables allow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from vproxy.control.command import (
    GRAMMAR,
    CommandError,
    CommandSyntaxError,
    ConflictError,
    Form,
    InUseError,
    NameUse,
    NotFoundError,
    ParamSpec,
    Preposition,
    ResourceType,
    ValueKind,
    join_words,
    parse,
)
from vproxy.control.command.errors import show_word
from vproxy.control.command.grammar import ACTION_PREPOSITION

# ------------------------------------------------------------------------ hierarchy


@pytest.mark.parametrize(
    ("cls", "status", "code"),
    [
        (CommandError, 400, "bad-command"),
        (CommandSyntaxError, 400, "syntax"),
        (NotFoundError, 404, "not-found"),
        (ConflictError, 409, "conflict"),
        (InUseError, 409, "in-use"),
    ],
)
def test_error_wire_forms(cls: type[CommandError], status: int, code: str) -> None:
    error = cls("server-group ngx is used by upstream u")
    assert isinstance(error, CommandError)
    assert error.message == "server-group ngx is used by upstream u"
    assert str(error) == error.message
    assert error.resp_text == "ERR server-group ngx is used by upstream u"
    assert error.http_status == status
    assert error.to_dict() == {"code": code, "message": error.message}


def test_in_use_is_a_conflict() -> None:
    assert issubclass(InUseError, ConflictError)
    assert not issubclass(NotFoundError, ConflictError)


def test_error_messages_stay_on_one_line() -> None:
    error = NotFoundError("no such\r\nthing")
    assert "\n" not in error.resp_text
    assert "\r" not in error.resp_text


def test_show_word_escapes_the_unprintable() -> None:
    assert show_word("a\nb") == '"a\\nb"'
    assert show_word('say "x"') == '"say \\"x\\""'
    assert show_word("\x85\u2028\ud800") == '"\\u0085\\u2028\\ud800"'
    show_word("\udfff").encode("utf-8")


# ---------------------------------------------------------------- hand-written cases

HAND_WRITTEN: list[tuple[str, str | None, str]] = [
    # (line, offending word or None at the end, fragment of the message)
    ("", None, "empty command"),
    ("ad server x", "ad", 'did you mean "add"'),
    ("System server", "System", "System: "),
    ("add", None, "a resource type"),
    ("add servr x", "servr", 'did you mean "server"'),
    ("add tcp-lb", None, "expected a name"),
    ("add tcp-lb in", "in", "expected a name"),
    ("add tcp-lb bad/name address 1.2.3.4:80 upstream u", "bad/name", "invalid name"),
    ("add tcp-lb " + "x" * 129 + " address 1.2.3.4:80 upstream u", "x" * 129, "1 to 128"),
    ("add upstream u0 extra", "extra", "takes no parameters"),
    (
        "add server backend1 to server-group ngx address 127.0.0.1:8080 wieght 10",
        "wieght",
        'unknown parameter "wieght" at position 9 for add server; expected one of: address, weight',
    ),
    ("add server s1 foo", "foo", 'expected "to server-group NAME"'),
    ("add server s1", None, 'expected "to server-group NAME"'),
    ("add server s1 in server-group g address 1.2.3.4:80", "in", '"to server-group NAME"'),
    ("add server s1 to server-group", None, "expected a name"),
    ("add server s1 to upstream u", "upstream", "server-group"),
    ("add server s1 to sg g", None, 'missing parameter "address"'),
    ("add server s1 to sg g address", "address", "missing value"),
    ("add server s1 to sg g address 1.2.3.4:80 address 1.2.3.4:81", "address", "duplicate"),
    ("add server s1 to sg g addr 1.2.3.4:80 address 1.2.3.4:81", "address", "duplicate"),
    ("add server s1 to sg g address 1.2.3.4", "1.2.3.4", "HOSTNAME:PORT"),
    ("add server s1 to sg g address 1.2.3.4:0", "1.2.3.4:0", "port"),
    ("add server s1 to sg g address 1.2.3.4:65536", "1.2.3.4:65536", "port"),
    ("add server s1 to sg g address ::1:80", "::1:80", "brackets"),
    ("add server s1 to sg g address [::1]80", "[::1]80", "expected"),
    ("add server s1 to sg g address [zz::1]:80", "[zz::1]:80", "not an IPv6"),
    ("add server s1 to sg g address 1.2.3.400:80", "1.2.3.400:80", "not an IPv4"),
    ("add server s1 to sg g address 01.2.3.4:80", "01.2.3.4:80", "not an IPv4"),
    ("add server s1 to sg g address -bad-.com:80", "-bad-.com:80", "expected"),
    ("add server s1 to sg g address 1.2.3.4:80 weight 1001", "1001", "0 to 1000"),
    ("add server s1 to sg g address 1.2.3.4:80 weight -1", "-1", "0 to 1000"),
    ("add server s1 to sg g address 1.2.3.4:80 weight 1_0", "1_0", "integer"),
    ("add server s1 to sg g address 1.2.3.4:80 weight ٣", "٣", "integer"),
    ("add tcp-lb lb address example.com:80 upstream u", "example.com:80", "IP"),
    ("add tcp-lb lb address 1.2.3.4:80 upstream u in-buffer-size 255", "255", "256"),
    (
        "add tcp-lb lb address 1.2.3.4:80 upstream u out-buffer-size 16777217",
        "16777217",
        "16777216",
    ),
    ("add tcp-lb lb address 1.2.3.4:80 upstream u timeout 0", "0", "1 to 86400000"),
    ("add tcp-lb lb address 1.2.3.4:80 upstream u protocol -x", "-x", "protocol"),
    ("add tcp-lb lb address 1.2.3.4:80 upstream u protocol a+b", "a+b", "protocol"),
    ("add tcp-lb lb address 1.2.3.4:80 upstream u cert-key a,a", "a,a", "twice"),
    ("add tcp-lb lb address 1.2.3.4:80 upstream u cert-key a,,b", "a,,b", "name"),
    (
        "add tcp-lb lb address 1.2.3.4:80 upstream u allow-non-backend",
        "allow-non-backend",
        "unknown parameter",
    ),
    (
        "add tcp-lb lb address 1.2.3.4:80 upstream u to upstream x",
        "to",
        "add tcp-lb takes no parent",
    ),
    ("add tcp-lb lb address 1.2.3.4:80", None, 'missing parameter "upstream"'),
    ("add sg g timeout 1 period 1 up 1", None, 'missing parameter "down"'),
    ("add sg g timeout 1 period 1 up 0 down 1", "0", "1 to 1000"),
    ("add sg g timeout 3600001 period 1 up 1 down 1", "3600001", "1 to 3600000"),
    ("add sg g timeout 1 period 1 up 1 down 1 method rr", "rr", "wrr, wlc, source"),
    ("add sg g timeout 1 period 1 up 1 down 1 annotations [1]", "[1]", "JSON object"),
    ('add sg g timeout 1 period 1 up 1 down 1 annotations {"a":1}', '{"a":1}', "JSON string"),
    ('add sg g timeout 1 period 1 up 1 down 1 annotations {"a"', '{"a"', "invalid JSON"),
    ("add sg g timeout 1 period 1 up 1 down 1 annotations " + "{" * 5000, "{" * 5000, "JSON"),
    ("add sg g weight 10", "weight", 'only valid after "to upstream NAME"'),
    ("add sg g timeout 1 period 1 up 1 down 1 to upstream u", "to", "must come right after"),
    ("add sg g to upstream u timeout 1", "timeout", "unknown parameter"),
    ("update sg g", None, "nothing to update"),
    ("update sg g in ups u", None, "nothing to update"),
    ("update sg g from ups u weight 1", "from", '"in upstream NAME"'),
    ("update sg g event-loop-group x", "event-loop-group", "a parameter of update server-group"),
    ("update tcp-lb lb address 1.2.3.4:80", "address", "unknown parameter"),
    ("update connection c", "update", "not supported for connection"),
    ("add connection c", "add", "not supported for connection"),
    ("remove bytes-in in tl lb0", "remove", "not supported for bytes-in"),
    ("update security-group-rule r in secg g default deny", "update", "not supported"),
    ("list connection", None, '"in TYPE NAME" (TYPE: tcp-lb, socks5-server, event-loop,'),
    ("list connection in tl", None, "expected a name"),
    ("list connection in event-loop e", None, '"in event-loop-group NAME"'),
    ("list connection in event-loop e in tl x", "tl", "event-loop-group"),
    ("list connection in upstream u", "upstream", "tcp-lb"),
    ("list connection in tl lb0 in elg x", "in", "takes no parent"),
    ("list connection in tl lb0 extra", "extra", "takes no parameters"),
    ("list tcp-lb in x y", "in", "takes no parent"),
    ("list tcp-lb a b", "b", "takes no parameters"),
    ("list bytes-in in tl lb0", "tl", "server-sock"),
    ("list bytes-in", None, "in TYPE NAME"),
    ("list accepted-conn-count in conn c in tl x", "conn", "server-sock"),
    ("list-detail bytes-in in svr s in sg g", "list-detail", "not supported"),
    ("force-remove conn from tl lb0", "from", "a name or a /regex/"),
    ("force-remove conn /(/ from tl lb0", "/(/", "invalid regular expression"),
    ("force-remove conn x in tl lb0", "in", '"from'),
    ("force-remove conn x to tl lb0", "to", '"from'),
    ("force-remove conn /x from tl lb0", "/x", "invalid name"),
    ("force-remove upstream /.*/", "/.*/", "invalid name"),
    ("remove server s1 in server-group g", "in", '"from server-group NAME"'),
    ("remove server s1", None, '"from server-group NAME"'),
    ("add event-loop e to elg", None, "expected a name"),
    ("add event-loop e", None, '"to event-loop-group NAME"'),
    ("add security-group g default maybe", "maybe", "allow, deny"),
    (
        "add secgr r to secg g net 10.0.0.1/8 port-range 1,2 default allow",
        "10.0.0.1/8",
        "did you mean 10.0.0.0/8",
    ),
    ("add secgr r to secg g net 10.0.0.0 port-range 1,2 default allow", "10.0.0.0", "CIDR"),
    ("add secgr r to secg g net 10.0.0.0/33 port-range 1,2 default allow", "10.0.0.0/33", "CIDR"),
    ("add secgr r to secg g net 10.0.0.0/8 port-range 2,1 default allow", "2,1", "LOW <= HIGH"),
    ("add secgr r to secg g net 10.0.0.0/8 port-range 0,1 default allow", "0,1", "port range"),
    ("add secgr r to secg g net 10.0.0.0/8 port-range 22 default allow", "22", "LOW,HIGH"),
    (
        "add secgr r to secg g net 10.0.0.0/8 port-range 1,2 protocol sctp default allow",
        "sctp",
        "TCP, UDP",
    ),
    ("add secgr r to secg g net 10.0.0.0/8 port-range 1,2", None, 'missing parameter "default"'),
    ("add ck c cert a.pem", None, 'missing parameter "key"'),
    ("add ck c cert a.pem, key k.pem", "a.pem,", "file paths"),
    ("add ck c cert a.pem key ''", "", "file path"),
    ('add ck c cert a.pem key "k\\n.pem"', "k\n.pem", "control"),
    ("add smart-node-delegate n service s zone z port 1", None, "exactly one of: nic, address"),
    (
        "add smart-node-delegate n service s zone z nic e0 address 1.2.3.4 port 1",
        "address",
        "cannot be used with nic",
    ),
    (
        "add smart-node-delegate n service s zone z address 1.2.3.4:80 port 1",
        "1.2.3.4:80",
        "IPv4 or IPv6 address",
    ),
    ("add smart-node-delegate n service s zone z nic e0 port 0", "0", "1 to 65535"),
    ("add smart-node-delegate n service s zone z nic e0 port 1 ip-type v5", "v5", "v4, v6"),
    ("add smart-group-delegate d service s zone z", None, 'missing parameter "server-group"'),
    ("add smart-group-delegate d service 's v c' zone z server-group g", "s v c", "name"),
    (
        "add socks5 s address 1.2.3.4:1 upstream u allow-non-backend deny-non-backend",
        "deny-non-backend",
        "at most one of",
    ),
    (
        "add socks5 s address 1.2.3.4:1 upstream u allow-non-backend allow-non-backend",
        "allow-non-backend",
        "duplicate flag",
    ),
    ("add socks5 s address 1.2.3.4:1 upstream u protocol h2", "protocol", "unknown parameter"),
    ("list config", "config", "System: list config"),
    (
        "add resp-controller r address 1.2.3.4:1 password p",
        "resp-controller",
        "System: add resp-controller",
    ),
    ("add upstream to", "to", "expected a name"),
    ("add upstream from", "from", "expected a name"),
    ("list sg in ups", None, "expected a name"),
    ("list sg in ups in", "in", "expected a name"),
]


@pytest.mark.parametrize(
    ("line", "word", "fragment"), HAND_WRITTEN, ids=[case[0][:60] for case in HAND_WRITTEN]
)
def test_hand_written_errors(line: str, word: str | None, fragment: str) -> None:
    with pytest.raises(CommandSyntaxError) as info:
        parse(line)
    error = info.value
    assert error.word == word
    if word is not None:
        assert show_word(word) in error.message
    assert fragment in error.message
    assert error.http_status == 400
    assert error.resp_text == "ERR " + error.message
    assert "\n" not in error.resp_text


# --------------------------------------------------------- generated from the tables

_GOOD: dict[ValueKind, str] = {
    ValueKind.INT: "",  # the minimum, see _good()
    ValueKind.ADDRESS: "127.0.0.1:8080",
    ValueKind.IP: "10.1.2.3",
    ValueKind.NAME: "n1",
    ValueKind.NAME_LIST: "ck1,ck2",
    ValueKind.NETWORK: "10.0.0.0/8",
    ValueKind.PORT_RANGE: "22,80",
    ValueKind.CHOICE: "",  # the first choice
    ValueKind.PROTOCOL: "http/1.x",
    ValueKind.JSON_OBJECT: '{"host":"a.com"}',
    ValueKind.PATH: "/etc/vproxy/a.pem",
    ValueKind.PATH_LIST: "/a.pem,/b.pem",
    ValueKind.TOKEN: "svc",
    ValueKind.SECRET: "s3cret",
}

_BAD: dict[ValueKind, tuple[str, ...]] = {
    ValueKind.INT: ("abc", "-1", "1.5", "+1", "0x10", "99999999999"),
    ValueKind.ADDRESS: ("1.2.3.4", "1.2.3.4:65536", "1.2.3.4:x", "::1:80", "[::1]", ":80", "a b:1"),
    ValueKind.IP: ("1.2.3", "1.2.3.4:80", "[::1]", "host"),
    ValueKind.NAME: ("a/b", "a b", "in", "x" * 129, "a,b", "é"),
    ValueKind.NAME_LIST: ("a,,b", "a,a", ",", "a b", "to"),
    ValueKind.NETWORK: ("10.0.0.0", "10.0.0.1/8", "10.0.0.0/33", "x/8", "10.0.0.0/-1"),
    ValueKind.PORT_RANGE: ("1", "2,1", "0,1", "1,65536", "a,b", "1,2,3"),
    ValueKind.CHOICE: ("bogus", ""),
    ValueKind.PROTOCOL: ("-tcp", "a b", "x" * 65, "", "tcp!"),
    ValueKind.JSON_OBJECT: ("[]", "{", '{"a":1}', '{"a":{"b":"c"}}', "null", ""),
    ValueKind.PATH: ("", "a\nb", "a\x00b"),
    ValueKind.PATH_LIST: ("a,", ",a", "a,,b", ""),
    ValueKind.TOKEN: ("a/b", "", "a b"),
    ValueKind.SECRET: ("", "a\nb", "x" * 257),
}


def _good(spec: ParamSpec) -> str:
    if spec.kind is ValueKind.INT:
        return str(spec.minimum)
    if spec.kind is ValueKind.CHOICE:
        assert spec.choices is not None
        return next(iter(spec.choices)).value
    if spec.kind is ValueKind.ADDRESS and not spec.hostname_ok:
        return "127.0.0.1:8080"
    return _GOOD[spec.kind]


def _bad(spec: ParamSpec) -> tuple[str, ...]:
    bad = _BAD[spec.kind]
    if spec.kind is ValueKind.INT:
        bad = (*bad, str(spec.minimum - 1), str(spec.maximum + 1))
    if spec.kind is ValueKind.ADDRESS:
        bad = (*bad, "1.2.3.4:0") if not spec.port_zero_ok else bad
        bad = (*bad, "example.com:80") if not spec.hostname_ok else bad
    return bad


class _Case:
    """A valid command of one form, as words, with where each part sits."""

    def __init__(self, type_: ResourceType, form: Form, path: tuple[ResourceType, ...]):
        self.type, self.form, self.path = type_, form, path
        self.head = [form.action.value, type_.value]
        if form.name is not NameUse.NONE:
            self.head.append("n0")
        self.chain: list[str] = []
        for index, parent in enumerate(path):
            preposition = ACTION_PREPOSITION[form.action] if index == 0 else Preposition.IN
            self.chain += [preposition.value, parent.value, f"p{index}"]
        skip = {name for group in form.exactly_one_of for name in group[1:]}
        self.params = [
            p for p in form.params if (p.required or form.needs_change) and p.name not in skip
        ]
        for group in form.exactly_one_of:
            self.params.append(next(p for p in form.params if p.name == group[0]))
        if form.needs_change and not self.params and form.flags:
            self.flag_words = [form.flags[0].name]
        else:
            self.flag_words = []

    def words(self, params: list[tuple[str, str]] | None = None) -> list[str]:
        pairs = params if params is not None else [(p.name, _good(p)) for p in self.params]
        return [*self.head, *self.chain, *(w for pair in pairs for w in pair), *self.flag_words]

    @property
    def label(self) -> str:
        return " ".join([*self.head, *self.chain])


def _cases() -> Iterator[_Case]:
    for spec in GRAMMAR.values():
        for form in spec.forms:
            for path in form.parents:
                yield _Case(spec.type, form, path)


CASES = list(_cases())


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_generated_baseline_is_valid(case: _Case) -> None:
    parse(join_words(case.words()))


def _broken() -> Iterator[tuple[str, list[str], str | None]]:
    """(id, words, offending word or None when the command ends too early)."""
    for case in CASES:
        label = case.label
        good = [(p.name, _good(p)) for p in case.params]
        # An unknown parameter after a valid command.
        yield f"{label} +bogus", [*case.words(), "bogus-param", "1"], "bogus-param"
        # Each parameter of the form given a bad value.
        for spec in case.form.params:
            base = [pair for pair in good if pair[0] != spec.name]
            for bad in _bad(spec):
                words = case.words([*base, (spec.name, bad)])
                yield f"{label} {spec.name}={bad!r}", words, bad
            # Given twice (by its long name the second time).
            key = spec.aliases[0] if spec.aliases else spec.name
            words = case.words([*base, (key, _good(spec)), (spec.name, _good(spec))])
            yield f"{label} {spec.name} twice", words, spec.name
            # Without its value.
            yield f"{label} {spec.name} no value", [*case.words(base), spec.name], spec.name
        # Each required parameter left out.
        for spec in case.params:
            if spec.required:
                rest = [pair for pair in good if pair[0] != spec.name]
                yield f"{label} -{spec.name}", case.words(rest), None
        # The name left out, or invalid.
        if case.form.name in (NameUse.REQUIRED, NameUse.REQUIRED_OR_PATTERN):
            words = case.words()
            yield f"{label} no name", words[:2], None
            for bad_name in ("bad$name", "a b", "é", "x" * 257):
                yield (
                    f"{label} name {bad_name[:10]!r}",
                    [*words[:2], bad_name, *words[3:]],
                    bad_name,
                )
        # The parent chain: wrong preposition, unknown type, missing name.
        if case.path:
            start = len(case.head)
            right = case.chain[0]
            for wrong in sorted({p.value for p in Preposition} - {right}):
                words = case.words()
                words[start] = wrong
                yield f"{label} {wrong} instead of {right}", words, wrong
            words = case.words()
            words[start + 1] = "no-such-type"
            yield f"{label} unknown parent type", words, "no-such-type"
            yield f"{label} no parent name", case.words()[: start + 2], None
            words = case.words()
            words[start + 2] = "bad name"
            yield f"{label} bad parent name", words, "bad name"
        # Flags of other forms are unknown here, and flags cannot be doubled.
        for flag in case.form.flags:
            yield f"{label} flag twice", [*case.words(), flag.name, flag.name], flag.name
        # An unknown action or type in front.
        yield f"{label} bad action", ["frobnicate", *case.words()[1:]], "frobnicate"
        yield f"{label} bad type", [case.words()[0], "gizmo", *case.words()[2:]], "gizmo"


BROKEN = list(_broken())


def test_there_are_hundreds_of_broken_cases() -> None:
    assert len(BROKEN) >= 500


@pytest.mark.parametrize(("words", "word"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_generated_errors_name_the_word(words: list[str], word: str | None) -> None:
    line = join_words(words)
    with pytest.raises(CommandSyntaxError) as info:
        parse(line)
    error = info.value
    if word is None:
        assert error.word is None
        assert (
            "ends too early" in error.message
            or "missing" in error.message
            or ("exactly one of" in error.message)
        )
    else:
        assert error.word == word
        assert show_word(word) in error.message
        assert error.position is not None
        assert words[error.position - 1] == word
    assert "\n" not in error.resp_text
    json.dumps(error.to_dict())
