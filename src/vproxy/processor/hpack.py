"""Sans-IO HPACK (RFC 7541): header compression for the ``h2`` mode.

Owns: the static table, the two dynamic tables of a connection (:class:`Encoder` for
what we send, :class:`Decoder` for what we receive) with their size accounting and
table-size updates, HPACK integers and string literals, and Huffman coding (decoded
by a table over 4-bit steps, encoded when shorter than the raw bytes).

It is on the path of every request four times (decode the client's headers, encode
them to the backend, decode the response, encode it to the client), so both sides
remember results as long as they cannot differ: the decoder keyed by
the header block's bytes (a block that refers only to the static table always decodes
alike, its insertions are replayed; one that refers to the dynamic table only while it
is unchanged), the encoder keyed by the header list object (only lists whose encoding
changed nothing).
A proxy sees the same few blocks over and over, and then a header list costs one
dictionary look-up.

Everything is bounded: a header list stops decoding at ``max_header_list_size``
(:class:`HeaderListTooLarge`), integers at 2**35, strings at the block's end, a
table-size update above what we advertised is refused, and the caches are cleared
when they reach their size.

Must not: do I/O, or know about frames and streams (``vproxy.processor.h2`` does).
"""

from __future__ import annotations

from collections import deque
from typing import Final, cast

from mypy_extensions import mypyc_attr

__all__ = [
    "STATIC_TABLE",
    "Decoder",
    "Encoder",
    "HeaderListTooLarge",
    "HpackError",
    "NeverIndexed",
    "huffman_decode",
    "huffman_encode",
]

Header = tuple[bytes, bytes]


class HpackError(Exception):
    """The peer sent a header block that cannot be decoded (COMPRESSION_ERROR)."""


class HeaderListTooLarge(HpackError):
    """The decoded header list is over ``max_header_list_size``."""


@mypyc_attr(native_class=False)  # a tuple subclass: a plain class when compiled
class NeverIndexed(tuple[bytes, bytes]):
    """A field the sender marked never-indexed (RFC 7541 §6.2.3): it is decoded as
    this type and encoded the same way again, as an intermediary must (§7.1.3)."""

    __slots__ = ()


STATIC_TABLE: Final[tuple[Header, ...]] = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
"""RFC 7541 Appendix A; index 1 is ``STATIC_TABLE[0]``."""

_STATIC_FIELD: Final[dict[Header, int]] = {}
_STATIC_NAME: Final[dict[bytes, int]] = {}
for _i, _f in enumerate(STATIC_TABLE, 1):
    _STATIC_FIELD.setdefault(_f, _i)
    _STATIC_NAME.setdefault(_f[0], _i)

