"""Splitting one command line into words, and quoting words back into a line.

Owns the quoting rules of the command language:

* Words are separated by spaces and tabs.
* A word that *starts* with ``"`` is double-quoted: it ends at the next unescaped
  ``"``, which must be followed by a separator or the end of the line. Inside,
  ``\\\\ \\" \\' \\n \\r \\t \\0 \\xHH \\uHHHH`` are escapes; any other backslash
  sequence is an error.
* A word that starts with ``'`` is single-quoted: no escapes at all; it ends at the
  next ``'``.
* Anywhere else quotes and backslashes are ordinary characters, so JSON such as
  ``{"host":"a.com"}`` and Windows paths can be written without quoting.
* Control characters (newline, NUL, DEL, C1 controls, U+2028/U+2029) are refused
  outside quotes; inside quotes they are kept. Lone surrogates are refused anywhere.

Must not know any keyword of the language, hold state between calls, or do I/O.
"""

from __future__ import annotations

from .errors import CommandSyntaxError, show_word
from .values import has_control_char, has_surrogate

__all__ = ["join_words", "quote_word", "split_words"]

_SEPARATORS = frozenset(" \t")
_SIMPLE_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "r": "\r", "t": "\t", "0": "\0"}
_HEX_ESCAPES = {"x": 2, "u": 4}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_CHAR_NAMES = {
    "\n": "newline",
    "\r": "carriage return",
    "\0": "NUL",
    "\x1b": "escape",
    "\x7f": "DEL",
    "\u2028": "line separator",
    "\u2029": "paragraph separator",
}


def _describe(char: str) -> str:
    code = f"U+{ord(char):04X}"
    name = _CHAR_NAMES.get(char)
    return f"control character {code} ({name})" if name else f"control character {code}"


def split_words(line: str) -> list[str]:
    """Split a command line into words, removing quotes and applying escapes.

    Args:
        line: One command, without its line terminator.

    Returns:
        The words in order; empty for a blank line.

    Raises:
        CommandSyntaxError: A quote is unterminated, an escape is invalid, a closing
            quote is followed by a character, a control character appears outside
            quotes, or the line holds a lone surrogate. ``position`` is the 1-based
            column of the problem.
    """
    if has_surrogate(line):
        at = next(i for i, char in enumerate(line) if has_surrogate(char))
        raise CommandSyntaxError(
            f"lone surrogate U+{ord(line[at]):04X} at column {at + 1}: not text",
            word=line[:at].rsplit(" ", 1)[-1],
            position=at + 1,
        )
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        char = line[i]
        if char in _SEPARATORS:
            i += 1
        elif char == '"':
            word, i = _double_quoted(line, i)
            words.append(word)
        elif char == "'":
            end = line.find("'", i + 1)
            if end < 0:
                raise CommandSyntaxError(
                    f"unterminated single quote starting at column {i + 1}",
                    word=line[i:],
                    position=i + 1,
                    expected=("'",),
                )
            words.append(line[i + 1 : end])
            i = _after_closing_quote(line, end)
        else:
            start = i
            while i < n and line[i] not in _SEPARATORS:
                if has_control_char(line[i]):
                    raise CommandSyntaxError(
                        f"{_describe(line[i])} at column {i + 1} outside quotes; "
                        'write it inside double quotes as an escape such as "\\n"',
                        word=line[start:i],
                        position=i + 1,
                    )
                i += 1
            words.append(line[start:i])
    return words


def _double_quoted(line: str, start: int) -> tuple[str, int]:
    """Read the double-quoted word opening at ``start``; return it and the next index."""
    out: list[str] = []
    i, n = start + 1, len(line)
    while i < n:
        char = line[i]
        if char == '"':
            return "".join(out), _after_closing_quote(line, i)
        if char != "\\":
            out.append(char)
            i += 1
            continue
        code = line[i + 1 : i + 2]
        if code in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[code])
            i += 2
        elif code in _HEX_ESCAPES:
            digits = line[i + 2 : i + 2 + _HEX_ESCAPES[code]]
            if len(digits) != _HEX_ESCAPES[code] or not set(digits) <= _HEX_DIGITS:
                raise _bad_escape(line, i, start)
            if 0xD800 <= int(digits, 16) <= 0xDFFF:  # a lone surrogate is not text
                raise _bad_escape(line, i, start)
            out.append(chr(int(digits, 16)))
            i += 2 + len(digits)
        elif not code:
            break
        else:
            raise _bad_escape(line, i, start)
    raise CommandSyntaxError(
        f"unterminated double quote starting at column {start + 1}",
        word=line[start:],
        position=start + 1,
        expected=('"',),
    )


def _bad_escape(line: str, at: int, start: int) -> CommandSyntaxError:
    seq = line[at : at + 2]
    return CommandSyntaxError(
        f"invalid escape {show_word(seq)} at column {at + 1} in the double-quoted word "
        f"starting at column {start + 1}; expected one of: "
        + " ".join(("\\\\", '\\"', "\\'", "\\n", "\\r", "\\t", "\\0", "\\xHH", "\\uHHHH")),
        word=seq,
        position=at + 1,
    )


def _after_closing_quote(line: str, quote_at: int) -> int:
    following = quote_at + 1
    if following < len(line) and line[following] not in _SEPARATORS:
        raise CommandSyntaxError(
            f"unexpected character {show_word(line[following])} at column {following + 1} "
            "right after a closing quote; expected a space",
            word=line[following],
            position=following + 1,
        )
    return following


def _needs_quotes(word: str) -> bool:
    return (
        not word
        or word[0] in "\"'"
        or any(c in _SEPARATORS for c in word)
        or has_control_char(word)
    )


def quote_word(word: str) -> str:
    """Write a word so that :func:`split_words` reads it back unchanged.

    Args:
        word: Any text.

    Returns:
        ``word`` itself when it needs no quotes, else a double-quoted form with every
        backslash, double quote and control character escaped.
    """
    if not _needs_quotes(word):
        return word
    out = ['"']
    for char in word:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif has_control_char(char):
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def join_words(words: list[str] | tuple[str, ...]) -> str:
    """Join words into one line, quoting those that need it.

    Args:
        words: The words.

    Returns:
        A line that :func:`split_words` splits back into ``words``.
    """
    return " ".join(quote_word(word) for word in words)
