"""The command language of SPEC §3.1, sans-IO: words in, Command objects out.

Owns lexing, the grammar tables, parsing, writing commands back as lines, the errors
every controller renders alike, and the ``man`` help generated from the same tables.
Must not import asyncio, socket, selectors or time, nor anything from ``vproxy.net``;
parsing never touches state: the executor alone applies commands.
"""

from .errors import (
    CommandError,
    CommandSyntaxError,
    ConflictError,
    InUseError,
    NotFoundError,
)
from .grammar import (
    BUILTIN_PROTOCOLS,
    CONTROLLERS,
    GRAMMAR,
    Action,
    ControllerType,
    FlagSpec,
    Form,
    NameUse,
    ParamSpec,
    Preposition,
    ResourceType,
    TypeSpec,
    ValueKind,
    find_form,
    forms_for,
)
from .lexer import join_words, quote_word, split_words
from .man import man
from .parser import (
    Command,
    ParsedCommand,
    Ref,
    SystemCommand,
    SystemOp,
    format_command,
    format_value,
    parse,
    parse_value,
    parse_words,
)
from .values import (
    Address,
    IpType,
    Method,
    NamePattern,
    ParamValue,
    PortRange,
    SecurityDefault,
    TransportProtocol,
)

__all__ = [
    "BUILTIN_PROTOCOLS",
    "CONTROLLERS",
    "GRAMMAR",
    "Action",
    "Address",
    "Command",
    "CommandError",
    "CommandSyntaxError",
    "ConflictError",
    "ControllerType",
    "FlagSpec",
    "Form",
    "InUseError",
    "IpType",
    "Method",
    "NamePattern",
    "NameUse",
    "NotFoundError",
    "ParamSpec",
    "ParamValue",
    "ParsedCommand",
    "PortRange",
    "Preposition",
    "Ref",
    "ResourceType",
    "SecurityDefault",
    "SystemCommand",
    "SystemOp",
    "TransportProtocol",
    "TypeSpec",
    "ValueKind",
    "find_form",
    "format_command",
    "format_value",
    "forms_for",
    "join_words",
    "man",
    "parse",
    "parse_value",
    "parse_words",
    "quote_word",
    "split_words",
]