# RFC 7541 Appendix B: (code, bit length) of each byte value, then EOS (256).
_HUFFMAN: Final[tuple[tuple[int, int], ...]] = (
    (0x1FF8, 13),
    (0x7FFFD8, 23),
    (0xFFFFFE2, 28),
    (0xFFFFFE3, 28),
    (0xFFFFFE4, 28),
    (0xFFFFFE5, 28),
    (0xFFFFFE6, 28),
    (0xFFFFFE7, 28),
    (0xFFFFFE8, 28),
    (0xFFFFEA, 24),
    (0x3FFFFFFC, 30),
    (0xFFFFFE9, 28),
    (0xFFFFFEA, 28),
    (0x3FFFFFFD, 30),
    (0xFFFFFEB, 28),
    (0xFFFFFEC, 28),
    (0xFFFFFED, 28),
    (0xFFFFFEE, 28),
    (0xFFFFFEF, 28),
    (0xFFFFFF0, 28),
    (0xFFFFFF1, 28),
    (0xFFFFFF2, 28),
    (0x3FFFFFFE, 30),
    (0xFFFFFF3, 28),
    (0xFFFFFF4, 28),
    (0xFFFFFF5, 28),
    (0xFFFFFF6, 28),
    (0xFFFFFF7, 28),
    (0xFFFFFF8, 28),
    (0xFFFFFF9, 28),
    (0xFFFFFFA, 28),
    (0xFFFFFFB, 28),
    (0x14, 6),
    (0x3F8, 10),
    (0x3F9, 10),
    (0xFFA, 12),
    (0x1FF9, 13),
    (0x15, 6),
    (0xF8, 8),
    (0x7FA, 11),
    (0x3FA, 10),
    (0x3FB, 10),
    (0xF9, 8),
    (0x7FB, 11),
    (0xFA, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1A, 6),
    (0x1B, 6),
    (0x1C, 6),
    (0x1D, 6),
    (0x1E, 6),
    (0x1F, 6),
    (0x5C, 7),
    (0xFB, 8),
    (0x7FFC, 15),
    (0x20, 6),
    (0xFFB, 12),
    (0x3FC, 10),
    (0x1FFA, 13),
    (0x21, 6),
    (0x5D, 7),
    (0x5E, 7),
    (0x5F, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6A, 7),
    (0x6B, 7),
    (0x6C, 7),
    (0x6D, 7),
    (0x6E, 7),
    (0x6F, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xFC, 8),
    (0x73, 7),
    (0xFD, 8),
    (0x1FFB, 13),
    (0x7FFF0, 19),
    (0x1FFC, 13),
    (0x3FFC, 14),
    (0x22, 6),
    (0x7FFD, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2A, 6),
    (0x7, 5),
    (0x2B, 6),
    (0x76, 7),
    (0x2C, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2D, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7A, 7),
    (0x7B, 7),
    (0x7FFE, 15),
    (0x7FC, 11),
    (0x3FFD, 14),
    (0x1FFD, 13),
    (0xFFFFFFC, 28),
    (0xFFFE6, 20),
    (0x3FFFD2, 22),
    (0xFFFE7, 20),
    (0xFFFE8, 20),
    (0x3FFFD3, 22),
    (0x3FFFD4, 22),
    (0x3FFFD5, 22),
    (0x7FFFD9, 23),
    (0x3FFFD6, 22),
    (0x7FFFDA, 23),
    (0x7FFFDB, 23),
    (0x7FFFDC, 23),
    (0x7FFFDD, 23),
    (0x7FFFDE, 23),
    (0xFFFFEB, 24),
    (0x7FFFDF, 23),
    (0xFFFFEC, 24),
    (0xFFFFED, 24),
    (0x3FFFD7, 22),
    (0x7FFFE0, 23),
    (0xFFFFEE, 24),
    (0x7FFFE1, 23),
    (0x7FFFE2, 23),
    (0x7FFFE3, 23),
    (0x7FFFE4, 23),
    (0x1FFFDC, 21),
    (0x3FFFD8, 22),
    (0x7FFFE5, 23),
    (0x3FFFD9, 22),
    (0x7FFFE6, 23),
    (0x7FFFE7, 23),
    (0xFFFFEF, 24),
    (0x3FFFDA, 22),
    (0x1FFFDD, 21),
    (0xFFFE9, 20),
    (0x3FFFDB, 22),
    (0x3FFFDC, 22),
    (0x7FFFE8, 23),
    (0x7FFFE9, 23),
    (0x1FFFDE, 21),
    (0x7FFFEA, 23),
    (0x3FFFDD, 22),
    (0x3FFFDE, 22),
    (0xFFFFF0, 24),
    (0x1FFFDF, 21),
    (0x3FFFDF, 22),
    (0x7FFFEB, 23),
    (0x7FFFEC, 23),
    (0x1FFFE0, 21),
    (0x1FFFE1, 21),
    (0x3FFFE0, 22),
    (0x1FFFE2, 21),
    (0x7FFFED, 23),
    (0x3FFFE1, 22),
    (0x7FFFEE, 23),
    (0x7FFFEF, 23),
    (0xFFFEA, 20),
    (0x3FFFE2, 22),
    (0x3FFFE3, 22),
    (0x3FFFE4, 22),
    (0x7FFFF0, 23),
    (0x3FFFE5, 22),
    (0x3FFFE6, 22),
    (0x7FFFF1, 23),
    (0x3FFFFE0, 26),
    (0x3FFFFE1, 26),
    (0xFFFEB, 20),
    (0x7FFF1, 19),
    (0x3FFFE7, 22),
    (0x7FFFF2, 23),
    (0x3FFFE8, 22),
    (0x1FFFFEC, 25),
    (0x3FFFFE2, 26),
    (0x3FFFFE3, 26),
    (0x3FFFFE4, 26),
    (0x7FFFFDE, 27),
    (0x7FFFFDF, 27),
    (0x3FFFFE5, 26),
    (0xFFFFF1, 24),
    (0x1FFFFED, 25),
    (0x7FFF2, 19),
    (0x1FFFE3, 21),
    (0x3FFFFE6, 26),
    (0x7FFFFE0, 27),
    (0x7FFFFE1, 27),
    (0x3FFFFE7, 26),
    (0x7FFFFE2, 27),
    (0xFFFFF2, 24),
    (0x1FFFE4, 21),
    (0x1FFFE5, 21),
    (0x3FFFFE8, 26),
    (0x3FFFFE9, 26),
    (0xFFFFFFD, 28),
    (0x7FFFFE3, 27),
    (0x7FFFFE4, 27),
    (0x7FFFFE5, 27),
    (0xFFFEC, 20),
    (0xFFFFF3, 24),
    (0xFFFED, 20),
    (0x1FFFE6, 21),
    (0x3FFFE9, 22),
    (0x1FFFE7, 21),
    (0x1FFFE8, 21),
    (0x7FFFF3, 23),
    (0x3FFFEA, 22),
    (0x3FFFEB, 22),
    (0x1FFFFEE, 25),
    (0x1FFFFEF, 25),
    (0xFFFFF4, 24),
    (0xFFFFF5, 24),
    (0x3FFFFEA, 26),
    (0x7FFFF4, 23),
    (0x3FFFFEB, 26),
    (0x7FFFFE6, 27),
    (0x3FFFFEC, 26),
    (0x3FFFFED, 26),
    (0x7FFFFE7, 27),
    (0x7FFFFE8, 27),
    (0x7FFFFE9, 27),
    (0x7FFFFEA, 27),
    (0x7FFFFEB, 27),
    (0xFFFFFFE, 28),
    (0x7FFFFEC, 27),
    (0x7FFFFED, 27),
    (0x7FFFFEE, 27),
    (0x7FFFFEF, 27),
    (0x7FFFFF0, 27),
    (0x3FFFFEE, 26),
    (0x3FFFFFFF, 30),
)

