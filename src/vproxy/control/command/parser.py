"""Turning words into :class:`Command` / :class:`SystemCommand` objects, and back.

Owns the one generic parsing procedure driven by the tables of ``grammar.py``:
``ACTION TYPE [NAME] [to|from|in TYPE NAME [in TYPE NAME ...]] [KEY VALUE | FLAG ...]``,
the ``System:`` commands, and :func:`format_command`, which writes a command so that
:func:`parse` reads back an equal one. Values are checked for form only (ranges,
address syntax, name characters); whether named resources exist is the executor's
business. Must not touch any state, apply defaults, or do I/O.
"""

from __future__ import annotations

import difflib
import enum
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from .errors import CommandSyntaxError, show_word
from .grammar import (
    ACTION_BY_WORD,
    ACTION_PREPOSITION,
    ACTIONS,
    CONTROLLER_BY_WORD,
    CONTROLLERS,
    GRAMMAR,
    NAME_RULES,
    RESERVED_WORDS,
    TYPE_BY_WORD,
    Action,
    ControllerType,
    Form,
    NameKind,
    NameUse,
    ParamSpec,
    Preposition,
    ResourceType,
    ValueKind,
    find_form,
    forms_for,
)
from .lexer import join_words, split_words
from .values import (
    NamePattern,
    ParamValue,
    ValueProblem,
    has_surrogate,
    parse_address,
    parse_choice,
    parse_int,
    parse_ip,
    parse_json_object,
    parse_network,
    parse_path,
    parse_path_list,
    parse_port_range,
    parse_protocol,
    parse_secret,
)

__all__ = [
    "Command",
    "ParsedCommand",
    "Ref",
    "SystemCommand",
    "SystemOp",
    "format_command",
    "format_value",
    "parse",
    "parse_value",
    "parse_words",
]

SYSTEM_PREFIX: Final = "System:"


