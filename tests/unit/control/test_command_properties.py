"""Property tests: any text parses or raises CommandError; valid commands generated from
the grammar tables survive format -> parse unchanged, however they are written."""

from __future__ import annotations

import re
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_network

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vproxy.control.command import (
    BUILTIN_PROTOCOLS,
    CONTROLLERS,
    GRAMMAR,
    Action,
    Address,
    Command,
    CommandError,
    Form,
    NamePattern,
    NameUse,
    ParamSpec,
    ParamValue,
    ParsedCommand,
    PortRange,
    Preposition,
    Ref,
    ResourceType,
    SystemCommand,
    SystemOp,
    ValueKind,
    format_command,
    format_value,
    join_words,
    parse,
    parse_words,
    quote_word,
)
from vproxy.control.command.grammar import (
    ACTION_PREPOSITION,
    ACTIONS,
    NAME_RULES,
    RESERVED_WORDS,
    NameKind,
)

# ------------------------------------------------------------------ fuzz: no crashes

_VOCABULARY = sorted(
    {
        *(a.value for a in Action),
        *(short for short, _ in ACTIONS.values()),
        *(t.value for t in ResourceType),
        *(spec.short for spec in GRAMMAR.values() if spec.short),
        *(p.value for p in Preposition),
        *(w for spec in GRAMMAR.values() for f in spec.forms for p in f.params for w in p.words),
        *(flag.name for spec in GRAMMAR.values() for f in spec.forms for flag in f.flags),
        "System:",
        "man",
        "help",
        "config",
        "save",
        "load",
        "shutdown",
        "resp-controller",
        "http-controller",
        "password",
        "token",
        "1",
        "0",
        "65536",
        "127.0.0.1:80",
        "[::1]:0",
        "a.b:1",
        "10.0.0.0/8",
        "22,22",
        "/.*/",
        "/(/",
        "{}",
        '{"host":"a"}',
        "wrr",
        "TCP",
        "allow",
        "(worker-elg)",
        '"',
        "'",
        '"a b"',
        "\\",
        "",
    }
)


def _attempt(call: Callable[[], ParsedCommand]) -> ParsedCommand | CommandError:
    """Run ``call``; any exception but CommandError fails the test."""
    try:
        return call()
    except CommandError as exc:
        return exc


def _check(outcome: ParsedCommand | CommandError) -> None:
    if isinstance(outcome, CommandError):
        assert "\n" not in outcome.resp_text
        outcome.resp_text.encode("utf-8")
    else:
        # Whatever parses can be written back and parsed to the same thing.
        assert parse(format_command(outcome)) == outcome


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_any_text_parses_or_raises_command_error(line: str) -> None:
    _check(_attempt(lambda: parse(line)))


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_VOCABULARY) | st.text(max_size=6), max_size=14))
def test_any_word_salad_parses_or_raises_command_error(words: list[str]) -> None:
    _check(_attempt(lambda: parse(" ".join(words))))
    _check(_attempt(lambda: parse_words(words)))


# --------------------------------------------------- generating valid commands


def _name_strategy(kind: NameKind) -> st.SearchStrategy[str]:
    rule = NAME_RULES[kind]
    # Mostly short names drawn from the rule's own alphabet, checked by its pattern.
    alphabet = "".join(chr(c) for c in range(0x21, 0x7F) if rule.pattern.fullmatch(chr(c)))
    return st.text(alphabet, min_size=1, max_size=rule.max_length).filter(
        lambda name: rule.pattern.fullmatch(name) is not None and name not in RESERVED_WORDS
    )


_NAME_STRATEGIES = {kind: _name_strategy(kind) for kind in NameKind}


def _names(kind: NameKind) -> st.SearchStrategy[str]:
    return _NAME_STRATEGIES[kind]


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError, ValueError):
        return False
    return True