_ENTRY_OVERHEAD: Final = 32
# What is remembered stays small per connection (about 70 KiB at worst, whatever the
# peer sends): few entries, and only small blocks and lists (a proxy sees the same few
# ordinary header lists again and again, not large ones).
_CACHE_ENTRIES: Final = 8
_CACHE_MAX_BLOCK: Final = 1024  # encoded bytes of a remembered block
_CACHE_MAX_LIST: Final = 2048  # decoded size of a remembered header list
_STRING_CACHE_ENTRIES: Final = 256
_STRING_CACHE_MAX_LEN: Final = 64


def _build_decoder() -> tuple[list[int], list[int], list[bool]]:
    """States are the inner nodes of the Huffman tree (0 is the root). For each state
    and next 4 bits: the state after them and the byte completed on the way (at most
    one: codes are at least 5 bits long), -1 for none, -2 for EOS or a dead end."""
    left: list[int] = [-1]
    right: list[int] = [-1]
    leaf: dict[tuple[int, int], int] = {}  # (node, bit) -> symbol
    for sym, (code, length) in enumerate(_HUFFMAN):
        node = 0
        for i in range(length - 1, 0, -1):
            bit = (code >> i) & 1
            kids = right if bit else left
            if kids[node] < 0:
                kids[node] = len(left)
                left.append(-1)
                right.append(-1)
            node = kids[node]
        leaf[(node, code & 1)] = sym
    n = len(left)
    # A state may end a string if it is reached from the root by at most 7 one-bits
    # (the EOS prefix used as padding, RFC 7541 §5.2).
    accept = [False] * n
    node, depth = 0, 0
    while depth < 8:
        accept[node] = True
        node = right[node]
        depth += 1
        if node < 0:
            break
    nxt = [0] * (n * 16)
    out = [-1] * (n * 16)
    for state in range(n):
        for nibble in range(16):
            node, emitted = state, -1
            for i in (3, 2, 1, 0):
                bit = (nibble >> i) & 1
                found = leaf.get((node, bit))
                if found is not None:
                    if found == 256 or emitted >= 0:
                        emitted = -2
                        break
                    emitted = found
                    node = 0
                    continue
                node = (right if bit else left)[node]
                if node < 0:
                    emitted = -2
                    break
            nxt[state * 16 + nibble] = max(node, 0)
            out[state * 16 + nibble] = emitted
    return nxt, out, accept


