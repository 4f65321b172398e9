"""Tests for config files: atomic saves and reading commands back (control.persist)."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vproxy.control import persist
from vproxy.control.persist import (
    ConfigFileError,
    ConfigLine,
    default_last_path,
    read_config,
    save_atomic,
)

CONFIG = """\
# vproxy config
add event-loop-group worker

   # an indented comment
  add upstream backend-groups\t
add server-group ngx timeout 500 period 1000 up 2 down 3 method wrr # not a comment
"""


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "vproxy.conf"
    save_atomic(path, CONFIG)
    assert path.read_text(encoding="utf-8") == CONFIG
    assert read_config(path) == [
        ConfigLine(2, "add event-loop-group worker"),
        ConfigLine(5, "add upstream backend-groups"),
        ConfigLine(
            6, "add server-group ngx timeout 500 period 1000 up 2 down 3 method wrr # not a comment"
        ),
    ]


@settings(max_examples=50, deadline=None, database=None)
@given(
    commands=st.lists(
        st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=30)
        .map(str.strip)
        .filter(lambda c: bool(c) and not c.startswith("#")),
        max_size=10,
    )
)
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, commands: list[str]) -> None:
    path = tmp_path_factory.mktemp("prop") / "f.conf"
    save_atomic(path, "".join(c + "\n" for c in commands))
    assert [line.text for line in read_config(path)] == commands


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", []),
        (b"\n\n  \n\t\n", []),
        (b"a\r\nb\r\n", [ConfigLine(1, "a"), ConfigLine(2, "b")]),
        (b"a\nb", [ConfigLine(1, "a"), ConfigLine(2, "b")]),  # no final newline
        (b"#x\r\n  # y\n#\nc", [ConfigLine(4, "c")]),
        (b"a # b\n", [ConfigLine(1, "a # b")]),
        (b"\xef\xbb\xbfadd upstream u\n", [ConfigLine(1, "add upstream u")]),
        ("add upstream caf\u00e9\n".encode(), [ConfigLine(1, "add upstream caf\u00e9")]),
        (b"a\x0cb\n", [ConfigLine(1, "a\x0cb")]),  # only LF ends a line
    ],
)
def test_read_config_cases(tmp_path: Path, data: bytes, expected: list[ConfigLine]) -> None:
    path = tmp_path / "c.conf"
    path.write_bytes(data)
    assert read_config(path) == expected


@pytest.mark.parametrize(
    ("data", "line", "reason"),
    [
        (b"a\nb\nc\x00d\n", 3, "NUL byte"),
        (b"\x00", 1, "NUL byte"),
        (b"ok\n\xff\xfe\n", 2, "invalid UTF-8"),
        (b"ok\nok\ncaf\xc3\n", 3, "invalid UTF-8"),
    ],
)
def test_read_config_rejects_bad_bytes(tmp_path: Path, data: bytes, line: int, reason: str) -> None:
    path = tmp_path / "bad.conf"
    path.write_bytes(data)
    with pytest.raises(ConfigFileError) as info:
        read_config(path)
    assert info.value.line == line
    assert info.value.path == str(path)
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_read_config_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.conf"
    path.write_bytes(b"a\n" * 50)
    assert len(read_config(path, max_size=100)) == 50
    with pytest.raises(ConfigFileError, match="larger than 99 bytes") as info:
        read_config(path, max_size=99)
    assert info.value.line is None
    assert persist.DEFAULT_MAX_CONFIG_SIZE == 16 * 1024 * 1024


def test_read_config_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "missing.conf"
    with pytest.raises(ConfigFileError) as info:
        read_config(missing)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert info.value.line is None
    assert str(missing) in str(info.value)
    with pytest.raises(ConfigFileError):
        read_config(tmp_path)  # a directory


# -- save_atomic -----------------------------------------------------------------------


def test_save_creates_private_dir_and_file(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".vproxy" / "vproxy.last"
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        save_atomic(path, "add upstream u\n")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["vproxy.last"]


def test_save_leaves_an_existing_dir_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    save_atomic(tmp_path / "c.conf", "x\n")
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_save_replaces_and_fixes_mode(tmp_path: Path) -> None:
    path = tmp_path / "c.conf"
    path.write_text("old\n")
    path.chmod(0o644)
    save_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["c.conf"]


def test_save_fsyncs_file_then_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.conf"
    synced: list[tuple[bool, bool]] = []  # (is a directory, target exists yet)
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append((stat.S_ISDIR(os.fstat(fd).st_mode), path.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    save_atomic(path, "x\n")
    assert synced == [(False, False), (True, True)]


def test_failed_save_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "c.conf"
    save_atomic(path, "old\n")
    with pytest.raises(UnicodeEncodeError):
        save_atomic(path, "bad \ud800\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["c.conf"]


def test_failed_rename_removes_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a non-empty directory cannot be replaced
    with pytest.raises(IsADirectoryError):
        save_atomic(target, "x\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_default_last_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_last_path() == tmp_path / ".vproxy" / "vproxy.last"
    monkeypatch.setenv("HOME", "")
    assert default_last_path() == Path.home() / ".vproxy" / "vproxy.last"
    monkeypatch.delenv("HOME")
    assert default_last_path().parts[-2:] == (".vproxy", "vproxy.last")


# -- crash safety ----------------------------------------------------------------------

# Shared by the writer process and the checks: version i is a config of varying size.
VERSION_SOURCE = """
def version(i):
    lines = ["# version %d" % i]
    for j in range(50 + i % 400):
        lines.append("add server s%d-%d to server-group g weight %d" % (i, j, j))
    return "\\n".join(lines) + "\\n"
"""

WRITER = (
    """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("persist_under_test", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
target, i = sys.argv[2], int(sys.argv[3])
"""
    + VERSION_SOURCE
    + """
mod.save_atomic(target, version(i))
print("ready", flush=True)
while True:
    i += 1
    mod.save_atomic(target, version(i))
"""
)


def _version_function() -> object:
    namespace: dict[str, object] = {}
    exec(VERSION_SOURCE, namespace)
    return namespace["version"]


def test_kill_9_never_leaves_a_half_file(tmp_path: Path) -> None:
    version = _version_function()
    assert callable(version)
    target = tmp_path / "state" / "vproxy.last"
    rng = random.Random(1234)
    deadline = time.monotonic() + 20
    kills = 0
    for run in range(20):
        if time.monotonic() > deadline:
            break
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, persist.__file__, str(target), str(run * 100_000)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0, 0.03))
            proc.kill()  # SIGKILL: no cleanup, no flush
            kills += 1
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        text = target.read_text(encoding="utf-8")
        first = text.split("\n", 1)[0]
        assert first.startswith("# version "), first
        number = int(first.removeprefix("# version "))
        assert number >= run * 100_000
        assert text == version(number)
        lines = read_config(target)
        assert len(lines) == text.count("\n") - 1
    assert kills >= 5
    leftovers = {p.name for p in target.parent.iterdir()} - {"vproxy.last"}
    assert all(name.startswith(".vproxy.last.") for name in leftovers)