_TEXT = st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp"))
_PATTERNS = st.sampled_from([".*", "", "127\\.0\\.0\\.1:.*", "a b", "x\ny", "[0-9]+", "\"'"]) | (
    st.text(st.characters(exclude_categories=("Cs",)), max_size=12).filter(_compiles)
)
_HOSTNAMES = st.from_regex(
    r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]([a-z0-9-]{0,8}[a-z0-9])?){0,3}", fullmatch=True
)
_PATHS = st.text(_TEXT, min_size=1, max_size=40)


def _address(spec: ParamSpec) -> st.SearchStrategy[Address]:
    hosts = st.ip_addresses().map(str)
    if spec.hostname_ok:
        hosts = hosts | _HOSTNAMES
    return st.builds(Address, hosts, st.integers(0 if spec.port_zero_ok else 1, 65535))


def _network(ip: IPv4Address | IPv6Address, data: st.DataObject) -> ParamValue:
    prefix = data.draw(st.integers(0, ip.max_prefixlen))
    return ip_network(f"{ip}/{prefix}", strict=False)


def _port_range() -> st.SearchStrategy[PortRange]:
    return st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(
        lambda pair: PortRange(min(pair), max(pair))
    )


def _value(spec: ParamSpec, data: st.DataObject) -> ParamValue:
    kind = spec.kind
    if kind is ValueKind.INT:
        return data.draw(st.integers(spec.minimum, spec.maximum))
    if kind is ValueKind.ADDRESS:
        return data.draw(_address(spec))
    if kind is ValueKind.IP:
        return data.draw(st.ip_addresses())
    if kind in (ValueKind.NAME, ValueKind.TOKEN):
        return data.draw(_names(NameKind.NAME))
    if kind is ValueKind.NAME_LIST:
        return tuple(
            data.draw(st.lists(_names(NameKind.NAME), min_size=1, max_size=4, unique=True))
        )
    if kind is ValueKind.NETWORK:
        return _network(data.draw(st.ip_addresses()), data)
    if kind is ValueKind.PORT_RANGE:
        return data.draw(_port_range())
    if kind is ValueKind.CHOICE:
        assert spec.choices is not None
        return data.draw(st.sampled_from(list(spec.choices)))
    if kind is ValueKind.PROTOCOL:
        return data.draw(
            st.sampled_from(BUILTIN_PROTOCOLS)
            | st.from_regex(r"[a-z0-9][a-z0-9/._-]{0,20}", fullmatch=True)
        )
    if kind is ValueKind.JSON_OBJECT:
        text = st.text(st.characters(exclude_categories=("Cs",)), max_size=10)
        return data.draw(st.dictionaries(text, text, max_size=3))
    if kind is ValueKind.PATH:
        return data.draw(_PATHS)
    if kind is ValueKind.PATH_LIST:
        return tuple(
            data.draw(st.lists(_PATHS.filter(lambda p: "," not in p), min_size=1, max_size=3))
        )
    assert kind is ValueKind.SECRET
    return data.draw(st.text(_TEXT, min_size=1, max_size=30))


def _params(form: Form, data: st.DataObject) -> dict[str, ParamValue]:
    chosen = [spec for spec in form.params if spec.required]
    grouped = {name for group in form.exactly_one_of for name in group}
    for group in form.exactly_one_of:
        chosen.append(form.param(data.draw(st.sampled_from(group))))  # type: ignore[arg-type]
    optional = [s for s in form.params if not s.required and s.name not in grouped]
    chosen += data.draw(st.lists(st.sampled_from(optional), unique=True)) if optional else []
    return {spec.name: _value(spec, data) for spec in chosen}


def _flags(form: Form, data: st.DataObject) -> frozenset[str]:
    names = (
        data.draw(st.lists(st.sampled_from([f.name for f in form.flags]), unique=True))
        if (form.flags)
        else []
    )
    for group in form.exclusive_flags:
        inside = [name for name in names if name in group]
        names = [name for name in names if name not in group] + inside[:1]
    return frozenset(names)


