"""Help text of the command language, generated from the grammar tables.

Owns ``man``: the overview, one page per resource type and one per (type, action).
Everything shown comes from ``grammar.py``, the tables the parser reads, so the help
cannot disagree with what is accepted. Must not hold its own list of parameters,
touch any state, or do I/O.
"""

from __future__ import annotations

from .errors import CommandSyntaxError, show_word
from .grammar import (
    ACTION_BY_WORD,
    ACTION_PREPOSITION,
    ACTIONS,
    CONTROLLERS,
    GRAMMAR,
    NAME_RULES,
    TYPE_BY_WORD,
    Action,
    Form,
    NameKind,
    NameUse,
    ParamSpec,
    Preposition,
    ResourceType,
    ValueKind,
    forms_for,
)

__all__ = ["man", "usage"]

_SYNTAX = (
    "ACTION TYPE [NAME] [in TYPE NAME [in ...]] [to|from TYPE NAME] [KEY VALUE ...] [FLAG ...]"
)
_SYSTEM_LINES: tuple[tuple[str, str], ...] = (
    ("help | man [TYPE [ACTION]]", "this help (also without the System: prefix)"),
    ("list config", "the current state as commands"),
    ("save FILE", "write the current state to FILE, atomically"),
    ("load FILE", "run the commands in FILE"),
    ("shutdown", "save the state and stop the process"),
)
_QUOTING = (
    'Quoting: "..." with \\\\ \\" \\n \\t \\xHH escapes, or \'...\' taken literally; '
    "quotes inside a word are ordinary characters."
)


def _resolve_type(resource: ResourceType | str) -> ResourceType:
    if isinstance(resource, ResourceType):
        return resource
    found = TYPE_BY_WORD.get(resource)
    if found is None:
        options = tuple(t.value for t in ResourceType)
        raise CommandSyntaxError(
            f"unknown resource type {show_word(resource)}; expected one of: {', '.join(options)}",
            word=resource,
            expected=options,
        )
    return found


def _resolve_action(resource: ResourceType, action: Action | str) -> Action:
    found = action if isinstance(action, Action) else ACTION_BY_WORD.get(action)
    supported = tuple(dict.fromkeys(form.action.value for form in GRAMMAR[resource].forms))
    if found is None or found.value not in supported:
        word = action.value if isinstance(action, Action) else action
        raise CommandSyntaxError(
            f"{resource.value} has no action {show_word(word)}; expected one of: "
            + ", ".join(supported),
            word=word,
            expected=supported,
        )
    return found


def _value_word(spec: ParamSpec) -> str:
    if spec.kind is ValueKind.ADDRESS:
        return "HOST:PORT" if spec.hostname_ok else "IP:PORT"
    if spec.kind in (ValueKind.INT, ValueKind.CHOICE):
        return spec.value_help if spec.kind is ValueKind.CHOICE else "INT"
    return spec.kind.value


def _param_usage(spec: ParamSpec) -> str:
    text = f"{spec.name} {_value_word(spec)}"
    return text if spec.required else f"[{text}]"


def usage(resource: ResourceType | str, form: Form, path: tuple[ResourceType, ...] = ()) -> str:
    """One usage line of a form for one of its parent chains.

    Args:
        resource: The resource type (or a controller word such as ``resp-controller``).
        form: The form.
        path: One of ``form.parents``.

    Returns:
        A line such as ``add server NAME to server-group NAME address HOST:PORT ...``.
    """
    type_word = resource.value if isinstance(resource, ResourceType) else resource
    words = [form.action.value, type_word]
    if form.name is NameUse.REQUIRED:
        words.append("NAME")
    elif form.name is NameUse.OPTIONAL:
        words.append("[NAME]")
    elif form.name is NameUse.REQUIRED_OR_PATTERN:
        words.append("NAME|/REGEX/")
    for index, parent in enumerate(path):
        preposition = ACTION_PREPOSITION[form.action] if index == 0 else Preposition.IN
        words += [preposition.value, parent.value, "NAME"]
    words += [_param_usage(spec) for spec in form.params]
    if form.flags:
        words.append("[" + "|".join(flag.name for flag in form.flags) + "]")
    return " ".join(words)


