"""The lexer of the command language: words, quotes, escapes and refused characters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vproxy.control.command import CommandSyntaxError, join_words, quote_word, split_words


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("", []),
        ("   \t ", []),
        ("add upstream u0", ["add", "upstream", "u0"]),
        ("  add \t upstream   u0  ", ["add", "upstream", "u0"]),
        ('save "/tmp/my file.conf"', ["save", "/tmp/my file.conf"]),
        ("save '/tmp/my file.conf'", ["save", "/tmp/my file.conf"]),
        ('x ""', ["x", ""]),
        ("x ''", ["x", ""]),
        (r'x "a\"b"', ["x", 'a"b']),
        (r'x "a\\b"', ["x", "a\\b"]),
        (r'x "tab\there"', ["x", "tab\there"]),
        (r'x "nl\nhere"', ["x", "nl\nhere"]),
        (r'x "cr\r"', ["x", "cr\r"]),
        (r'x "nul\0"', ["x", "nul\0"]),
        (r'x "\x41\u00e9"', ["x", "A\u00e9"]),
        (r'x "it\'s"', ["x", "it's"]),
        (r"x 'no \n escapes'", ["x", "no \\n escapes"]),
        ("x 'say \"hi\"'", ["x", 'say "hi"']),
        # Quotes inside an unquoted word are ordinary: JSON needs no quoting.
        ('annotations {"host":"a.com"}', ["annotations", '{"host":"a.com"}']),
        ("key C:\\certs\\a.pem", ["key", "C:\\certs\\a.pem"]),
        ("a\"b c'd", ['a"b', "c'd"]),
        ('"quoted with\ttab inside"', ["quoted with\ttab inside"]),
        ('"raw\x00nul allowed in quotes"', ["raw\x00nul allowed in quotes"]),
        ("caf\u00e9 \u4e2d\u6587", ["caf\u00e9", "\u4e2d\u6587"]),
        ("/.*/", ["/.*/"]),
    ],
)
def test_split_words(line: str, words: list[str]) -> None:
    assert split_words(line) == words


@pytest.mark.parametrize(
    ("line", "fragment", "position"),
    [
        ('add "abc', "unterminated double quote starting at column 5", 5),
        ('add "abc\\"', "unterminated double quote starting at column 5", 5),
        ('add "abc\\', "unterminated double quote starting at column 5", 5),
        ("add 'abc", "unterminated single quote starting at column 5", 5),
        ('x "a"b', 'unexpected character "b" at column 6', 6),
        ("x 'a'b", 'unexpected character "b" at column 6', 6),
        ('x "a""b"', 'unexpected character "\\"" at column 6', 6),
        ('x "\\q"', 'invalid escape "\\\\q" at column 4', 4),
        ('x "\\x4"', 'invalid escape "\\\\x" at column 4', 4),
        ('x "\\xZZ"', 'invalid escape "\\\\x" at column 4', 4),
        ('x "\\u12"', 'invalid escape "\\\\u" at column 4', 4),
        ('x "\\ud800"', 'invalid escape "\\\\u" at column 4', 4),
        ("add x\n", "control character U+000A (newline) at column 6 outside quotes", 6),
        ("add\nx", "control character U+000A (newline) at column 4 outside quotes", 4),
        ("add x\r", "control character U+000D (carriage return) at column 6", 6),
        ("a\x00b", "control character U+0000 (NUL) at column 2", 2),
        ("a\x1bb", "control character U+001B (escape) at column 2", 2),
        ("a\x7f", "control character U+007F (DEL) at column 2", 2),
        ("a\x85", "control character U+0085 at column 2", 2),
        ("a\u2028", "control character U+2028 (line separator) at column 2", 2),
        ("a\x0bb", "control character U+000B at column 2", 2),
        ("a \ud800", "lone surrogate U+D800 at column 3", 3),
        ("'a\udfff'", "lone surrogate U+DFFF at column 3", 3),
    ],
)
def test_split_words_errors(line: str, fragment: str, position: int) -> None:
    with pytest.raises(CommandSyntaxError) as info:
        split_words(line)
    assert fragment in info.value.message
    assert info.value.position == position
    assert "\n" not in info.value.resp_text
    assert info.value.resp_text.startswith("ERR ")


@pytest.mark.parametrize(
    ("word", "written"),
    [
        ("plain", "plain"),
        ("", '""'),
        ("a b", '"a b"'),
        ('"lead', '"\\"lead"'),
        ("'lead", '"\'lead"'),
        ('mid"dle', 'mid"dle'),
        ("back\\slash", "back\\slash"),
        ("back\\ slash", '"back\\\\ slash"'),
        ("nl\n", '"nl\\n"'),
        ("tab\t", '"tab\\t"'),
        ("nul\x00", '"nul\\x00"'),
        ("sep\u2028", '"sep\\u2028"'),
    ],
)
def test_quote_word(word: str, written: str) -> None:
    assert quote_word(word) == written
    assert split_words(written) == [word]


_TEXT = st.text(st.characters(exclude_categories=("Cs",)))


@settings(max_examples=500)
@given(st.lists(_TEXT, max_size=8))
def test_join_then_split_is_identity(words: list[str]) -> None:
    assert split_words(join_words(words)) == words


@settings(max_examples=2000)
@given(st.text())
def test_split_words_never_fails_otherwise(line: str) -> None:
    try:
        outcome: list[str] | CommandSyntaxError = split_words(line)
    except CommandSyntaxError as exc:
        outcome = exc
    if isinstance(outcome, CommandSyntaxError):
        assert "\n" not in outcome.resp_text
        outcome.resp_text.encode("utf-8")
    else:
        assert split_words(join_words(outcome)) == outcome
