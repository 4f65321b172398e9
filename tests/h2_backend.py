"""An h2c (prior-knowledge HTTP/2) test backend on plain asyncio and python-hyper h2.

Not vproxy code: a bug in vproxy's h2 mode cannot hide in it. Run in the test process
(:func:`start_in_thread`) or as its own process (``python tests/h2_backend.py IDENT``
prints ``port N`` and serves until killed), which keeps it off the proxy's GIL.

Every response carries ``x-backend: IDENT`` and what the backend saw of the request:
``x-seen-xff`` (x-forwarded-for), ``x-seen-client-port``, ``x-seen-authority``.
Paths:

* ``/`` (any other path): body ``IDENT``;
* ``/bytes/N``: N bytes (``0123456789`` repeated), sent as the window allows;
* ``/echo``: the request body back, streamed;
* ``/sha256``: the hex sha256 and length of the request body;
* ``/trailers``: body ``IDENT`` then trailers ``x-trailer: IDENT``;
* ``/reset``: RST_STREAM (INTERNAL_ERROR) instead of a response;
* ``/cut``: headers and 1000 body bytes, then the connection is aborted;
* ``/slow/MS``: body ``IDENT`` after MS milliseconds;
* ``/stats``: ``REQUESTS RESETS``, what this backend process received so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from helpers import release_transports, stop_serving

PATTERN = b"0123456789" * 6554  # 65540 bytes
LIVE: set[H2BackendProtocol] = set()


def pattern_bytes(n: int) -> Iterator[bytes]:
    """The body of ``/bytes/N`` in pieces (what a client should receive)."""
    left = n
    while left > 0:
        piece = PATTERN[: min(left, 65530)]
        left -= len(piece)
        yield piece


class _Req:
    __slots__ = ("body", "hasher", "headers", "length", "pending", "trailers")

    def __init__(self, headers: dict[bytes, bytes]) -> None:
        self.headers = headers
        self.hasher = hashlib.sha256()
        self.length = 0
        self.body = bytearray()
        self.pending: list[bytes] = []
        self.trailers: list[tuple[bytes, bytes]] | None = None


class H2BackendProtocol(asyncio.Protocol):
    def __init__(self, ident: str, stats: dict[str, int], goaway_after: int = 0) -> None:
        self.ident = ident.encode()
        self.stats = stats
        # As nginx's keepalive_requests: after this many requests, a GOAWAY naming the
        # last one; later streams are left unanswered (refused), earlier ones finish.
        self.goaway_after = goaway_after
        self.count = 0
        self.last: int | None = None
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.reqs: dict[int, _Req] = {}
        self.sending: dict[int, _Req] = {}
        self.paused = False
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        LIVE.add(self)
        self.stats["connections"] = self.stats.get("connections", 0) + 1
        self.conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
                SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
            },
        )
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(16 << 20)
        transport.write(self.conn.data_to_send())

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._send_pending()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self._flush()
            if self.transport is not None:
                self.transport.close()
            return
        for ev in events:
            if isinstance(ev, RequestReceived):
                if self.last is not None and ev.stream_id > self.last:
                    self.stats["refused"] = self.stats.get("refused", 0) + 1
                    continue
                self.reqs[ev.stream_id] = _Req(dict(ev.headers))
                self.stats["requests"] = self.stats.get("requests", 0) + 1
                self.count += 1
                if self.goaway_after and self.last is None and self.count >= self.goaway_after:
                    self.last = ev.stream_id
                    self._flush()
                    if self.transport is not None:  # raw: h2 would close its state machine
                        self.transport.write(
                            b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"  # GOAWAY, 8 bytes
                            + ev.stream_id.to_bytes(4, "big")
                            + b"\x00\x00\x00\x00"  # NO_ERROR
                        )
            elif isinstance(ev, DataReceived):
                req = self.reqs.get(ev.stream_id)
                if req is not None:
                    req.hasher.update(ev.data)
                    req.length += len(ev.data)
                    if req.headers.get(b":path") == b"/echo":
                        self._queue(ev.stream_id, req, ev.data)
                with contextlib.suppress(ProtocolError):
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, StreamEnded):
                req = self.reqs.get(ev.stream_id)
                if req is not None:
                    self._respond(ev.stream_id, req)
            elif isinstance(ev, StreamReset):
                self.reqs.pop(ev.stream_id, None)
                self.sending.pop(ev.stream_id, None)
                self.stats["resets"] = self.stats.get("resets", 0) + 1
            elif isinstance(ev, WindowUpdated):
                self._send_pending()
            elif isinstance(ev, ConnectionTerminated):
                pass
        self._flush()

    def _headers(self, req: _Req, status: bytes = b"200") -> list[tuple[bytes, bytes]]:
        h = req.headers
        return [
            (b":status", status),
            (b"x-backend", self.ident),
            (b"x-seen-xff", h.get(b"x-forwarded-for", b"")),
            (b"x-seen-client-port", h.get(b"x-client-port", b"")),
            (b"x-seen-authority", h.get(b":authority", b"")),
        ]

    def _queue(self, sid: int, req: _Req, data: bytes) -> None:
        if sid not in self.sending:
            self.sending[sid] = req
            with contextlib.suppress(ProtocolError):
                self.conn.send_headers(sid, self._headers(req))
        req.pending.append(data)
        self._send_pending()

    def _respond(self, sid: int, req: _Req) -> None:
        path = req.headers.get(b":path", b"/")
        conn = self.conn
        try:
            if path == b"/echo":
                if sid not in self.sending:
                    self.sending[sid] = req
                    conn.send_headers(sid, self._headers(req))
                req.pending.append(b"")  # end marker
                self._send_pending()
            elif path == b"/sha256":
                body = f"{req.hasher.hexdigest()} {req.length}".encode()
                conn.send_headers(sid, self._headers(req))
                conn.send_data(sid, body, end_stream=True)
            elif path.startswith(b"/bytes/"):
                n = int(path[7:])
                conn.send_headers(sid, [*self._headers(req), (b"content-length", b"%d" % n)])
                self.sending[sid] = req
                req.pending.extend(pattern_bytes(n))
                req.pending.append(b"")
                self._send_pending()
            elif path == b"/trailers":
                conn.send_headers(sid, self._headers(req))
                conn.send_data(sid, self.ident)
                conn.send_headers(sid, [(b"x-trailer", self.ident)], end_stream=True)
            elif path == b"/reset":
                conn.reset_stream(sid, ErrorCodes.INTERNAL_ERROR)
            elif path == b"/cut":
                conn.send_headers(sid, self._headers(req))
                conn.send_data(sid, b"x" * 1000)
                self._flush()
                assert self.transport is not None
                asyncio.get_running_loop().call_later(0.05, self.transport.abort)
            elif path == b"/stats":
                conn.send_headers(sid, self._headers(req))
                st = self.stats
                text = b"%d %d" % (st.get("requests", 0), st.get("resets", 0))
                conn.send_data(sid, text, end_stream=True)
            elif path.startswith(b"/slow/"):
                delay = int(path[6:]) / 1000
                asyncio.get_running_loop().call_later(delay, self._late, sid, req)
            else:
                conn.send_headers(sid, self._headers(req))
                conn.send_data(sid, self.ident, end_stream=True)
        except ProtocolError:
            pass
        self.reqs.pop(sid, None)

    def _late(self, sid: int, req: _Req) -> None:
        with contextlib.suppress(ProtocolError, KeyError):
            self.conn.send_headers(sid, self._headers(req))
            self.conn.send_data(sid, self.ident, end_stream=True)
        self._flush()

    def _send_pending(self) -> None:
        conn = self.conn
        for sid, req in list(self.sending.items()):
            while req.pending and not self.paused:
                chunk = req.pending[0]
                if not chunk:
                    with contextlib.suppress(ProtocolError):
                        conn.end_stream(sid)
                    req.pending.clear()
                    del self.sending[sid]
                    break
                try:
                    window = conn.local_flow_control_window(sid)
                except ProtocolError:
                    del self.sending[sid]
                    break
                n = min(window, len(chunk), conn.max_outbound_frame_size)
                if n <= 0:
                    break
                conn.send_data(sid, chunk[:n])
                if n < len(chunk):
                    req.pending[0] = chunk[n:]
                else:
                    req.pending.pop(0)
                self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sending.clear()
        LIVE.discard(self)


async def serve(
    ident: str,
    host: str = "127.0.0.1",
    port: int = 0,
    stats: dict[str, int] | None = None,
    goaway_after: int = 0,
) -> asyncio.AbstractServer:
    """Start the backend on the running loop."""
    counters = stats if stats is not None else {}
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: H2BackendProtocol(ident, counters, goaway_after), host, port
    )


class ThreadBackend:
    """The backend on its own loop thread in the test process."""

    def __init__(self, ident: str, goaway_after: int = 0) -> None:
        self.ident = ident
        self.stats: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            serve(ident, stats=self.stats, goaway_after=goaway_after), self.loop
        )
        self.server = fut.result(10)
        self.port: int = self.server.sockets[0].getsockname()[1]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def close(self) -> None:
        async def _stop() -> None:
            await stop_serving(self.server)
            for proto in list(LIVE):
                if proto.transport is not None and proto.loop is self.loop:
                    proto.transport.abort()
            await asyncio.sleep(0.01)
            await release_transports()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def main(argv: list[str]) -> int:
    ident = argv[1] if len(argv) > 1 else "b"

    async def run() -> None:
        server = await serve(ident)
        port = server.sockets[0].getsockname()[1]
        print(f"port {port}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