@st.composite
def valid_commands(draw: st.DrawFn) -> Command:
    spec = draw(st.sampled_from(list(GRAMMAR.values())))
    form = draw(st.sampled_from(spec.forms))
    path = draw(st.sampled_from(form.parents))
    data = draw(st.data())
    name: str | NamePattern | None
    if form.name is NameUse.NONE:
        name = None
    elif form.name is NameUse.OPTIONAL:
        name = draw(st.none() | _names(spec.name_kind))
    elif form.name is NameUse.REQUIRED:
        name = draw(_names(spec.name_kind))
    else:
        name = draw(_names(spec.name_kind) | _PATTERNS.map(NamePattern))
    parents = tuple(Ref(t, draw(_names(GRAMMAR[t].name_kind))) for t in path)
    params = _params(form, data)
    flags = _flags(form, data)
    if form.needs_change and not params and not flags:
        first = form.params[0]
        params = {first.name: _value(first, data)}
    return Command(form.action, spec.type, name, parents, params, flags)


@st.composite
def valid_system_commands(draw: st.DrawFn) -> SystemCommand:
    op = draw(st.sampled_from(list(SystemOp)))
    if op is SystemOp.MAN:
        topic = draw(st.none() | st.sampled_from(list(ResourceType)))
        action = None
        if topic is not None:
            actions = list(dict.fromkeys(f.action for f in GRAMMAR[topic].forms))
            action = draw(st.none() | st.sampled_from(actions))
        return SystemCommand(op, topic=topic, topic_action=action)
    if op in (SystemOp.SAVE, SystemOp.LOAD):
        return SystemCommand(op, path=draw(_PATHS))
    if op is not SystemOp.CONTROLLER:
        return SystemCommand(op)
    controller = draw(st.sampled_from(list(CONTROLLERS)))
    form = draw(st.sampled_from(CONTROLLERS[controller].forms))
    name = None
    if form.name is NameUse.REQUIRED or (form.name is NameUse.OPTIONAL and draw(st.booleans())):
        name = draw(_names(NameKind.NAME))
    params = _params(form, draw(st.data()))
    return SystemCommand(op, controller=controller, action=form.action, name=name, params=params)


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow])
@given(valid_commands(), st.booleans())
def test_round_trip(command: Command, short: bool) -> None:
    line = format_command(command, short=short)
    assert parse(line) == command
    assert "\n" not in line
    assert command.form is not None


@settings(max_examples=500)
@given(valid_system_commands(), st.booleans())
def test_round_trip_system(command: SystemCommand, short: bool) -> None:
    assert parse(format_command(command, short=short)) == command


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(valid_commands(), st.data())
def test_any_spelling_and_order_parses_the_same(command: Command, data: st.DataObject) -> None:
    """Short or long words, any alias, parameters and flags in any order."""
    spec = GRAMMAR[command.type]
    form = command.form
    assert form is not None

    def either(long: str, short: str | None) -> str:
        return data.draw(st.sampled_from([long, short] if short else [long]))

    words = [either(command.action.value, ACTIONS[command.action][0])]
    words.append(either(command.type.value, spec.short))
    if command.name is not None:
        words.append(str(command.name))
    for index, ref in enumerate(command.parents):
        preposition = ACTION_PREPOSITION[command.action] if index == 0 else Preposition.IN
        words += [preposition.value, either(ref.type.value, GRAMMAR[ref.type].short), ref.name]
    groups: list[list[str]] = []
    for key, value in command.params.items():
        param = form.param(key)
        assert param is not None
        groups.append([data.draw(st.sampled_from(param.words)), format_value(value)])
    groups += [[flag] for flag in command.flags]
    for group in data.draw(st.permutations(groups)):
        words += group
    assert parse(join_words(words)) == command
    assert parse_words(words) == command
    assert parse(" \t ".join(quote_word(w) for w in words) + " ") == command