_DEC_NEXT, _DEC_OUT, _DEC_ACCEPT = _build_decoder()
_ENC_BITS: Final[tuple[str, ...]] = tuple(format(c, f"0{n}b") for c, n in _HUFFMAN[:256])
_ENC_LEN: Final[bytes] = bytes(n for _, n in _HUFFMAN[:256])


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded string literal.

    Raises:
        HpackError: EOS in the string, or padding that is not a prefix of EOS shorter
            than 8 bits.
    """
    nxt, out = _DEC_NEXT, _DEC_OUT
    res = bytearray()
    state = 0
    for b in data:
        i = (state << 4) | (b >> 4)
        sym = out[i]
        state = nxt[i]
        if sym != -1:
            if sym < 0:
                raise HpackError("invalid Huffman code")
            res.append(sym)
        i = (state << 4) | (b & 15)
        sym = out[i]
        state = nxt[i]
        if sym != -1:
            if sym < 0:
                raise HpackError("invalid Huffman code")
            res.append(sym)
    if not _DEC_ACCEPT[state]:
        raise HpackError("invalid Huffman padding")
    return bytes(res)


def huffman_encode(data: bytes) -> bytes:
    """Huffman-code a string (padded with the EOS prefix)."""
    if not data:
        return b""
    bits = "".join([_ENC_BITS[b] for b in data])
    pad = -len(bits) % 8
    return int(bits + "1" * pad, 2).to_bytes((len(bits) + pad) // 8, "big")


def _encode_int(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) whose first byte carries ``first``'s flags."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Encoder:
    """The HPACK encoder of one connection (what we send).

    Every field is indexed (when it fits in a quarter of the table) except
    :class:`NeverIndexed` ones; strings are Huffman-coded when that is shorter.
    """

    __slots__ = (
        "_by_field",
        "_by_name",
        "_cache",
        "_entries",
        "_inserted",
        "_max",
        "_pending",
        "_size",
        "_strings",
    )

    def __init__(self, max_table_size: int = 4096) -> None:
        self._max = max_table_size
        self._size = 0
        self._entries: deque[tuple[bytes, bytes, int]] = deque()  # oldest first
        self._inserted = 0  # entries ever inserted: the newest has number _inserted - 1
        self._by_field: dict[Header, int] = {}
        self._by_name: dict[bytes, int] = {}
        self._pending: list[int] = []  # table-size updates to signal (smallest, last)
        self._cache: dict[int, tuple[list[Header], bytes]] = {}
        self._strings: dict[bytes, bytes] = {}

    @property
    def table_size(self) -> int:
        """Bytes the dynamic table holds (entries count 32 bytes each on top)."""
        return self._size

    @property
    def max_table_size(self) -> int:
        """The table size in use."""
        return self._max

    def set_max_table_size(self, size: int) -> None:
        """Use a table of ``size`` bytes (at most what the peer's
        SETTINGS_HEADER_TABLE_SIZE allows); signalled at the start of the next block."""
        if size == self._max and not self._pending:
            return
        pending = self._pending
        if pending:
            pending[:] = [min(pending[0], size), size]
        else:
            pending[:] = [size, size]
        self._max = size
        self._evict(0)
        self._cache.clear()

    def encode(self, headers: list[Header]) -> bytes:
        """The header block of ``headers``.

        The result of a list that changed nothing in the table is remembered for
        that list object while the table stays as it is: callers must not mutate a
        list after encoding it.
        """
        hit = self._cache.get(id(headers))
        if hit is not None and hit[0] is headers:
            return hit[1]
        out = bytearray()
        changed = False
        if self._pending:
            low, last = self._pending
            out += _encode_int(low, 5, 0x20)
            if last != low:
                out += _encode_int(last, 5, 0x20)
            self._pending = []
            changed = True
        static_field = _STATIC_FIELD
        by_field = self._by_field
        # Items typed as objects: compiled code would unpack a tuple[bytes, bytes]
        # into a plain pair and lose the NeverIndexed type.
        for field in cast("list[object]", headers):
            sensitive = type(field) is NeverIndexed
            name, value = cast("Header", field)
            if not sensitive:
                sidx = static_field.get((name, value))
                if sidx is not None:
                    out += _encode_int(sidx, 7, 0x80)
                    continue
                dyn = by_field.get((name, value))
                if dyn is not None:
                    out += _encode_int(62 + self._inserted - 1 - dyn, 7, 0x80)
                    continue
            name_idx = _STATIC_NAME.get(name)
            if name_idx is None:
                dyn = self._by_name.get(name)
                if dyn is not None:
                    name_idx = 62 + self._inserted - 1 - dyn
            size = len(name) + len(value) + _ENTRY_OVERHEAD
            if sensitive:
                first, bits, index = 0x10, 4, False
            elif size * 4 <= self._max:
                first, bits, index = 0x40, 6, True
            else:
                first, bits, index = 0x00, 4, False
            if name_idx is None:
                out.append(first)
                out += self._string(name)
            else:
                out += _encode_int(name_idx, bits, first)
            out += self._string(value)
            if index:
                self._insert(name, value, size)
                changed = True
        block = bytes(out)
        if changed:
            self._cache.clear()
        elif len(block) <= _CACHE_MAX_BLOCK // 2:  # all indexed: the list is in the tables
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.clear()
            self._cache[id(headers)] = (headers, block)
        return block

    def _string(self, s: bytes) -> bytes:
        strings = self._strings
        hit = strings.get(s)
        if hit is not None:
            return hit
        n = len(s)
        huff_bits = sum([_ENC_LEN[b] for b in s]) if n <= 4096 else 8 * n
        if (huff_bits + 7) // 8 < n:
            h = huffman_encode(s)
            enc = _encode_int(len(h), 7, 0x80) + h
        else:
            enc = _encode_int(n, 7, 0) + s
        if n <= _STRING_CACHE_MAX_LEN:
            if len(strings) >= _STRING_CACHE_ENTRIES:
                strings.clear()
            strings[s] = enc
        return enc

    def _insert(self, name: bytes, value: bytes, size: int) -> None:
        self._evict(size)
        if size > self._max:
            return  # inserting it empties the table, as the decoder does too
        number = self._inserted
        self._inserted += 1
        self._entries.append((name, value, size))
        self._size += size
        self._by_field[(name, value)] = number
        self._by_name[name] = number

    def _evict(self, room: int) -> None:
        entries = self._entries
        while entries and self._size + room > self._max:
            name, value, size = entries.popleft()
            self._size -= size
            number = self._inserted - 1 - len(entries)
            if self._by_field.get((name, value)) == number:
                del self._by_field[(name, value)]
            if self._by_name.get(name) == number:
                del self._by_name[name]


class Decoder:
    """The HPACK decoder of one connection (what we receive).

    Args:
        max_header_list_size: Decoded size (name + value + 32 per field) past which
            decoding stops with :class:`HeaderListTooLarge`.
        max_table_size: Our SETTINGS_HEADER_TABLE_SIZE: the largest table-size
            update the peer may send.
    """

    __slots__ = (
        "_cache",
        "_fixed",
        "_last",
        "_max",
        "_run",
        "_size",
        "_steady",
        "_strings",
        "_table",
        "max_header_list_size",
        "remembered",
        "settings_max",
    )

    def __init__(self, max_header_list_size: int = 65536, max_table_size: int = 4096) -> None:
        self.max_header_list_size = max_header_list_size
        self.settings_max = max_table_size
        self.remembered = False  # the last list decoded may come back for the same block
        self._max = max_table_size
        self._size = 0
        self._table: deque[Header] = deque()  # newest first: index 62 is _table[0]
        # blocks that refer to the table: valid while it is unchanged
        self._cache: dict[bytes, list[Header]] = {}
        # blocks that do not: valid always (with the entries they insert)
        self._fixed: dict[bytes, tuple[list[Header], list[tuple[bytes, bytes, int]]]] = {}
        self._strings: dict[bytes, bytes] = {}
        # a remembered block whose insertions leave the table as it is (see _replay)
        self._steady: tuple[list[Header], list[tuple[bytes, bytes, int]]] | None = None
        self._last: tuple[list[Header], list[tuple[bytes, bytes, int]]] | None = None
        self._run = 0

    @property
    def table_size(self) -> int:
        """Bytes the dynamic table holds (entries count 32 bytes each on top)."""
        return self._size

    @property
    def max_table_size(self) -> int:
        """The table size the peer set last (at most :attr:`settings_max`)."""
        return self._max

    def decode(self, block: bytes) -> list[Header]:
        """Decode one header block.

        The same list object comes back for the same block while the result cannot
        differ: always for a block that refers to no dynamic-table entry (its
        insertions are replayed), else while the table is unchanged and the block
        inserts nothing. Callers must not mutate it.

        Raises:
            HeaderListTooLarge: The list is over ``max_header_list_size``.
            HpackError: The block is malformed.
        """
        hit = self._cache.get(block)
        if hit is not None:
            self.remembered = True
            return hit
        fixed = self._fixed.get(block)
        if fixed is not None:
            if fixed[1] and self._steady is not fixed:
                self._replay(fixed)
            self.remembered = True
            return fixed[0]
        self.remembered = False
        headers: list[Header] = []
        inserts: list[tuple[bytes, bytes, int]] = []
        dynamic = False  # refers to the dynamic table (or resizes it)
        append = headers.append
        table = self._table
        limit = self.max_header_list_size
        total = 0
        changed = False
        pos = 0
        end = len(block)
        get_string = self._string
        while pos < end:
            b = block[pos]
            if b & 0x80:  # indexed field
                idx = b & 0x7F
                pos += 1
                if idx == 0x7F:
                    idx, pos = _decode_int_rest(block, pos, end, idx)
                if idx == 0:
                    raise HpackError("index 0")
                if idx <= 61:
                    field = STATIC_TABLE[idx - 1]
                else:
                    dynamic = True
                    j = idx - 62
                    if j >= len(table):
                        raise HpackError(f"index {idx} out of the table")
                    field = table[j]
                total += len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
                if total > limit:
                    raise HeaderListTooLarge(f"header list over {limit} bytes")
                append(field)
                continue
            if b & 0xE0 == 0x20:  # dynamic table size update
                if headers:
                    raise HpackError("table size update after a field")
                size = b & 0x1F
                pos += 1
                if size == 0x1F:
                    size, pos = _decode_int_rest(block, pos, end, size)
                if size > self.settings_max:
                    raise HpackError(f"table size update to {size} over {self.settings_max}")
                self._max = size
                self._evict(0)
                changed = dynamic = True
                continue
            if b & 0x40:  # literal with incremental indexing
                prefix = 0x3F
                index = True
            else:  # literal without indexing (0x00) or never indexed (0x10)
                prefix = 0x0F
                index = False
            idx = b & prefix
            pos += 1
            if idx == prefix:
                idx, pos = _decode_int_rest(block, pos, end, idx)
            if idx:
                if idx <= 61:
                    name = STATIC_TABLE[idx - 1][0]
                else:
                    dynamic = True
                    j = idx - 62
                    if j >= len(table):
                        raise HpackError(f"name index {idx} out of the table")
                    name = table[j][0]
            else:
                name, pos = get_string(block, pos, end, limit)
            value, pos = get_string(block, pos, end, limit)
            size = len(name) + len(value) + _ENTRY_OVERHEAD
            total += size
            if total > limit:
                raise HeaderListTooLarge(f"header list over {limit} bytes")
            if index:
                field = (name, value)
                self._insert(name, value)
                inserts.append((name, value, size))
                changed = True
                append(field)
            elif b & 0x10:
                append(NeverIndexed((name, value)))
            else:
                append((name, value))
        if changed:
            self._cache.clear()
            self._steady = self._last = None
        if total > _CACHE_MAX_LIST or end > _CACHE_MAX_BLOCK:
            return headers
        self.remembered = True
        if not dynamic:
            fixed_cache = self._fixed
            if len(fixed_cache) >= _CACHE_ENTRIES:
                fixed_cache.clear()
            fixed_cache[block] = (headers, inserts)
        elif not changed:
            cache = self._cache
            if len(cache) >= _CACHE_ENTRIES:
                cache.clear()
            cache[block] = headers
        else:
            self.remembered = False
        return headers

    def _replay(self, fixed: tuple[list[Header], list[tuple[bytes, bytes, int]]]) -> None:
        """Insert again what a remembered block inserts.

        A peer that inserts the same fields on every response and never refers to
        them (nginx) soon fills the table with copies of them: inserting them once
        more then leaves the table as it was (it holds the newest entries that fit,
        and they repeat). Every 8th replay in a row of one block checks for that, and
        from then on the block's replays are skipped until anything else changes the
        table.
        """
        self._steady = None  # the table changes
        run = self._run + 1 if self._last is fixed else 1
        self._last = fixed
        self._run = run
        table = self._table
        before = tuple(table) if run % 8 == 0 else None
        limit = self._max
        for name, value, size in fixed[1]:
            while table and self._size + size > limit:
                old = table.pop()
                self._size -= len(old[0]) + len(old[1]) + _ENTRY_OVERHEAD
            if size <= limit:
                table.appendleft((name, value))
                self._size += size
        self._cache.clear()
        if before is not None and tuple(table) == before:
            self._steady = fixed

    def _insert(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + _ENTRY_OVERHEAD
        self._evict(size)  # an entry larger than the table empties it (RFC 7541 §4.4)
        if size <= self._max:
            self._table.appendleft((name, value))
            self._size += size

    def _string(self, block: bytes, pos: int, end: int, limit: int) -> tuple[bytes, int]:
        if pos >= end:
            raise HpackError("truncated string")
        b = block[pos]
        n = b & 0x7F
        pos += 1
        if n == 0x7F:
            n, pos = _decode_int_rest(block, pos, end, n)
        if n > end - pos:
            raise HpackError("string past the end of the block")
        if n > limit:
            raise HeaderListTooLarge(f"string over {limit} bytes")
        raw = block[pos : pos + n]
        pos += n
        if not b & 0x80:
            return raw, pos
        strings = self._strings
        hit = strings.get(raw)
        if hit is not None:
            return hit, pos
        s = huffman_decode(raw)
        if n <= _STRING_CACHE_MAX_LEN:
            if len(strings) >= _STRING_CACHE_ENTRIES:
                strings.clear()
            strings[raw] = s
        return s, pos

    def _evict(self, room: int) -> None:
        table = self._table
        while table and self._size + room > self._max:
            name, value = table.pop()
            self._size -= len(name) + len(value) + _ENTRY_OVERHEAD


def _decode_int_rest(data: bytes, pos: int, end: int, value: int) -> tuple[int, int]:
    """The continuation bytes of an HPACK integer whose prefix was full."""
    shift = 0
    while True:
        if pos >= end:
            raise HpackError("truncated integer")
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HpackError("integer over 2**35")
