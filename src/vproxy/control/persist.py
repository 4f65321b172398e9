"""Config files: a list of commands, one a line, saved atomically (SPEC §3.3).

Owns writing a config text so that a crash never leaves a half-written file, reading a
config file back as numbered command lines, and where the automatic save goes
(``~/.vproxy/vproxy.last``). Must not parse or run the commands (the command parser and
the executor do), produce the config text (``list config`` does), or touch sockets.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_MAX_CONFIG_SIZE",
    "ConfigFileError",
    "ConfigLine",
    "default_last_path",
    "read_config",
    "save_atomic",
]

DEFAULT_MAX_CONFIG_SIZE = 16 * 1024 * 1024
"""Largest config file :func:`read_config` accepts, in bytes."""

_DIR_MODE = 0o700
_FILE_MODE = 0o600
_BOM = "\ufeff"
_WHITESPACE = " \t\r\n\v\f"


@dataclass(frozen=True, slots=True)
class ConfigLine:
    """One command read from a config file.

    Attributes:
        number: The 1-based line number in the file.
        text: The command, without surrounding whitespace or line end.
    """

    number: int
    text: str


class ConfigFileError(Exception):
    """A config file cannot be read or is not a valid config text.

    Attributes:
        path: The file.
        line: The 1-based line at fault, or ``None`` when it is the file as a whole.
        reason: What is wrong.
    """

    def __init__(self, path: str | os.PathLike[str], line: int | None, reason: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")


def default_last_path() -> Path:
    """Where the current state is saved automatically: ``~/.vproxy/vproxy.last``.

    Returns:
        The path under ``$HOME`` (or the user's home directory when ``$HOME`` is unset
        or empty).
    """
    home = os.environ.get("HOME")
    base = Path(home) if home else Path.home()
    return base / ".vproxy" / "vproxy.last"


def save_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) so that a crash leaves old or new, never half.

    Writes a temporary file in the same directory with mode 0o600, flushes and fsyncs
    it, renames it over ``path`` and fsyncs the directory so the rename itself
    survives a power cut. A missing parent directory is created with mode 0o700.

    Args:
        path: The file to write.
        text: The whole new content.

    Raises:
        UnicodeEncodeError: ``text`` cannot be encoded (nothing is written).
        OSError: The directory or the file cannot be written; ``path`` is unchanged
            and the temporary file is removed.
    """
    target = Path(path)
    data = text.encode("utf-8")
    parent = target.parent
    if not parent.is_dir():
        parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            if hasattr(os, "fchmod"):
                os.fchmod(tmp.fileno(), _FILE_MODE)
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(parent)


def _fsync_dir(directory: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):
        return  # Windows: directories cannot be opened, and renames are durable there
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_config(
    path: str | os.PathLike[str], *, max_size: int = DEFAULT_MAX_CONFIG_SIZE
) -> list[ConfigLine]:
    """Read a config file as the commands it holds.

    Blank lines and comments are skipped: a ``#`` starts a comment only as the first
    non-blank character of a line (elsewhere it belongs to the command). Lines may end
    in LF or CRLF, and a leading UTF-8 byte order mark is ignored.

    Args:
        path: The file to read.
        max_size: Largest file accepted, in bytes.

    Returns:
        The commands with their line numbers, in file order.

    Raises:
        ConfigFileError: The file cannot be read, is larger than ``max_size``, holds
            a NUL byte or is not valid UTF-8 (naming the line).
    """
    try:
        with open(path, "rb") as f:
            data = f.read(max_size + 1)
    except OSError as exc:
        raise ConfigFileError(path, None, exc.strerror or str(exc)) from exc
    if len(data) > max_size:
        raise ConfigFileError(path, None, f"file is larger than {max_size} bytes")
    nul = data.find(b"\0")
    if nul >= 0:
        raise ConfigFileError(path, _line_of(data, nul), "NUL byte in config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(path, _line_of(data, exc.start), "invalid UTF-8") from exc
    if text.startswith(_BOM):
        text = text[len(_BOM) :]
    lines: list[ConfigLine] = []
    for number, raw in enumerate(text.split("\n"), 1):
        command = raw.strip(_WHITESPACE)
        if command and not command.startswith("#"):
            lines.append(ConfigLine(number, command))
    return lines


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1
