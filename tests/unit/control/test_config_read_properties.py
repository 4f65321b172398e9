"""Reading config files from arbitrary bytes (control.persist.read_config), as ``load``
does before it parses and applies anything."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vproxy.control.command import CommandError, parse
from vproxy.control.persist import ConfigFileError, read_config

FUZZ = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

_WORDS = [b"add", b"upstream", b"u", b"#", b"\n", b"\r\n", b" ", b"\t", b"\xef\xbb\xbf", b"\x00"]
config_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(st.sampled_from(_WORDS), st.binary(max_size=4)), max_size=40).map(b"".join),
)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d) / "fuzz.conf"


@FUZZ
@given(data=config_bytes)
def test_any_bytes_read_as_lines_or_config_error(scratch: Path, data: bytes) -> None:
    scratch.write_bytes(data)
    try:
        lines = read_config(scratch, max_size=256)
    except ConfigFileError:
        bad_utf8 = True
        try:
            data.decode("utf-8")
            bad_utf8 = False
        except UnicodeDecodeError:
            pass
        assert len(data) > 256 or b"\0" in data or bad_utf8
        return
    assert len(data) <= 256
    assert b"\0" not in data
    numbers = [cl.number for cl in lines]
    assert numbers == sorted(set(numbers))
    text = data.decode("utf-8").removeprefix("\ufeff")
    physical = text.split("\n")
    for cl in lines:
        assert cl.text
        assert cl.text == cl.text.strip(" \t\r\n")
        assert not cl.text.startswith("#")
        assert cl.text in physical[cl.number - 1]
        try:
            parse(cl.text)
        except CommandError:
            pass  # load reports it with the line number and applies nothing
