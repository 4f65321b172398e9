"""The console controller (SPEC §3.2 "Console (StdIO)"): commands typed on stdin.

Owns one daemon thread that reads command lines from a text stream, hands each to the
executor as :attr:`Origin.STDIO <vproxy.control.executor.Origin>`, and prints the reply
the way redis-cli does (``OK``, ``(integer) 1``, ``(error) ERR ...``). It shows a
``> `` prompt only when stdin is a terminal, refuses over-long lines without buffering
them, and ends at end of input (telling ``on_eof``).

Must not: parse or run commands itself, decide what a console may run (the executor
does), or touch sockets and event loops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol, TextIO

from vproxy.control.executor import Origin
from vproxy.control.reply import ErrorReply, Reply, to_console

__all__ = ["MAX_LINE", "PROMPT", "StdIOController", "StdIOExecutor"]

_log = logging.getLogger("vproxy.control")

MAX_LINE = 64 * 1024
"""Longest command line accepted, in characters, without its line end."""
PROMPT = "> "
"""Shown before each line when stdin is a terminal."""


class StdIOExecutor(Protocol):
    """What the console needs from the executor."""

    def execute_line(self, line: str, origin: Origin) -> Reply:
        """Parse and run one command line; errors come back as an ErrorReply."""
        ...


class StdIOController:
    """Reads commands from ``stdin`` in a thread, prints replies on ``stdout``.

    ``stop()`` cannot interrupt a read that is already waiting: the thread notices at
    the next line or at end of input (it is a daemon thread, so it never holds the
    process up).
    """

    def __init__(
        self,
        executor: StdIOExecutor,
        stdin: TextIO,
        stdout: TextIO,
        *,
        on_eof: Callable[[], None] | None = None,
        max_line: int = MAX_LINE,
    ) -> None:
        """Describe a console; nothing is read until :meth:`start`.

        Args:
            executor: Runs the commands.
            stdin: Where command lines come from.
            stdout: Where replies (and the prompt) go.
            on_eof: Called in the reader thread when input ends (not after
                :meth:`stop`).
            max_line: Longest accepted line, in characters; longer lines are refused
                with an error and skipped.
        """
        if max_line < 1:
            raise ValueError(f"max_line must be at least 1, not {max_line}")
        self.executor = executor
        self.stdin = stdin
        self.stdout = stdout
        self.on_eof = on_eof
        self.max_line = max_line
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vproxy-stdio", daemon=True)

    @property
    def running(self) -> bool:
        """True while the reader thread is alive."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the reader thread.

        Raises:
            RuntimeError: The controller was already started.
        """
        self._thread.start()

    def stop(self) -> None:
        """Ask the reader thread to end; it stops before running another line."""
        self._stopped.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the reader thread to end."""
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the reader thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            tty = self.stdin.isatty()
        except (OSError, ValueError):
            tty = False
        try:
            while not self._stopped.is_set():
                if tty and not self._emit(PROMPT, newline=False):
                    return
                line = self._read_line()
                if line is None:
                    if tty:
                        self._emit("")  # end the prompt's line (Ctrl-D echoes nothing)
                    if not self._stopped.is_set() and self.on_eof is not None:
                        self.on_eof()
                    return
                if self._stopped.is_set():
                    return
                if isinstance(line, ErrorReply):
                    reply: Reply = line
                elif not line.strip():
                    continue
                else:
                    reply = self._execute(line)
                if not self._emit(to_console(reply)):
                    return
        except Exception:
            _log.exception("the console stopped on an unexpected error")

    def _read_line(self) -> str | ErrorReply | None:
        """The next line without its line end, an error for a bad one, None at EOF."""
        limit = self.max_line
        try:
            # +2 leaves room for the CRLF of a line exactly at the limit.
            text = self.stdin.readline(limit + 2)
        except UnicodeDecodeError as exc:
            return ErrorReply(f"the line is not valid text: {exc.reason}")
        except (OSError, ValueError):  # closed or unreadable: end of input
            return None
        if not text:
            return None
        line = text.rstrip("\r\n")
        if len(line) <= limit and (text.endswith("\n") or len(text) <= limit):
            return line
        # Too long: skip the rest of it in bounded pieces.
        while not text.endswith("\n"):
            try:
                text = self.stdin.readline(limit + 2)
            except UnicodeDecodeError:
                continue
            except (OSError, ValueError):
                break
            if not text:
                break
        return ErrorReply(f"line too long: at most {limit} characters")

    def _execute(self, line: str) -> Reply:
        try:
            return self.executor.execute_line(line, Origin.STDIO)
        except Exception as exc:
            _log.exception("the executor failed on a console command")
            return ErrorReply(f"internal error: {type(exc).__name__}", http_status=500)

    def _emit(self, text: str, *, newline: bool = True) -> bool:
        """Write and flush; False when the output is gone (the thread then ends)."""
        try:
            self.stdout.write(text + "\n" if newline else text)
            self.stdout.flush()
        except (OSError, ValueError):
            return False
        return True
