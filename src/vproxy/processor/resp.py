"""Sans-IO parser for Redis protocol (RESP2) requests, server side.

Owns turning the bytes a Redis client sends into :class:`Request` objects: multibulk
requests (``*N\\r\\n$len\\r\\narg\\r\\n...``) and inline commands (words on one line,
with redis' quoting rules), fed in any segmentation. Must not do I/O, import asyncio,
socket or time, or know what the commands mean; encoding replies belongs to
``vproxy.control.reply``.

The parser never trusts a declared length: a count or bulk length over the configured
limits is refused as soon as its digits show it, and no buffer is sized from a length
before the bytes themselves have arrived.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_BULK",
    "DEFAULT_MAX_INLINE",
    "DEFAULT_MAX_MULTIBULK",
    "Request",
    "RespParser",
    "RespProtocolError",
    "split_inline",
]

DEFAULT_MAX_MULTIBULK = 1024 * 1024
"""Most arguments in one multibulk request (redis: 1024*1024)."""
DEFAULT_MAX_BULK = 512 * 1024 * 1024
"""Largest bulk string argument in bytes (redis ``proto-max-bulk-len``)."""
DEFAULT_MAX_INLINE = 64 * 1024
"""Longest inline command line in bytes, without its line end (redis: 64 KiB)."""

_LIMIT_CEILING = 2**63 - 1
# A length line holds at most this many characters before its CRLF: 19 digits cover
# every limit up to _LIMIT_CEILING, one more for a sign. Longer is refused unread.
_MAX_LENGTH_DIGITS = 20

_CR = 0x0D
_LF = 0x0A
_STAR = 0x2A
_DOLLAR = 0x24
_MINUS = 0x2D
_ZERO = 0x30


@dataclass(frozen=True, slots=True)
class Request:
    """One complete client request.

    Attributes:
        args: The command name followed by its arguments, as raw bytes.
    """

    args: tuple[bytes, ...]


class RespProtocolError(Exception):
    """The peer broke the protocol; reply :attr:`wire` and close the connection.

    Attributes:
        message: What was wrong, in redis' words (without the ``Protocol error:``
            prefix).
        requests: Complete requests that preceded the error in the same
            :meth:`RespParser.receive_data` call, in order. Redis executes these before
            it reports the error, so a caller may too.
    """

    def __init__(self, message: str, requests: tuple[Request, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.requests = requests

    @property
    def wire(self) -> bytes:
        """The RESP error reply for this error, e.g. ``-ERR Protocol error: ...``."""
        text = self.message.replace("\r", " ").replace("\n", " ")
        return b"-ERR Protocol error: " + text.encode("utf-8", "backslashreplace") + b"\r\n"


class _State(enum.Enum):
    IDLE = enum.auto()
    INLINE = enum.auto()
    COUNT = enum.auto()
    BULK_LEN = enum.auto()
    BULK_DATA = enum.auto()
    ERROR = enum.auto()


# How the parser moves (one request at a time; every state waits when it lacks bytes):
#
#   state       input                              -> state
#   IDLE        first byte is '*'                   -> COUNT
#   IDLE        any other first byte                -> INLINE
#   INLINE      a line ending in LF (CR optional)   -> IDLE      (emit, unless empty)
#   COUNT       '*N' CRLF, N in 1..max_multibulk    -> BULK_LEN
#   COUNT       '*0' or '*-1' CRLF                  -> IDLE      (nothing to run)
#   BULK_LEN    '$L' CRLF, L in 0..max_bulk         -> BULK_DATA
#   BULK_DATA   L bytes, CRLF, more args to come    -> BULK_LEN
#   BULK_DATA   L bytes, CRLF, last arg             -> IDLE      (emit)
#   any         a protocol violation                -> ERROR     (raise; stays there)
#
# Each state keeps where its search for a line end stopped (``_scan``), so bytes are
# looked at a bounded number of times however the input is cut, and the buffer is
# compacted once per call (CPython deletes from the front of a bytearray in O(1)).
# Length lines are validated while they are still arriving, so ``*2147483647`` is
# refused before its CRLF does (or does not) come.


class RespParser:
    """Incremental RESP2 request parser (server side), in the h11 style.

    Feed it whatever the socket produced with :meth:`receive_data`; it returns the
    requests completed by those bytes. Once it raises :class:`RespProtocolError` it stays
    broken: every later call raises again.

    Example:
        >>> parser = RespParser()
        >>> parser.receive_data(b"*1\\r\\n$4\\r\\nPI")
        []
        >>> parser.receive_data(b"NG\\r\\nlist tcp-lb\\r\\n")
        [Request(args=(b'PING',)), Request(args=(b'list', b'tcp-lb'))]
    """

    __slots__ = (
        "_args",
        "_buf",
        "_bulk_len",
        "_error",
        "_max_bulk",
        "_max_inline",
        "_max_multibulk",
        "_pos",
        "_remaining",
        "_scan",
        "_state",
    )

    def __init__(
        self,
        max_multibulk: int = DEFAULT_MAX_MULTIBULK,
        max_bulk: int = DEFAULT_MAX_BULK,
        max_inline: int = DEFAULT_MAX_INLINE,
    ) -> None:
        """Create a parser.

        Args:
            max_multibulk: Most arguments accepted in one multibulk request.
            max_bulk: Largest bulk string accepted, in bytes.
            max_inline: Longest inline command line accepted, in bytes.

        Raises:
            ValueError: If a limit is not an int in ``1..2**63-1``.
        """
        self._max_multibulk = _check_limit("max_multibulk", max_multibulk)
        self._max_bulk = _check_limit("max_bulk", max_bulk)
        self._max_inline = _check_limit("max_inline", max_inline)
        self._buf = bytearray()
        self._pos = 0  # start of the unconsumed bytes in _buf
        self._scan = 0  # where the pending line-end search resumes
        self._state = _State.IDLE
        self._args: list[bytes] = []
        self._remaining = 0  # bulk strings still expected in this multibulk request
        self._bulk_len = 0
        self._error: str | None = None

    @property
    def max_multibulk(self) -> int:
        """Most arguments accepted in one multibulk request."""
        return self._max_multibulk

    @property
    def max_bulk(self) -> int:
        """Largest bulk string accepted, in bytes."""
        return self._max_bulk

    @property
    def max_inline(self) -> int:
        """Longest inline command line accepted, in bytes."""
        return self._max_inline

    def set_limits(
        self,
        *,
        max_multibulk: int | None = None,
        max_bulk: int | None = None,
        max_inline: int | None = None,
    ) -> None:
        """Change the limits; ``None`` keeps a limit as it is.

        Typical use is to accept only small requests until the client has
        authenticated (redis allows 10 arguments of 16 KiB then), and to widen the
        limits afterwards. New limits apply to every length line and inline line read
        from now on, including one already partly buffered; lengths already accepted
        are not checked again.

        Args:
            max_multibulk: Most arguments accepted in one multibulk request.
            max_bulk: Largest bulk string accepted, in bytes.
            max_inline: Longest inline command line accepted, in bytes.

        Raises:
            ValueError: If a limit is not an int in ``1..2**63-1``.
        """
        new_multibulk = self._max_multibulk
        new_bulk = self._max_bulk
        new_inline = self._max_inline
        if max_multibulk is not None:
            new_multibulk = _check_limit("max_multibulk", max_multibulk)
        if max_bulk is not None:
            new_bulk = _check_limit("max_bulk", max_bulk)
        if max_inline is not None:
            new_inline = _check_limit("max_inline", max_inline)
        self._max_multibulk = new_multibulk
        self._max_bulk = new_bulk
        self._max_inline = new_inline

    def receive_data(self, data: bytes) -> list[Request]:
        """Feed bytes received from the client.

        Args:
            data: The next bytes of the stream, of any length (``b""`` is fine).

        Returns:
            The requests completed by these bytes, in order; empty when more bytes are
            needed.

        Raises:
            RespProtocolError: The stream is not valid RESP or breaks a limit. Requests
                completed earlier in the same call are in its ``requests`` attribute.
        """
        if self._error is not None:
            raise RespProtocolError(self._error)
        self._buf += data
        out: list[Request] = []
        try:
            self._parse(out)
        except RespProtocolError as exc:
            self._state = _State.ERROR
            self._error = exc.message
            self._buf = bytearray()
            self._pos = self._scan = 0
            self._args = []
            exc.requests = tuple(out)
            raise
        if self._pos:
            del self._buf[: self._pos]
            self._scan = max(0, self._scan - self._pos)
            self._pos = 0
        return out

    # -- the state machine ------------------------------------------------------------

    def _parse(self, out: list[Request]) -> None:
        buf = self._buf
        while True:
            state = self._state
            if state is _State.BULK_DATA:
                need = self._bulk_len + 2
                start = self._pos
                if len(buf) - start < need:
                    return
                end = start + self._bulk_len
                if buf[end] != _CR or buf[end + 1] != _LF:
                    raise RespProtocolError("bulk string not terminated by CRLF")
                self._args.append(bytes(buf[start:end]))
                self._pos = end + 2
                self._remaining -= 1
                if self._remaining:
                    self._state = _State.BULK_LEN
                else:
                    out.append(Request(tuple(self._args)))
                    self._args = []
                    self._state = _State.IDLE
            elif state is _State.BULK_LEN:
                if self._pos >= len(buf):
                    return
                first = buf[self._pos]
                if first != _DOLLAR:
                    raise RespProtocolError(f"expected '$', got '{_show_byte(first)}'")
                length = self._read_length(self._max_bulk, "invalid bulk length", False)
                if length is None:
                    return
                self._bulk_len = length
                self._state = _State.BULK_DATA
            elif state is _State.IDLE:
                if self._pos >= len(buf):
                    return
                self._scan = self._pos
                self._state = _State.COUNT if buf[self._pos] == _STAR else _State.INLINE
            elif state is _State.COUNT:
                count = self._read_length(self._max_multibulk, "invalid multibulk length", True)
                if count is None:
                    return
                if count <= 0:
                    self._state = _State.IDLE  # *0 and *-1: an empty request, skipped
                else:
                    self._remaining = count
                    self._args = []
                    self._state = _State.BULK_LEN
            elif state is _State.INLINE:
                if not self._read_inline(out):
                    return
            else:  # _State.ERROR is unreachable: receive_data raises first
                raise RespProtocolError(self._error or "parser in error state")

    def _read_length(self, limit: int, message: str, allow_null: bool) -> int | None:
        """Read ``<type byte><digits>CRLF`` at ``_pos``; ``None`` if incomplete."""
        buf = self._buf
        digits_start = self._pos + 1
        window_end = digits_start + _MAX_LENGTH_DIGITS + 2
        search_from = max(self._scan, digits_start)
        crlf = buf.find(b"\r\n", search_from, window_end)
        if crlf < 0:
            # Validate what has arrived so far, so an impossible length fails now.
            tail = len(buf)
            if tail >= window_end:
                raise RespProtocolError(message)  # no CRLF where one had to be
            if tail > digits_start and buf[tail - 1] == _CR:
                tail -= 1
            if not _length_prefix_ok(bytes(buf[digits_start:tail]), limit, allow_null):
                raise RespProtocolError(message)
            self._scan = max(digits_start, len(buf) - 1)
            return None
        value = _parse_length(bytes(buf[digits_start:crlf]), limit, allow_null)
        if value is None:
            raise RespProtocolError(message)
        self._pos = crlf + 2
        self._scan = self._pos
        return value

    def _read_inline(self, out: list[Request]) -> bool:
        """Read one inline line at ``_pos``; ``False`` if it is not complete yet."""
        buf = self._buf
        start = self._pos
        lf = buf.find(b"\n", self._scan)
        if lf < 0:
            self._scan = len(buf)
            pending = len(buf) - start
            if buf[-1] == _CR:
                pending -= 1  # may be the first half of the line end
            if pending > self._max_inline:
                raise RespProtocolError("too big inline request")
            return False
        end = lf - 1 if lf > start and buf[lf - 1] == _CR else lf
        if end - start > self._max_inline:
            raise RespProtocolError("too big inline request")
        line = bytes(buf[start:end])
        self._pos = self._scan = lf + 1
        self._state = _State.IDLE
        args = split_inline(line)
        if args:
            out.append(Request(args))
        return True


# -- inline commands -----------------------------------------------------------------

# C isspace(): what separates words and may follow a closing quote.
_SPACE = frozenset(b" \t\n\v\f\r")
# What ends an unquoted word in redis' sdssplitargs (\v and \f do not).
_WORD_END = frozenset(b" \t\n\r")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {ord("n"): _LF, ord("r"): _CR, ord("t"): 0x09, ord("b"): 0x08, ord("a"): 0x07}
_QUOTE = 0x22
_SQUOTE = 0x27
_BACKSLASH = 0x5C
_END = -1


def split_inline(line: bytes) -> tuple[bytes, ...]:
    """Split one inline command line into words the way redis does (``sdssplitargs``).

    Words are separated by whitespace. A word may be (or contain) a double-quoted part
    with the escapes ``\\n \\r \\t \\b \\a \\\\ \\" \\xHH`` (any other escaped character
    stands for itself), or a single-quoted part where only ``\\'`` is an escape. A
    closing quote must be followed by whitespace or the end of the line.

    Args:
        line: One line without its line end.

    Returns:
        The words; empty for a blank line.

    Raises:
        RespProtocolError: Unbalanced quotes, a closing quote followed by a non-space,
            or a NUL byte (redis would silently drop everything after it).
    """
    if b"\0" in line:
        raise RespProtocolError("NUL byte in inline request")
    if b'"' not in line and b"'" not in line and b"\v" not in line and b"\f" not in line:
        return tuple(line.split())
    words: list[bytes] = []
    n = len(line)
    i = 0
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return tuple(words)
        word = bytearray()
        in_double = in_single = False
        while True:
            c = line[i] if i < n else _END
            nxt = line[i + 1] if i + 1 < n else _END
            if in_double:
                if (
                    c == _BACKSLASH
                    and nxt == 0x78  # 'x'
                    and i + 3 < n
                    and line[i + 2] in _HEX
                    and line[i + 3] in _HEX
                ):
                    word.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == _BACKSLASH and nxt != _END:
                    i += 1
                    word.append(_ESCAPES.get(nxt, nxt))
                elif c == _QUOTE:
                    if nxt != _END and nxt not in _SPACE:
                        raise RespProtocolError("unbalanced quotes in request")
                    i += 1
                    break
                elif c == _END:
                    raise RespProtocolError("unbalanced quotes in request")
                else:
                    word.append(c)
            elif in_single:
                if c == _BACKSLASH and nxt == _SQUOTE:
                    i += 1
                    word.append(_SQUOTE)
                elif c == _SQUOTE:
                    if nxt != _END and nxt not in _SPACE:
                        raise RespProtocolError("unbalanced quotes in request")
                    i += 1
                    break
                elif c == _END:
                    raise RespProtocolError("unbalanced quotes in request")
                else:
                    word.append(c)
            elif c == _END or c in _WORD_END:
                i += 1
                break
            elif c == _QUOTE:
                in_double = True
            elif c == _SQUOTE:
                in_single = True
            else:
                word.append(c)
            i += 1
        words.append(bytes(word))


# -- helpers -------------------------------------------------------------------------


def _check_limit(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, not {type(value).__name__}")
    if not 1 <= value <= _LIMIT_CEILING:
        raise ValueError(f"{name} must be in 1..{_LIMIT_CEILING}, not {value}")
    return value


def _length_prefix_ok(digits: bytes, limit: int, allow_null: bool) -> bool:
    """Whether ``digits`` can still grow into a length that :func:`_parse_length` takes."""
    if not digits:
        return True
    if digits[0] == _MINUS:
        return allow_null and digits in (b"-", b"-1")
    if not digits.isdigit():
        return False
    if digits[0] == _ZERO:
        return len(digits) == 1
    return int(digits) <= limit


def _parse_length(digits: bytes, limit: int, allow_null: bool) -> int | None:
    """A complete length: ``0``, ``[1-9][0-9]*`` up to ``limit``, or ``-1`` if allowed.

    Signs, leading zeros, spaces and other negatives are refused, as redis'
    ``string2ll`` refuses them.
    """
    if not digits or len(digits) > _MAX_LENGTH_DIGITS:
        return None
    if digits == b"-1":
        return -1 if allow_null else None
    if not digits.isdigit() or (digits[0] == _ZERO and len(digits) > 1):
        return None
    value = int(digits)
    return value if value <= limit else None


def _show_byte(b: int) -> str:
    return chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}"
