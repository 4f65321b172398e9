"""The grammar tables are consistent, man() is generated from them, and the package is
sans-IO (no asyncio/socket/selectors/time imports, nothing from vproxy.net)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import vproxy.control.command as command_pkg
from vproxy.control.command import (
    BUILTIN_PROTOCOLS,
    CONTROLLERS,
    GRAMMAR,
    Action,
    CommandSyntaxError,
    ResourceType,
    ValueKind,
    forms_for,
    man,
    parse_value,
)
from vproxy.control.command.grammar import (
    ACTION_BY_WORD,
    RESERVED_WORDS,
    TYPE_BY_WORD,
    NameUse,
)

PACKAGE_DIR = Path(command_pkg.__file__).parent
ALL_SPECS = [
    (f"{t.value} {form.action.value} {i}", param)
    for t, spec in GRAMMAR.items()
    for i, form in enumerate(spec.forms)
    for param in form.params
] + [
    (f"{c.value} {form.action.value}", param)
    for c, spec in CONTROLLERS.items()
    for form in spec.forms
    for param in form.params
]


# --------------------------------------------------------------------- sans-IO rule


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


SOURCES = sorted(PACKAGE_DIR.glob("*.py"))


def test_sources_found() -> None:
    assert {p.name for p in SOURCES} >= {
        "__init__.py",
        "errors.py",
        "grammar.py",
        "lexer.py",
        "man.py",
        "parser.py",
    }


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_no_io_imports(path: Path) -> None:
    forbidden = {"asyncio", "socket", "selectors", "time", "threading", "os", "io"}
    for name in _imports(path):
        root = name.lstrip(".").split(".")[0]
        assert root not in forbidden, f"{path.name} imports {name}"
        assert not name.startswith("vproxy"), f"{path.name} imports {name}: use relative"
        assert not name.startswith(".."), f"{path.name} reaches outside: {name}"


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_module_docstrings_say_what_they_own(path: Path) -> None:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert doc is not None
    assert "Must not" in doc or "must not" in doc


def test_public_api() -> None:
    for name in command_pkg.__all__:
        assert hasattr(command_pkg, name), name
    assert sorted(command_pkg.__all__) == sorted(set(command_pkg.__all__))


# ---------------------------------------------------------------- table consistency


def test_short_names_from_spec() -> None:
    shorts = {spec.type.value: spec.short for spec in GRAMMAR.values()}
    assert shorts == {
        "tcp-lb": "tl",
        "socks5-server": "socks5",
        "event-loop-group": "elg",
        "event-loop": "el",
        "upstream": "ups",
        "server-group": "sg",
        "server": "svr",
        "security-group": "secg",
        "security-group-rule": "secgr",
        "cert-key": "ck",
        "smart-group-delegate": None,
        "smart-node-delegate": None,
        "server-sock": "ss",
        "connection": "conn",
        "session": "sess",
        "dns-cache": None,
        "bytes-in": "bin",
        "bytes-out": "bout",
        "accepted-conn-count": None,
    }
    observable = {spec.type.value for spec in GRAMMAR.values() if spec.observable}
    assert observable == {
        "server-sock",
        "connection",
        "session",
        "dns-cache",
        "bytes-in",
        "bytes-out",
        "accepted-conn-count",
    }


def test_words_do_not_collide() -> None:
    assert len(TYPE_BY_WORD) == len(ResourceType) + sum(
        1 for spec in GRAMMAR.values() if spec.short
    )
    assert len(ACTION_BY_WORD) == 2 * len(Action)
    assert not RESERVED_WORDS & set(TYPE_BY_WORD)
    assert not RESERVED_WORDS & set(ACTION_BY_WORD)


@pytest.mark.parametrize("type_", list(ResourceType), ids=[t.value for t in ResourceType])
def test_forms_are_unambiguous(type_: ResourceType) -> None:
    for action in Action:
        forms = forms_for(type_, action)
        paths = [path for form in forms for path in form.parents]
        assert len(paths) == len(set(paths)), f"{type_} {action}: overlapping chains"
        assert len({form.name for form in forms}) <= 1, "one name rule per (type, action)"
    for form in GRAMMAR[type_].forms:
        words = [w for spec in form.params for w in spec.words] + [f.name for f in form.flags]
        assert len(words) == len(set(words)), f"{type_} {form.action}: duplicate key"
        assert not set(words) & RESERVED_WORDS
        names = {spec.name for spec in form.params}
        for group in form.exactly_one_of:
            assert set(group) <= names
            assert not any(spec.required for spec in form.params if spec.name in group)
        for group in form.exclusive_flags:
            assert set(group) <= {flag.name for flag in form.flags}
        if form.needs_change:
            assert form.action is Action.UPDATE
            assert not any(spec.required for spec in form.params)
            assert all(spec.default is None for spec in form.params)


@pytest.mark.parametrize("type_", list(ResourceType), ids=[t.value for t in ResourceType])
def test_parent_chains_are_themselves_valid(type_: ResourceType) -> None:
    """Every chain (A, B, C...) is A whose own parents may be (B, C...)."""
    for form in GRAMMAR[type_].forms:
        for path in form.parents:
            for index, parent in enumerate(path):
                own = {p for f in GRAMMAR[parent].forms for p in f.parents}
                assert path[index + 1 :] in own, f"{type_}: {parent} cannot be in {path}"


def test_observable_types_are_only_listed_or_force_removed() -> None:
    for spec in GRAMMAR.values():
        actions = {form.action for form in spec.forms}
        if spec.observable:
            assert actions <= {Action.LIST, Action.LIST_DETAIL, Action.FORCE_REMOVE}
        else:
            assert {Action.ADD, Action.LIST, Action.LIST_DETAIL, Action.REMOVE} <= actions
        pattern_forms = [f for f in spec.forms if f.name is NameUse.REQUIRED_OR_PATTERN]
        assert all(f.action is Action.FORCE_REMOVE for f in pattern_forms)


def test_spec_containment() -> None:
    def parents(type_: ResourceType, action: Action) -> set[tuple[ResourceType, ...]]:
        return {p for f in forms_for(type_, action) for p in f.parents}

    T = ResourceType
    assert parents(T.SERVER, Action.ADD) == {(T.SERVER_GROUP,)}
    assert parents(T.SERVER_GROUP, Action.ADD) == {(), (T.UPSTREAM,)}
    assert parents(T.SERVER_GROUP, Action.REMOVE) == {(), (T.UPSTREAM,)}
    assert parents(T.EVENT_LOOP, Action.ADD) == {(T.EVENT_LOOP_GROUP,)}
    assert parents(T.SECURITY_GROUP_RULE, Action.ADD) == {(T.SECURITY_GROUP,)}
    for observed in (T.CONNECTION, T.SESSION, T.SERVER_SOCK):
        assert {(T.TCP_LB,), (T.SOCKS5_SERVER,)} <= parents(observed, Action.LIST)
    for counter in (T.BYTES_IN, T.BYTES_OUT):
        assert (T.SERVER, T.SERVER_GROUP) in parents(counter, Action.LIST)
        assert (T.SERVER_SOCK, T.TCP_LB) in parents(counter, Action.LIST)
        assert (T.CONNECTION, T.TCP_LB) in parents(counter, Action.LIST)
    assert (T.SERVER_SOCK, T.EVENT_LOOP, T.EVENT_LOOP_GROUP) in parents(
        T.ACCEPTED_CONN_COUNT, Action.LIST
    )


def test_parameter_aliases_from_spec() -> None:
    aliases = {(spec.name, alias) for _, spec in ALL_SPECS for alias in spec.aliases}
    assert aliases == {
        ("address", "addr"),
        ("upstream", "ups"),
        ("acceptor-elg", "aelg"),
        ("event-loop-group", "elg"),
        ("security-group", "secg"),
        ("cert-key", "ck"),
        ("weight", "w"),
        ("network", "net"),
    }
    names = {spec.name for _, spec in ALL_SPECS}
    assert names >= {
        "in-buffer-size",
        "out-buffer-size",
        "protocol",
        "timeout",
        "period",
        "up",
        "down",
        "method",
        "weight",
        "default",
        "port-range",
        "cert",
        "key",
        "service",
        "zone",
        "nic",
        "ip-type",
        "port",
        "annotations",
    }


@pytest.mark.parametrize(("where", "spec"), ALL_SPECS, ids=[f"{w} {s.name}" for w, s in ALL_SPECS])
def test_defaults_are_valid_values(where: str, spec: object) -> None:
    from vproxy.control.command import ParamSpec

    assert isinstance(spec, ParamSpec)
    if spec.default is not None:
        assert not spec.required, where
        parse_value(spec, spec.default)
    if spec.kind is ValueKind.INT:
        assert spec.minimum <= spec.maximum
    if spec.kind is ValueKind.CHOICE:
        assert spec.choices is not None
    assert spec.doc


def test_documented_ranges() -> None:
    tcp_lb = {p.name: p for p in forms_for(ResourceType.TCP_LB, Action.ADD)[0].params}
    assert (tcp_lb["in-buffer-size"].minimum, tcp_lb["in-buffer-size"].maximum) == (256, 1 << 24)
    assert tcp_lb["in-buffer-size"].default == "16384"
    assert tcp_lb["timeout"].maximum == 86_400_000
    assert tcp_lb["acceptor-elg"].default == "(acceptor-elg)"
    assert tcp_lb["event-loop-group"].default == "(worker-elg)"
    assert tcp_lb["protocol"].default == "tcp"
    assert tcp_lb["address"].port_zero_ok
    assert not tcp_lb["address"].hostname_ok
    server = {p.name: p for p in forms_for(ResourceType.SERVER, Action.ADD)[0].params}
    assert (server["weight"].minimum, server["weight"].maximum) == (0, 1000)
    assert server["address"].hostname_ok
    assert not server["address"].port_zero_ok
    assert BUILTIN_PROTOCOLS == ("tcp", "http/1.x", "h2", "http", "dubbo", "framed-int32")


# ------------------------------------------------------------------------------ man


def test_man_overview_mentions_everything() -> None:
    text = man()
    for spec in GRAMMAR.values():
        assert re.search(rf"(?m)^  {re.escape(spec.type.value)}\b", text), spec.type
        if spec.short:
            assert f"{spec.type.value} ({spec.short})" in text
    for action in Action:
        assert action.value in text
    for word in ("list config", "save FILE", "load FILE", "shutdown"):
        assert word in text
    for controller in CONTROLLERS:
        assert f"add {controller.value}" in text
        assert f"remove {controller.value}" in text


@pytest.mark.parametrize("type_", list(ResourceType), ids=[t.value for t in ResourceType])
def test_man_type_lists_its_actions(type_: ResourceType) -> None:
    text = man(type_)
    assert text == man(type_.value)
    if GRAMMAR[type_].short:
        assert text == man(GRAMMAR[type_].short)
    usage = [line.strip() for line in text.splitlines() if line.startswith("  ")]
    expected_actions = [form.action.value for form in GRAMMAR[type_].forms for _ in form.parents]
    assert [line.split()[0] for line in usage] == expected_actions


def _sections(text: str) -> list[tuple[list[str], list[str]]]:
    """(parameter names, flag names) of each form block of a man(type, action) page."""
    blocks: list[tuple[list[str], list[str]]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            blocks.append(([], []))
            current = None
        elif line == "  Parameters:":
            current = blocks[-1][0]
        elif line == "  Flags:":
            current = blocks[-1][1]
        elif line.startswith("    ") and current is not None:
            current.append(line.split()[0])
        elif not line.startswith("    "):
            current = None
    return blocks


CASES = [(t, f.action) for t in ResourceType for f in GRAMMAR[t].forms]
CASES = list(dict.fromkeys(CASES))


@pytest.mark.parametrize(("type_", "action"), CASES, ids=[f"{t.value}-{a.value}" for t, a in CASES])
def test_man_action_lists_exactly_the_table(type_: ResourceType, action: Action) -> None:
    text = man(type_, action)
    assert text == man(type_.value, action.value)
    forms = forms_for(type_, action)
    assert _sections(text) == [
        ([spec.name for spec in form.params], [flag.name for flag in form.flags]) for form in forms
    ]
    for form in forms:
        for spec in form.params:
            assert spec.value_help in text
            if spec.default is not None:
                assert f"default {spec.default}" in text
            for alias in spec.aliases:
                assert alias in text


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (("nothing",), "nothing"),
        (("tcp-lb", "fly"), "fly"),
        (("connection", "update"), "update"),
        (("connection", Action.ADD), "add"),
    ],
)
def test_man_errors(args: tuple[str, ...], word: str) -> None:
    with pytest.raises(CommandSyntaxError) as info:
        man(*args)
    assert info.value.word == word


def test_man_action_without_type() -> None:
    with pytest.raises(CommandSyntaxError):
        man(None, "add")