def _param_lines(form: Form) -> list[str]:
    lines: list[str] = []
    if form.params:
        lines.append("  Parameters:")
    for spec in form.params:
        key = spec.name + (f" ({', '.join(spec.aliases)})" if spec.aliases else "")
        need = "required" if spec.required else "optional"
        notes = [need, spec.value_help]
        if spec.default is not None:
            notes.append(f"default {spec.default}")
        elif spec.default_note is not None:
            notes.append(f"default {spec.default_note}")
        lines.append(f"    {key:<28} {'; '.join(notes)}. {spec.doc}".rstrip())
    for group in form.exactly_one_of:
        lines.append(f"  Exactly one of: {', '.join(group)}")
    if form.flags:
        lines.append("  Flags:")
    for flag in form.flags:
        lines.append(f"    {flag.name:<28} {flag.doc}")
    for group in form.exclusive_flags:
        lines.append(f"  At most one of: {', '.join(group)}")
    if form.needs_change:
        lines.append("  At least one parameter or flag must be given.")
    return lines


def _form_block(resource: ResourceType | str, form: Form) -> list[str]:
    lines = [f"{usage(resource, form, path)}" for path in form.parents]
    lines = [f"  {line}" for line in lines]
    lines.insert(0, f"{form.summary}:" if form.summary else "Usage:")
    return [*lines, *_param_lines(form)]


def _overview() -> str:
    lines = ["vproxy command language", "", f"  {_SYNTAX}", "", "Actions:"]
    for action, (short, doc) in ACTIONS.items():
        lines.append(f"  {action.value + ' (' + short + ')':<22} {doc}")
    for title, observable in (("Resource types:", False), ("Observable only:", True)):
        lines += ["", title]
        for spec in GRAMMAR.values():
            if spec.observable is observable:
                label = spec.type.value + (f" ({spec.short})" if spec.short else "")
                lines.append(f"  {label:<28} {spec.summary}")
    lines += ["", 'System commands (prefix "System: "):']
    for syntax, doc in _SYSTEM_LINES:
        lines.append(f"  {syntax:<34} {doc}")
    for controller in CONTROLLERS.values():
        for form in controller.forms:
            lines.append(f"  {usage(controller.type.value, form)}")
    lines += [
        "",
        f"Names: {NAME_RULES[NameKind.NAME].description}.",
        _QUOTING,
        'Run "man TYPE" or "man TYPE ACTION" for details.',
    ]
    return "\n".join(lines)


def _type_page(resource: ResourceType) -> str:
    spec = GRAMMAR[resource]
    short = f" (short: {spec.short})" if spec.short else ""
    lines = [f"{resource.value}{short}: {spec.summary}", "", "Usage:"]
    for form in spec.forms:
        lines += [f"  {usage(resource, form, path)}" for path in form.parents]
    lines += ["", f'Run "man {resource.value} ACTION" for the parameters.']
    return "\n".join(lines)


def _action_page(resource: ResourceType, action: Action) -> str:
    short, doc = ACTIONS[action]
    lines = [f"{action.value} ({short}) {resource.value}: {doc}"]
    for form in forms_for(resource, action):
        lines += ["", *_form_block(resource, form)]
    return "\n".join(lines)


def man(resource: ResourceType | str | None = None, action: Action | str | None = None) -> str:
    """The help text: an overview, a resource type's page, or one action's page.

    Args:
        resource: A resource type (long or short name accepted), or None for the
            overview of actions, types and system commands.
        action: An action of that type (long or short form), or None.

    Returns:
        The text, lines separated by ``\\n``, without a trailing newline.

    Raises:
        CommandSyntaxError: The type is unknown, the action is unknown or not supported
            by the type, or an action is given without a type.
    """
    if resource is None:
        if action is not None:
            raise CommandSyntaxError("man: an action needs a resource type")
        return _overview()
    type_ = _resolve_type(resource)
    if action is None:
        return _type_page(type_)
    return _action_page(type_, _resolve_action(type_, action))