class Ref(NamedTuple):
    """A resource named in a parent chain."""

    type: ResourceType
    name: str


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed resource command. Building one by hand is allowed; parsing never
    produces one that :func:`format_command` cannot write back.

    Attributes:
        action: What to do.
        type: The resource type acted on.
        name: The resource name; None when the form takes none; a
            :class:`NamePattern` for ``force-remove`` of connections, sessions and
            dns-cache entries.
        parents: The parent chain, nearest parent first. The first link was written
            with ``ACTION_PREPOSITION[action]`` (``to``/``from``/``in``), the rest
            with ``in``.
        params: Parameter long names to typed values; absent ones were not given
            (the executor applies the defaults recorded in the grammar).
        flags: The flags given, by name.
    """

    action: Action
    type: ResourceType
    name: str | NamePattern | None = None
    parents: tuple[Ref, ...] = ()
    params: dict[str, ParamValue] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()

    @property
    def preposition(self) -> Preposition | None:
        """The word that introduced the first parent, or None without parents."""
        return ACTION_PREPOSITION[self.action] if self.parents else None

    @property
    def parent(self) -> Ref | None:
        """The nearest parent, or None."""
        return self.parents[0] if self.parents else None

    @property
    def target(self) -> Ref | None:
        """The parent introduced by ``to`` or ``from`` (attach/detach), or None."""
        if self.preposition in (Preposition.TO, Preposition.FROM):
            return self.parents[0]
        return None

    @property
    def form(self) -> Form | None:
        """The grammar form this command matches, or None for a hand-built misfit."""
        return find_form(self.type, self.action, tuple(ref.type for ref in self.parents))

    def to_line(self, *, short: bool = False) -> str:
        """Write this command as one line; see :func:`format_command`."""
        return format_command(self, short=short)


class SystemOp(enum.StrEnum):
    """What a ``System:`` command does."""

    MAN = "man"
    LIST_CONFIG = "list config"
    SAVE = "save"
    LOAD = "load"
    SHUTDOWN = "shutdown"
    CONTROLLER = "controller"


@dataclass(frozen=True, slots=True)
class SystemCommand:
    """A parsed ``System:`` command (``help``/``man`` may be written without the prefix).

    Attributes:
        op: What to do.
        topic: For MAN: the resource type asked about, if any.
        topic_action: For MAN: the action asked about, if any (needs ``topic``).
        path: For SAVE and LOAD: the file.
        controller: For CONTROLLER: which kind of controller.
        action: For CONTROLLER: ADD, LIST, LIST_DETAIL or REMOVE.
        name: For CONTROLLER: the controller name, if given.
        params: For CONTROLLER ADD: ``address`` and ``password``/``token``.
    """

    op: SystemOp
    topic: ResourceType | None = None
    topic_action: Action | None = None
    path: str | None = None
    controller: ControllerType | None = None
    action: Action | None = None
    name: str | None = None
    params: dict[str, ParamValue] = field(default_factory=dict)

    @property
    def privileged(self) -> bool:
        """Whether it touches files or the process (console-only unless allowed)."""
        if self.op is SystemOp.CONTROLLER:
            return self.action in (Action.ADD, Action.REMOVE)
        return self.op in (SystemOp.SAVE, SystemOp.LOAD, SystemOp.SHUTDOWN)

    def to_line(self, *, short: bool = False) -> str:
        """Write this command as one line; see :func:`format_command`."""
        return format_command(self, short=short)


ParsedCommand = Command | SystemCommand
"""What :func:`parse` returns."""


# ----------------------------------------------------------------------- word cursor


class _Words:
    """The words of one command and the index of the next one to read."""

    __slots__ = ("index", "words")

    def __init__(self, words: Sequence[str], index: int = 0) -> None:
        self.words = words
        self.index = index

    def peek(self) -> str | None:
        return self.words[self.index] if self.index < len(self.words) else None

    def take(self) -> tuple[str, int]:
        """Consume the next word; return it with its 1-based position."""
        word = self.words[self.index]
        self.index += 1
        return word, self.index

    @property
    def position(self) -> int:
        """The 1-based position of the next word."""
        return self.index + 1

    def unexpected(self, expected: str, options: tuple[str, ...] = ()) -> CommandSyntaxError:
        """An error about the next word (or the end of the command)."""
        word = self.peek()
        if word is None:
            after = f" after {show_word(self.words[-1])}" if self.words else ""
            return CommandSyntaxError(
                f"the command ends too early{after}: expected {expected}",
                position=self.position,
                expected=options,
            )
        return CommandSyntaxError(
            f"unexpected word {show_word(word)} at position {self.position}: expected {expected}",
            word=word,
            position=self.position,
            expected=options,
        )

    def end(self) -> None:
        if self.peek() is not None:
            raise self.unexpected("the end of the command")


def _one_of(options: Sequence[str]) -> str:
    return "one of: " + ", ".join(options) if len(options) > 1 else options[0]


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"; did you mean {show_word(close[0])}?" if close else ""


# ------------------------------------------------------------------- names and values


def _name_problem(word: str, kind: NameKind) -> str | None:
    rule = NAME_RULES[kind]
    if word in RESERVED_WORDS:
        return f"{show_word(word)} is a reserved word and cannot be a name"
    if len(word) > rule.max_length or rule.pattern.fullmatch(word) is None:
        return f"expected a name of {rule.description}"
    return None


def _read_name(word: str, kind: NameKind) -> str:
    problem = _name_problem(word, kind)
    if problem is not None:
        raise ValueProblem(problem)
    return word


def _read_name_list(word: str) -> tuple[str, ...]:
    names = tuple(_read_name(part, NameKind.NAME) for part in word.split(","))
    if len(set(names)) != len(names):
        raise ValueProblem("a name is listed twice")
    return names


def _read_choice(spec: ParamSpec, word: str) -> ParamValue:
    if spec.choices is None:  # a table error, caught by the grammar tests
        raise ValueProblem("this parameter has no choices")
    return parse_choice(word, spec.choices)


_READERS: Final[Mapping[ValueKind, Callable[[ParamSpec, str], ParamValue]]] = {
    ValueKind.INT: lambda spec, word: parse_int(word, spec.minimum, spec.maximum),
    ValueKind.ADDRESS: lambda spec, word: parse_address(
        word, hostname_ok=spec.hostname_ok, port_zero_ok=spec.port_zero_ok
    ),
    ValueKind.IP: lambda spec, word: parse_ip(word),
    ValueKind.NAME: lambda spec, word: _read_name(word, NameKind.NAME),
    ValueKind.NAME_LIST: lambda spec, word: _read_name_list(word),
    ValueKind.NETWORK: lambda spec, word: parse_network(word),
    ValueKind.PORT_RANGE: lambda spec, word: parse_port_range(word),
    ValueKind.CHOICE: _read_choice,
    ValueKind.PROTOCOL: lambda spec, word: parse_protocol(word),
    ValueKind.JSON_OBJECT: lambda spec, word: parse_json_object(word),
    ValueKind.PATH: lambda spec, word: parse_path(word),
    ValueKind.PATH_LIST: lambda spec, word: parse_path_list(word),
    ValueKind.TOKEN: lambda spec, word: _read_name(word, NameKind.NAME),
    ValueKind.SECRET: lambda spec, word: parse_secret(word),
}


def parse_value(spec: ParamSpec, word: str) -> ParamValue:
    """Read one parameter value as the parser does (also for the recorded defaults).

    Args:
        spec: The parameter.
        word: Its value word.

    Returns:
        The typed value.

    Raises:
        CommandSyntaxError: The word is not a valid value for ``spec``.
    """
    try:
        return _READERS[spec.kind](spec, word)
    except ValueProblem as exc:
        raise CommandSyntaxError(
            f"invalid value {show_word(word)} for {spec.name}: {exc}", word=word
        ) from exc


def format_value(value: ParamValue) -> str:
    """Write a typed value as its value word (before quoting).

    Args:
        value: A value as found in ``Command.params``.

    Returns:
        The word :func:`parse_value` reads back into an equal value.
    """
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


# --------------------------------------------------------------------------- parsing


def parse(line: str) -> ParsedCommand:
    """Parse one command line.

    Args:
        line: The command without its line terminator, e.g.
            ``add server backend1 to server-group ngx address 127.0.0.1:8080``.

    Returns:
        A :class:`Command`, or a :class:`SystemCommand` for ``System: ...``,
        ``help`` and ``man``.

    Raises:
        CommandSyntaxError: The line is not a valid command; the message names the
            offending word and what was expected there.
    """
    return parse_words(split_words(line))


def parse_words(words: Sequence[str]) -> ParsedCommand:
    """Parse a command already split into words (e.g. the arguments of a RESP array).

    Args:
        words: The words, unquoted.

    Returns:
        The command, as for :func:`parse`.

    Raises:
        CommandSyntaxError: The words are not a valid command.
    """
    if not words:
        raise CommandSyntaxError(
            "empty command: expected an action (add, list, list-detail, update, remove, "
            'force-remove), "man" or "System:"',
            position=1,
        )
    first = words[0]
    if first[: len(SYSTEM_PREFIX)].lower() == SYSTEM_PREFIX.lower() and first[
        len(SYSTEM_PREFIX) :
    ].strip(" "):
        # `redis-cli "System: list config"` sends the prefix and the rest as one word.
        return parse_words([SYSTEM_PREFIX, *first[len(SYSTEM_PREFIX) :].split(), *words[1:]])
    if first.lower() == SYSTEM_PREFIX.lower():
        return _parse_system(_Words(words, 1))
    if words[0] in ("help", "man"):
        cur = _Words(words, 1)
        return _parse_man(cur)
    return _parse_resource(_Words(words))


def _action(cur: _Words) -> Action:
    options = tuple(f"{a.value} ({short})" for a, (short, _) in ACTIONS.items())
    word, position = cur.take()
    action = ACTION_BY_WORD.get(word)
    if action is not None:
        return action
    if word.lower().startswith("system"):
        hint = f'; system commands start with "{SYSTEM_PREFIX} " (with a space)'
    else:
        hint = _did_you_mean(word, list(ACTION_BY_WORD))
    raise CommandSyntaxError(
        f"unknown action {show_word(word)} at position {position}; expected "
        f'{_one_of(options)}, "man" or "{SYSTEM_PREFIX}"{hint}',
        word=word,
        position=position,
        expected=options,
    )


def _resource_type(cur: _Words, action: Action) -> ResourceType:
    word = cur.peek()
    type_ = TYPE_BY_WORD.get(word) if word is not None else None
    if type_ is None:
        options = tuple(t.value for t in ResourceType)
        hint = ""
        if word == "config" or word in CONTROLLER_BY_WORD:
            hint = f'; did you mean "{SYSTEM_PREFIX} {action.value} {word}"?'
        elif word is not None:
            hint = _did_you_mean(word, list(TYPE_BY_WORD))
        err = cur.unexpected(f"a resource type after {show_word(action.value)}", options)
        message = err.message
        if word is not None:
            message = (
                f"unknown resource type {show_word(word)} at position {cur.position}; "
                f"expected one of: {', '.join(options)}"
            )
        raise CommandSyntaxError(message + hint, word=word, position=cur.position, expected=options)
    cur.take()
    return type_


def _parse_resource(cur: _Words) -> Command:
    action = _action(cur)
    action_word, action_position = cur.words[0], 1
    type_ = _resource_type(cur, action)
    forms = forms_for(type_, action)
    if not forms:
        supported = tuple(dict.fromkeys(form.action.value for form in GRAMMAR[type_].forms))
        raise CommandSyntaxError(
            f"action {show_word(action_word)} at position {action_position} is not "
            f"supported for {type_.value}; expected {_one_of(supported)}",
            word=action_word,
            position=action_position,
            expected=supported,
        )
    context = f"{action.value} {type_.value}"
    name = _name(cur, forms[0].name, GRAMMAR[type_].name_kind, context)
    parents, form, chain_hint = _chain(cur, action, forms, context)
    params, flags = _params(cur, form, forms, context, chain_hint)
    return Command(action, type_, name, parents, params, flags)


def _name(cur: _Words, use: NameUse, kind: NameKind, context: str) -> str | NamePattern | None:
    word = cur.peek()
    if use is not NameUse.REQUIRED_OR_PATTERN or word is None or len(word) < 2:
        return _plain_name(cur, use, kind, context)
    if not word[0] == word[-1] == "/":
        return _plain_name(cur, use, kind, context)
    _, position = cur.take()
    if has_surrogate(word):
        raise CommandSyntaxError(
            f"invalid regular expression {show_word(word)} at position {position}: "
            "it holds a lone surrogate, which is not text",
            word=word,
            position=position,
        )
    try:
        re.compile(word[1:-1])
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        raise CommandSyntaxError(
            f"invalid regular expression {show_word(word)} at position {position}: {exc}",
            word=word,
            position=position,
        ) from None
    return NamePattern(word[1:-1])


def _plain_name(cur: _Words, use: NameUse, kind: NameKind, context: str) -> str | None:
    word = cur.peek()
    if use is NameUse.NONE or (
        use is NameUse.OPTIONAL and (word is None or word in RESERVED_WORDS)
    ):
        return None
    if word is None or word in RESERVED_WORDS:
        what = "a name or a /regex/" if use is NameUse.REQUIRED_OR_PATTERN else "a name"
        raise cur.unexpected(f"{what} after {show_word(context)}")
    _, position = cur.take()
    problem = _name_problem(word, kind)
    if problem is not None:
        raise CommandSyntaxError(
            f"invalid name {show_word(word)} at position {position} for {context}: {problem}",
            word=word,
            position=position,
        )
    return word


class _ChainHint(NamedTuple):
    """A parent chain that could have followed the name but did not."""

    preposition: Preposition
    types: tuple[ResourceType, ...]

    def describe(self) -> str:
        if len(self.types) == 1:
            return f'"{self.preposition.value} {self.types[0].value} NAME"'
        types = ", ".join(t.value for t in self.types)
        return f'"{self.preposition.value} TYPE NAME" (TYPE: {types})'


def _chain(
    cur: _Words, action: Action, forms: tuple[Form, ...], context: str
) -> tuple[tuple[Ref, ...], Form, _ChainHint | None]:
    """Read the parent chain; return it, the form it selects, and a hint if it was empty."""
    allowed = [path for form in forms for path in form.parents]
    refs: list[Ref] = []
    prefix: tuple[ResourceType, ...] = ()
    first_hint: _ChainHint | None = None
    while True:
        depth = len(prefix)
        preposition = ACTION_PREPOSITION[action] if depth == 0 else Preposition.IN
        nexts = tuple(
            dict.fromkeys(p[depth] for p in allowed if p[:depth] == prefix and len(p) > depth)
        )
        hint = _ChainHint(preposition, nexts) if nexts else None
        if depth == 0:
            first_hint = hint
        word = cur.peek()
        if hint is not None and word == preposition.value:
            cur.take()
            parent = _parent_type(cur, hint, context)
            parent_name = _plain_name(
                cur,
                NameUse.REQUIRED,
                GRAMMAR[parent].name_kind,
                f"{preposition.value} {parent.value}",
            )
            refs.append(Ref(parent, parent_name or ""))
            prefix = (*prefix, parent)
            continue
        if prefix not in allowed:
            # A proper prefix of an allowed chain: its continuation is missing.
            expected = hint.describe() if hint is not None else "the end of the chain"
            raise cur.unexpected(expected, (preposition.value,))
        if word in RESERVED_WORDS:
            if hint is not None:
                raise cur.unexpected(f"{hint.describe()} or a parameter", (preposition.value,))
            where = f"{prefix[-1].value} {refs[-1].name}" if refs else context
            raise CommandSyntaxError(
                f"unexpected word {show_word(str(word))} at position {cur.position}: "
                f"{where} takes no parent here",
                word=word,
                position=cur.position,
            )
        break
    form = next(form for form in forms if prefix in form.parents)
    return tuple(refs), form, (first_hint if not refs else None)


def _parent_type(cur: _Words, hint: _ChainHint, context: str) -> ResourceType:
    word = cur.peek()
    parent = TYPE_BY_WORD.get(word) if word is not None else None
    if parent is None or parent not in hint.types:
        options = tuple(t.value for t in hint.types)
        raise cur.unexpected(
            f"{_one_of(options)} after {show_word(hint.preposition.value)} in {context}", options
        )
    cur.take()
    return parent


def _params(
    cur: _Words,
    form: Form,
    forms: tuple[Form, ...],
    context: str,
    chain_hint: _ChainHint | None,
) -> tuple[dict[str, ParamValue], frozenset[str]]:
    params: dict[str, ParamValue] = {}
    positions: dict[str, tuple[str, int]] = {}
    flags: dict[str, tuple[str, int]] = {}
    while cur.peek() is not None:
        word, position = cur.take()
        spec = form.param(word)
        if spec is not None:
            if spec.name in params:
                raise CommandSyntaxError(
                    f"duplicate parameter {show_word(word)} at position {position} for "
                    f"{context}: {spec.name} was already given",
                    word=word,
                    position=position,
                )
            if cur.peek() is None:
                raise CommandSyntaxError(
                    f"missing value for {show_word(word)} at the end of {context}: "
                    f"expected {spec.value_help}",
                    word=word,
                    position=position,
                )
            value_word, value_position = cur.take()
            try:
                params[spec.name] = _READERS[spec.kind](spec, value_word)
            except ValueProblem as exc:
                raise CommandSyntaxError(
                    f"invalid value {show_word(value_word)} at position {value_position} "
                    f"for {spec.name} of {context}: {exc}",
                    word=value_word,
                    position=value_position,
                ) from None
            positions[spec.name] = (word, position)
            continue
        flag = form.flag(word)
        if flag is not None:
            if flag.name in flags:
                raise CommandSyntaxError(
                    f"duplicate flag {show_word(word)} at position {position} for {context}",
                    word=word,
                    position=position,
                )
            flags[flag.name] = (word, position)
            continue
        raise _unknown_word(word, position, form, forms, context, chain_hint)
    _check_complete(cur, form, context, params, positions, flags)
    return params, frozenset(flags)


def _unknown_word(
    word: str,
    position: int,
    form: Form,
    forms: tuple[Form, ...],
    context: str,
    chain_hint: _ChainHint | None,
) -> CommandSyntaxError:
    keys = tuple(spec.name for spec in form.params)
    flag_names = tuple(flag.name for flag in form.flags)
    accepted = ", ".join(keys)
    if flag_names:
        accepted += (", or a flag: " if keys else "a flag: ") + ", ".join(flag_names)
    at = f"at position {position}"
    if word in RESERVED_WORDS and any(path for f in forms for path in f.parents):
        message = (
            f"unexpected word {show_word(word)} {at}: a parent "
            f"({ACTION_PREPOSITION[form.action].value} TYPE NAME) must come right after "
            f"the name in {context}"
        )
    elif word in RESERVED_WORDS:
        message = f"unexpected word {show_word(word)} {at}: {context} takes no parent"
    elif chain_hint is not None:
        message = f"unexpected word {show_word(word)} {at}: expected {chain_hint.describe()}"
        message += f" or a parameter of {context}: {accepted}" if accepted else ""
        if any(f.param(word) or f.flag(word) for f in forms if f is not form):
            message += f"; {show_word(word)} is only valid after {chain_hint.describe()}"
    elif keys or flag_names:
        message = f"unknown parameter {show_word(word)} {at} for {context}; expected one of: "
        message += accepted + _did_you_mean(word, [*keys, *flag_names])
    else:
        message = f"unexpected word {show_word(word)} {at}: {context} takes no parameters"
    return CommandSyntaxError(message, word=word, position=position, expected=keys + flag_names)


def _check_complete(
    cur: _Words,
    form: Form,
    context: str,
    params: dict[str, ParamValue],
    positions: dict[str, tuple[str, int]],
    flags: dict[str, tuple[str, int]],
) -> None:
    for spec in form.params:
        if spec.required and spec.name not in params:
            raise CommandSyntaxError(
                f"missing parameter {show_word(spec.name)} for {context}: expected "
                f"{spec.name} {spec.value_help}",
                position=cur.position,
                expected=(spec.name,),
            )
    for group in form.exactly_one_of:
        given = [name for name in group if name in params]
        if not given:
            raise CommandSyntaxError(
                f"{context} needs exactly one of: {', '.join(group)}",
                position=cur.position,
                expected=group,
            )
        if len(given) > 1:
            word, position = positions[given[1]]
            raise CommandSyntaxError(
                f"parameter {show_word(word)} at position {position} cannot be used with "
                f"{given[0]} in {context}; give exactly one of: {', '.join(group)}",
                word=word,
                position=position,
                expected=group,
            )
    for group in form.exclusive_flags:
        given = [name for name in group if name in flags]
        if len(given) > 1:
            word, position = flags[given[1]]
            raise CommandSyntaxError(
                f"flag {show_word(word)} at position {position} contradicts {given[0]} in "
                f"{context}; give at most one of: {', '.join(group)}",
                word=word,
                position=position,
                expected=group,
            )
    if form.needs_change and not params and not flags:
        options = (*(s.name for s in form.params), *(f.name for f in form.flags))
        raise CommandSyntaxError(
            f"nothing to update: {context} expects at least one of: {', '.join(options)}",
            position=cur.position,
            expected=options,
        )


# ------------------------------------------------------------------- System: commands

_SYSTEM_WORDS: Final = (
    "help",
    "man",
    "list config",
    "save",
    "load",
    "shutdown",
    "add",
    "list",
    "list-detail",
    "remove",
)


def _parse_system(cur: _Words) -> SystemCommand:
    word = cur.peek()
    if word in ("help", "man"):
        cur.take()
        return _parse_man(cur)
    if word == "shutdown":
        cur.take()
        cur.end()
        return SystemCommand(SystemOp.SHUTDOWN)
    if word in ("save", "load"):
        cur.take()
        if cur.peek() is None:
            raise cur.unexpected(f"a file path after {show_word(word)}")
        path_word, position = cur.take()
        try:
            path = parse_path(path_word)
        except ValueProblem as exc:
            raise CommandSyntaxError(
                f"invalid file path {show_word(path_word)} at position {position}: {exc}",
                word=path_word,
                position=position,
            ) from None
        cur.end()
        return SystemCommand(SystemOp.SAVE if word == "save" else SystemOp.LOAD, path=path)
    action = ACTION_BY_WORD.get(word) if word is not None else None
    if action is Action.LIST and cur.words[cur.index + 1 : cur.index + 2] == ["config"]:
        cur.take()
        cur.take()
        cur.end()
        return SystemCommand(SystemOp.LIST_CONFIG)
    if action is None or action not in (
        Action.ADD,
        Action.LIST,
        Action.LIST_DETAIL,
        Action.REMOVE,
    ):
        raise cur.unexpected(f"a system command, {_one_of(_SYSTEM_WORDS)}", _SYSTEM_WORDS)
    cur.take()
    controller_word = cur.peek()
    controller = CONTROLLER_BY_WORD.get(controller_word) if controller_word else None
    if controller is None:
        options = tuple(CONTROLLER_BY_WORD)
        if action is Action.LIST:
            options = ("config", *options)
        raise cur.unexpected(f"{_one_of(options)} after {show_word(action.value)}", options)
    cur.take()
    forms = tuple(f for f in CONTROLLERS[controller].forms if f.action is action)
    context = f"{SYSTEM_PREFIX} {action.value} {controller.value}"
    name = _plain_name(cur, forms[0].name, NameKind.NAME, context)
    params, _ = _params(cur, forms[0], forms, context, None)
    return SystemCommand(
        SystemOp.CONTROLLER, controller=controller, action=action, name=name, params=params
    )


def _parse_man(cur: _Words) -> SystemCommand:
    word = cur.peek()
    if word is None:
        return SystemCommand(SystemOp.MAN)
    topic = TYPE_BY_WORD.get(word)
    if topic is None:
        options = tuple(t.value for t in ResourceType)
        raise cur.unexpected(
            f"a resource type after {show_word('man')}, {_one_of(options)}"
            + _did_you_mean(word, list(TYPE_BY_WORD)),
            options,
        )
    cur.take()
    word = cur.peek()
    if word is None:
        return SystemCommand(SystemOp.MAN, topic=topic)
    action = ACTION_BY_WORD.get(word)
    supported = tuple(dict.fromkeys(f.action.value for f in GRAMMAR[topic].forms))
    if action is None or action.value not in supported:
        raise cur.unexpected(f"an action of {topic.value}, {_one_of(supported)}", supported)
    cur.take()
    cur.end()
    return SystemCommand(SystemOp.MAN, topic=topic, topic_action=action)


# -------------------------------------------------------------------------- writing


def format_command(command: ParsedCommand, *, short: bool = False) -> str:
    """Write a command as one line that :func:`parse` reads back into an equal command.

    Parameters come in table order, flags after them; words are quoted when needed.

    Args:
        command: A parsed (or hand-built) command.
        short: Use short action, type and parameter names where they exist.

    Returns:
        The line, without a line terminator.
    """
    if isinstance(command, SystemCommand):
        return join_words(_system_words(command, short))
    words = [_action_word(command.action, short), _type_word(command.type, short)]
    if command.name is not None:
        words.append(str(command.name))
    for index, ref in enumerate(command.parents):
        preposition = ACTION_PREPOSITION[command.action] if index == 0 else Preposition.IN
        words += [preposition.value, _type_word(ref.type, short), ref.name]
    form = command.form
    words += _param_words(form, command.params, command.flags, short)
    return join_words(words)


def _action_word(action: Action, short: bool) -> str:
    return ACTIONS[action][0] if short else action.value


def _type_word(type_: ResourceType, short: bool) -> str:
    short_name = GRAMMAR[type_].short
    return short_name if short and short_name is not None else type_.value


def _param_words(
    form: Form | None, params: Mapping[str, ParamValue], flags: frozenset[str], short: bool
) -> list[str]:
    specs = form.params if form is not None else ()
    known = {spec.name: spec for spec in specs}
    words: list[str] = []
    ordered = [spec.name for spec in specs if spec.name in params]
    ordered += [name for name in params if name not in known]
    for name in ordered:
        spec = known.get(name)
        key = spec.aliases[0] if short and spec is not None and spec.aliases else name
        words += [key, format_value(params[name])]
    flag_order = [flag.name for flag in form.flags] if form is not None else []
    words += [name for name in flag_order if name in flags]
    words += sorted(name for name in flags if name not in flag_order)
    return words


def _system_words(command: SystemCommand, short: bool) -> list[str]:
    words = [SYSTEM_PREFIX]
    if command.op is SystemOp.MAN:
        words.append("man")
        if command.topic is not None:
            words.append(_type_word(command.topic, short))
            if command.topic_action is not None:
                words.append(_action_word(command.topic_action, short))
    elif command.op is SystemOp.LIST_CONFIG:
        words += ["list", "config"]
    elif command.op in (SystemOp.SAVE, SystemOp.LOAD):
        words += [command.op.value, command.path or ""]
    elif command.op is SystemOp.SHUTDOWN:
        words.append("shutdown")
    else:
        action = command.action or Action.LIST
        controller = command.controller or ControllerType.RESP
        words += [_action_word(action, short), controller.value]
        if command.name is not None:
            words.append(command.name)
        form = next((f for f in CONTROLLERS[controller].forms if f.action is action), None)
        words += _param_words(form, command.params, frozenset(), short)
    return words
