"""Errors of the command language, each carrying its wire forms.

Owns the small hierarchy every controller renders alike: the message, the RESP error
text and the HTTP status. The parser raises :class:`CommandSyntaxError`; the executor
raises :class:`NotFoundError`, :class:`ConflictError` and :class:`InUseError`. Must not
import anything from the controllers or the executor, nor do I/O.
"""

from __future__ import annotations

import json
import re
from typing import ClassVar

__all__ = [
    "CommandError",
    "CommandSyntaxError",
    "ConflictError",
    "InUseError",
    "NotFoundError",
    "show_word",
]


def show_word(word: str) -> str:
    """Quote a word for an error message, escaping anything unprintable.

    Args:
        word: A word as the user wrote it, possibly holding control characters or
            lone surrogates.

    Returns:
        The word in double quotes, on one line, encodable as UTF-8.
    """
    quoted = json.dumps(word, ensure_ascii=False)
    return _UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", quoted)


# What json.dumps leaves raw but must not reach a one-line reply: DEL, C1 controls,
# Unicode line breaks and lone surrogates (which UTF-8 cannot encode).
_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")


class CommandError(Exception):
    """A command failed and changed nothing.

    Attributes:
        message: What went wrong, one line, naming the bad word and what was expected.
        http_status: The HTTP status the HTTP controller answers with.
        resp_code: The first word of the RESP error reply.
        error_code: A stable machine-readable code for JSON error bodies.
    """

    http_status: ClassVar[int] = 400
    resp_code: ClassVar[str] = "ERR"
    error_code: ClassVar[str] = "bad-command"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # One line whatever the caller passed: RESP error replies cannot hold CR/LF.
        self.message = " ".join(message.splitlines()) if message else "command failed"

    @property
    def resp_text(self) -> str:
        """The text of the RESP error reply, such as ``ERR unknown action "ad"``."""
        return f"{self.resp_code} {self.message}"

    def to_dict(self) -> dict[str, str]:
        """The body of a JSON error reply.

        Returns:
            ``{"code": error_code, "message": message}``.
        """
        return {"code": self.error_code, "message": self.message}

    def __str__(self) -> str:
        return self.message


class CommandSyntaxError(CommandError):
    """A command is malformed or a value is out of range (HTTP 400).

    Attributes:
        word: The offending word, or None when the command ended too early.
        position: The 1-based position of the offending word among the words of the
            command; for quoting errors found by the lexer, the 1-based column.
        expected: What would have been accepted there, when that is a short list.
    """

    error_code: ClassVar[str] = "syntax"

    def __init__(
        self,
        message: str,
        *,
        word: str | None = None,
        position: int | None = None,
        expected: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.word = word
        self.position = position
        self.expected = expected


class NotFoundError(CommandError):
    """A named resource does not exist (HTTP 404)."""

    http_status: ClassVar[int] = 404
    error_code: ClassVar[str] = "not-found"


class ConflictError(CommandError):
    """The command contradicts the current state, e.g. the name exists (HTTP 409)."""

    http_status: ClassVar[int] = 409
    error_code: ClassVar[str] = "conflict"


class InUseError(ConflictError):
    """A resource cannot be removed while another one uses it (HTTP 409)."""

    error_code: ClassVar[str] = "in-use"
