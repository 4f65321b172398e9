"""Typed replies of the command language and their three renderings.

Owns the reply values the executor returns (SPEC §3.1: a status, an integer, a string,
nil, an array, possibly nested, or an error) and how each controller writes them: RESP2
bytes for the RESP controller, JSON-compatible values for the HTTP controller, and
redis-cli's human format for the console. Must not do I/O, know about commands or
resources, or import anything from ``vproxy.net``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

__all__ = [
    "NIL",
    "OK",
    "Array",
    "ErrorReply",
    "Integer",
    "JsonValue",
    "Nil",
    "Reply",
    "Status",
    "String",
    "to_console",
    "to_json",
    "to_resp",
]


@dataclass(frozen=True, slots=True)
class Status:
    """A simple status such as ``OK`` (RESP ``+OK``)."""

    text: str


@dataclass(frozen=True, slots=True)
class Integer:
    """An integer (RESP ``:1``)."""

    value: int


@dataclass(frozen=True, slots=True)
class String:
    """A text string, sent as a UTF-8 bulk string (RESP ``$len``)."""

    value: str


@dataclass(frozen=True, slots=True)
class Nil:
    """The absent value (RESP ``$-1``)."""


@dataclass(frozen=True, slots=True)
class Array:
    """An ordered list of replies, which may themselves be arrays (RESP ``*N``)."""

    items: tuple[Reply, ...]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A failed command: nothing was changed.

    Attributes:
        message: What went wrong, naming the bad word and what was expected.
        http_status: The status the HTTP controller answers with.
        code: The redis error code, the first word of the RESP error (``ERR``,
            ``NOAUTH``, ``WRONGPASS``...).
    """

    message: str
    http_status: int = 400
    code: str = "ERR"

    def __post_init__(self) -> None:
        if not self.code or any(ch.isspace() for ch in self.code):
            raise ValueError(f"error code must be one word, not {self.code!r}")


Reply: TypeAlias = Status | Integer | String | Nil | Array | ErrorReply
"""Any reply of the command language."""

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None
"""What :func:`to_json` returns: a value :func:`json.dumps` accepts."""

OK = Status("OK")
"""The usual success reply."""
NIL = Nil()
"""The absent value."""


def to_resp(reply: Reply) -> bytes:
    """Encode a reply as RESP2.

    Strings are UTF-8 bulk strings; CR and LF in a status or an error (which RESP
    cannot carry) become spaces.

    Args:
        reply: The reply to encode.

    Returns:
        The bytes to write, e.g. ``b"+OK\\r\\n"``, ``b":1\\r\\n"``,
        ``b"*1\\r\\n$1\\r\\na\\r\\n"``, ``b"-ERR no such tcp-lb: x\\r\\n"``.
    """
    out: list[bytes] = []
    _resp(reply, out)
    return b"".join(out)


def _resp(reply: Reply, out: list[bytes]) -> None:
    if isinstance(reply, Status):
        out.append(b"+%s\r\n" % _utf8(_one_line(reply.text)))
    elif isinstance(reply, Integer):
        out.append(b":%d\r\n" % reply.value)
    elif isinstance(reply, String):
        data = _utf8(reply.value)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    elif isinstance(reply, Nil):
        out.append(b"$-1\r\n")
    elif isinstance(reply, Array):
        out.append(b"*%d\r\n" % len(reply.items))
        for item in reply.items:
            _resp(item, out)
    else:
        out.append(b"-%s\r\n" % _utf8(_error_text(reply)))


def to_json(reply: Reply) -> JsonValue:
    """Convert a reply to a JSON-compatible value for the HTTP controller.

    A status becomes its text, an integer an int, a string a str, nil ``None`` and an
    array a list. An error becomes ``{"code": http_status, "message": message}``; the
    HTTP controller also answers with ``http_status``.

    Args:
        reply: The reply to convert.

    Returns:
        A value that :func:`json.dumps` accepts.
    """
    if isinstance(reply, Status):
        return reply.text
    if isinstance(reply, Integer):
        return reply.value
    if isinstance(reply, String):
        return reply.value
    if isinstance(reply, Nil):
        return None
    if isinstance(reply, Array):
        return [to_json(item) for item in reply.items]
    return {"code": reply.http_status, "message": reply.message}


def to_console(reply: Reply) -> str:
    """Format a reply the way redis-cli prints it on a terminal.

    For example ``OK``, ``(integer) 1``, ``"text"`` (bytes outside printable ASCII
    escaped as redis-cli escapes them), ``(nil)``, ``(empty array)``,
    ``(error) ERR message``, and arrays as numbered items, nested ones indented::

        1) 1) "a"
           2) "b"
        2) (integer) 3

    Args:
        reply: The reply to format.

    Returns:
        The text, without a final newline.
    """
    out: list[str] = []
    _console(reply, "", out)
    text = "".join(out)
    return text[:-1] if text.endswith("\n") else text


def _console(reply: Reply, prefix: str, out: list[str]) -> None:
    # Mirrors cliFormatReplyTTY() in redis-cli.c: every item ends with a newline; an
    # array's first item goes right after the parent's index, later items start with
    # the parent's indentation, and children indent by the index width plus two.
    if isinstance(reply, Status):
        out.append(_one_line(reply.text) + "\n")
    elif isinstance(reply, Integer):
        out.append(f"(integer) {reply.value}\n")
    elif isinstance(reply, String):
        out.append(_repr(_utf8(reply.value)) + "\n")
    elif isinstance(reply, Nil):
        out.append("(nil)\n")
    elif isinstance(reply, Array):
        if not reply.items:
            out.append("(empty array)\n")
            return
        width = len(str(len(reply.items)))
        child_prefix = prefix + " " * (width + 2)
        for index, item in enumerate(reply.items, 1):
            out.append(f"{prefix if index > 1 else ''}{index:>{width}}) ")
            _console(item, child_prefix, out)
    else:
        out.append(f"(error) {_error_text(reply)}\n")


_REPR_ESCAPES = {
    0x5C: "\\\\",
    0x22: '\\"',
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
    0x07: "\\a",
    0x08: "\\b",
}


def _repr(data: bytes) -> str:
    """Quote bytes like redis' ``sdscatrepr``: printable ASCII as is, others escaped."""
    parts = ['"']
    for b in data:
        escaped = _REPR_ESCAPES.get(b)
        if escaped is not None:
            parts.append(escaped)
        elif 0x20 <= b < 0x7F:
            parts.append(chr(b))
        else:
            parts.append(f"\\x{b:02x}")
    parts.append('"')
    return "".join(parts)


def _one_line(text: str) -> str:
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def _error_text(reply: ErrorReply) -> str:
    message = _one_line(reply.message)
    code = _one_line(reply.code)
    return f"{code} {message}" if message else code


def _utf8(text: str) -> bytes:
    # Lone surrogates (e.g. from bytes decoded with surrogateescape) must not make a
    # reply impossible to send: restore the original bytes or show the code point.
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace")
