"""The ``h2`` mode of a tcp-lb (SPEC §2): HTTP/2 load balanced per stream.

Owns: the client connection (:class:`H2Frontend`, prior knowledge or TLS with ALPN
``h2``), the pooled h2c connections to backends (one pool per event-loop thread and
server, multiplexed up to each backend's MAX_CONCURRENT_STREAMS, closed when idle for
the tcp-lb's ``timeout``), and relaying each stream between them: stream ids are
re-numbered per backend connection, ``x-forwarded-for``/``x-client-port`` are added,
DATA moves only as fast as the receiving side's window allows and the sender's window
is only re-opened once the bytes were handed onward, resets travel both ways, and a
request no backend can take gets a local 503 (502 when its backend is lost before it
answered).

Must not: parse HTTP/2 itself or decide what is a flood (``vproxy.processor.h2``
does), or hold more than the windows it granted: per stream at most ``stream_window``
bytes each way, per client connection at most its ``connection_window`` upstream, and
a transport's write buffer above its high-water mark stops the data feeding it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Final, cast

from vproxy.app.l7.base import L7Limits, L7Session, choose_server, open_connection
from vproxy.component.server_group import Server
from vproxy.net.event_loop import EventLoop
from vproxy.processor.h2 import (
    BackendFacing,
    ClientFacing,
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    Event,
    H2Error,
    H2Limits,
    H2Side,
    Header,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamReset,
    TooManyStreams,
    TrailersReceived,
    WindowUpdated,
    authority_hint,
    forward_headers,
    local_response,
)

if TYPE_CHECKING:
    from vproxy.app.tcp_lb import TcpLB

__all__ = ["BACKEND_LIMITS", "H2Frontend", "H2Mode", "client_limits"]

_log = logging.getLogger("vproxy.app")

HIGH_WATER: Final = 256 * 1024
"""Write-buffer size of a transport above which nothing more is fed to it."""
LOW_WATER: Final = 64 * 1024
DEFAULT_BACKEND_STREAMS: Final = 100
"""Streams opened on a backend connection before its SETTINGS say how many it takes."""
MAX_BACKEND_STREAMS: Final = 1000
CLOSE_GRACE: Final = 2.0
"""Seconds a closing connection gets to flush its GOAWAY before it is aborted."""

BACKEND_LIMITS: Final = H2Limits(
    max_concurrent_streams=100,
    max_header_list_size=256 * 1024,
    max_headers=1000,
    stream_window=256 * 1024,
    connection_window=16 * 1024 * 1024,
    max_continuation_frames=64,
    control_burst=10_000,
    control_rate=10_000.0,
)
"""What vproxy grants an h2c backend: responses stream through 256 KiB per stream."""


def client_limits(limits: L7Limits) -> H2Limits:
    """The HTTP/2 limits of a client connection under a tcp-lb's L7 limits."""
    return H2Limits(
        max_concurrent_streams=limits.max_concurrent_streams,
        max_header_list_size=limits.max_head_size,
        max_headers=limits.max_headers,
    )


class H2Mode:
    """The ``h2`` protocol of a tcp-lb: owns its backend pools, one per event loop."""

    __slots__ = ("_pools",)

    def __init__(self) -> None:
        self._pools: dict[EventLoop, _LoopPools] = {}

    @property
    def name(self) -> str:
        """The ``protocol`` value."""
        return "h2"

    @property
    def alpn(self) -> tuple[str, ...]:
        """What a TLS listener offers."""
        return ("h2",)

    def new_frontend(self, lb: TcpLB, el: EventLoop, session: L7Session) -> asyncio.Protocol:
        """The protocol of one accepted client connection."""
        pools = self._pools.get(el)
        if pools is None:
            pools = self._pools[el] = _LoopPools()
        return H2Frontend(lb, el, session, pools)

    def close(self) -> None:
        """Stop using the pooled backend connections (thread-safe; each on its loop):
        idle ones close now, the others once their streams are done."""
        for el, pools in list(self._pools.items()):
            try:
                el.call_soon(pools.close_all)
            except Exception:  # the loop is gone, and its connections with it
                _log.debug("h2: loop %s gone before its pools closed", el)

    def backend_connections(self) -> int:
        """Open or connecting backend connections on every loop (for inspection)."""
        return sum(len(p.conns) for lp in list(self._pools.values()) for p in list(lp.values()))


class _Stream:
    """One client stream and, once started, its backend stream.

    ``up`` holds request DATA not yet sent to the backend, ``down`` response DATA not
    yet sent to the client; neither outgrows the window its sender was granted.
    """

    __slots__ = (
        "back",
        "bsid",
        "closed",
        "down",
        "down_done",
        "down_end",
        "down_size",
        "down_trailers",
        "front",
        "headers",
        "hint",
        "replied",
        "retry",
        "sid",
        "tried",
        "tried_again",
        "up",
        "up_done",
        "up_end",
        "up_size",
        "up_trailers",
    )

    def __init__(self, front: H2Frontend, sid: int) -> None:
        self.front = front
        self.sid = sid
        self.back: _BackendConn | None = None
        self.bsid = 0
        self.headers: list[Any] | None = None
        self.retry: list[Any] | None = None  # a bodiless request, kept to send again
        self.tried_again = False
        self.hint: str | None = None
        self.tried: list[Server] = []
        self.up: deque[memoryview] = deque()
        self.up_size = 0
        self.up_end = False
        self.up_trailers: list[Any] | None = None
        self.up_done = False
        self.down: deque[memoryview] = deque()
        self.down_size = 0
        self.down_end = False
        self.down_trailers: list[Any] | None = None
        self.down_done = False
        self.replied = False
        self.closed = False


def _peer(client: tuple[Any, ...]) -> tuple[str, int]:
    try:
        return str(client[0]), int(client[1])
    except (IndexError, TypeError, ValueError):
        return "unknown", 0


class H2Frontend(asyncio.Protocol):
    """One client connection in ``h2`` mode."""

    def __init__(self, lb: TcpLB, el: EventLoop, session: L7Session, pools: _LoopPools) -> None:
        self.lb = lb
        self.pools = pools
        self.el = el
        self.loop = el.loop
        self.session = session
        limits = lb.l7_limits
        self.h2 = ClientFacing(client_limits(limits))
        self.head_timeout = limits.head_timeout / 1000
        self.idle_timeout = lb.timeout / 1000
        self.client_ip, self.client_port = _peer(session.client)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.forwarded: dict[int, tuple[list[Header], list[Header], str | None]] = {}
        self.blocked: set[_Stream] = set()
        self.paused = False
        self.closing = False
        self.goaway_received = False
        self.flush_pending = False
        self.head_timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle_mark = -1

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self.transport = t
        self.session.front.transport = t
        t.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self.h2.initiate()
        self.flush()
        self.head_timer = self.loop.call_later(self.head_timeout, self._head_expired)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.session.front.bytes_in += len(data)
        try:
            events = self.h2.receive_data(data, self.loop.time())
        except H2Error as exc:
            _log.debug("h2 client %s: %s", self.session.client, exc)
            self._close(exc.wire)
            return
        self._handle(events)
        self.flush()

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost cleans up

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        for timer in (self.head_timer, self.idle_timer):
            if timer is not None:
                timer.cancel()
        streams = list(self.streams.values())
        self.streams.clear()
        self.blocked.clear()
        for s in streams:
            self._detach_backend(s, ErrorCode.CANCEL)
        self.session.finish()

    def pause_writing(self) -> None:
        self.paused = True
        self.h2.output_blocked = True
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        self.h2.unblocked()
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()
        self._pump_blocked()
        self.flush()

    # -- output ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what the h2 connection queued."""
        self.flush_pending = False
        data = self.h2.data_to_send()
        t = self.transport
        if data and t is not None and not t.is_closing():
            self.session.front.bytes_out += len(data)
            t.write(data)

    def schedule_flush(self) -> None:
        """Flush once the current batch of work is done."""
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    def _close(self, wire: bytes = b"") -> None:
        if self.closing:
            return
        self.closing = True
        t = self.transport
        if t is None:
            return
        if wire and not t.is_closing():
            self.session.front.bytes_out += len(wire)
            t.write(wire)
        t.close()
        self.loop.call_later(CLOSE_GRACE, t.abort)  # a peer that does not read

    def _head_expired(self) -> None:
        self.head_timer = None
        _log.debug("h2 client %s: no preface and SETTINGS in time", self.session.client)
        self._close(self.h2.goaway(ErrorCode.PROTOCOL_ERROR, b"head timeout"))

    def _arm_idle(self) -> None:
        front = self.session.front
        self.idle_mark = front.bytes_in + front.bytes_out
        self.idle_timer = self.loop.call_later(self.idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        front = self.session.front
        if self.closing:
            return
        if front.bytes_in + front.bytes_out == self.idle_mark:
            self._close(self.h2.goaway(ErrorCode.NO_ERROR, b"idle"))
            return
        self._arm_idle()

    # -- events from the client ------------------------------------------------------------

    def _handle(self, events: list[Event]) -> None:
        resets = (
            {ev.stream_id for ev in events if type(ev) is StreamReset} if len(events) > 1 else ()
        )
        h2 = self.h2
        for ev in events:
            if type(ev) is DataReceived:
                s = self.streams.get(ev.stream_id)
                data = ev.data
                if s is None:
                    h2.acknowledge_received_data(len(data), ev.stream_id)
                    continue
                if data:
                    s.up.append(memoryview(data))
                    s.up_size += len(data)
                if ev.end_stream:
                    s.up_end = True
                self._pump_up(s)
            elif type(ev) is RequestReceived:
                if ev.stream_id not in resets and not self.closing:
                    self._new_stream(ev)
            elif type(ev) is WindowUpdated:
                if ev.stream_id == 0:
                    self._pump_blocked()
                else:
                    s = self.streams.get(ev.stream_id)
                    if s is not None:
                        self.blocked.discard(s)
                        self._pump_down(s)
            elif type(ev) is StreamReset:
                s = self.streams.get(ev.stream_id)
                if s is not None:
                    self._forget(s)
                    self._detach_backend(s, ErrorCode.CANCEL)
            elif type(ev) is TrailersReceived:
                s = self.streams.get(ev.stream_id)
                if s is not None:
                    s.up_trailers = ev.headers
                    s.up_end = True
                    self._pump_up(s)
            elif type(ev) is RemoteSettingsChanged:
                if self.head_timer is not None:
                    self.head_timer.cancel()
                    self.head_timer = None
                if ev.initial_window_changed:
                    self._pump_blocked()
            elif type(ev) is ConnectionTerminated:
                self.goaway_received = True
        if self.goaway_received and not self.streams:
            self._close()

    def _new_stream(self, ev: RequestReceived) -> None:
        s = _Stream(self, ev.stream_id)
        self.streams[s.sid] = s
        s.up_end = ev.end_stream
        headers = ev.headers
        self.session.requests += 1
        if self.h2.too_many_headers(headers):
            self.local_reply(s, 431, "too many header fields\n")
            return
        # The decoder hands out the same list for the same block while its table is
        # unchanged: so are the forwarded list and the hint, and the backend's encoder
        # then finds the list it encoded last time.
        hit = self.forwarded.get(id(headers))
        if hit is None or hit[0] is not headers:
            fwd = forward_headers(headers, self.client_ip, self.client_port)
            hit = (headers, fwd, authority_hint(headers))
            if self.h2.remembered(headers):
                if len(self.forwarded) >= 32:
                    self.forwarded.clear()
                self.forwarded[id(headers)] = hit
        s.headers = hit[1]
        s.hint = hit[2]
        self.dispatch(s)

    def dispatch(self, s: _Stream) -> None:
        """Send a stream to a backend chosen by the upstream (or answer 503)."""
        lb = self.lb
        server = choose_server(lb, self.client_ip, s.hint, s.tried)
        if server is None:
            lb.proxy.failed_no_backend += 1
            self.local_reply(s, 503, "no backend available\n")
            self.schedule_flush()
            return
        self.pools.get_pool(server).submit(s, lb.timeout / 1000)

    # -- streams -----------------------------------------------------------------------------

    def _forget(self, s: _Stream) -> None:
        """Drop a client stream: its buffered request bytes are acknowledged."""
        s.closed = True
        self.streams.pop(s.sid, None)
        self.blocked.discard(s)
        self.h2.stream_done(s.sid)
        if s.up_size and not self.closing:
            self.h2.acknowledge_received_data(s.up_size, s.sid)
        s.up.clear()
        s.up_size = 0
        s.headers = None
        if self.goaway_received and not self.streams:
            self._close()

    def _detach_backend(self, s: _Stream, code: ErrorCode) -> None:
        """The client side of a stream is gone: reset its backend stream."""
        b = s.back
        s.back = None
        if b is not None:
            b.drop(s, code)
        else:
            self.pools.unwait(s)
        s.down.clear()
        s.down_size = 0

    def reset(self, s: _Stream, code: ErrorCode | int) -> None:
        """Reset a client stream (its backend side is done already)."""
        if s.closed:
            return
        self.h2.reset_stream(s.sid, code)
        self._forget(s)
        s.down.clear()
        s.down_size = 0
        self.schedule_flush()

    def local_reply(self, s: _Stream, status: int, text: str) -> None:
        """Answer a stream from here (it has no backend stream)."""
        if s.closed:
            return
        headers, body = local_response(status, text)
        conn = self.h2
        try:
            conn.send_headers(s.sid, headers)
            conn.send_data(s.sid, body, end_stream=True)
            if not s.up_end:  # RFC 9113 §8.1: stop the request body, no error
                conn.reset_stream(s.sid, ErrorCode.NO_ERROR)
        except H2Error:
            conn.reset_stream(s.sid, ErrorCode.INTERNAL_ERROR)
        self._forget(s)
        self.schedule_flush()

    def _pump_blocked(self) -> None:
        blocked = self.blocked
        self.blocked = set()
        for s in blocked:
            self._pump_down(s)

    def _pump_up(self, s: _Stream) -> None:
        b = s.back
        if b is not None:
            b.pump_up(s)

    def _pump_down(self, s: _Stream) -> None:
        """Send a stream's buffered response to the client, as far as windows allow;
        each byte sent re-opens the backend's window by as much."""
        if s.closed:
            return
        conn = self.h2
        b = s.back
        sent = 0
        try:
            end = s.down_end and s.down_trailers is None and not s.down_done
            sent, ended, error = _send_queued(conn, s.sid, s.down, self.paused, end)
            s.down_size -= sent
            if error is not None:
                raise error
            if ended:
                s.down_done = True
            elif s.down:
                self.blocked.add(s)
            elif s.down_end and not s.down_done:
                if s.down_trailers is not None:
                    conn.send_headers(s.sid, s.down_trailers, end_stream=True)
                else:
                    conn.end_stream(s.sid)
                s.down_done = True
        except H2Error:
            if sent and b is not None:
                b.acknowledge(s, sent)
            self.reset(s, ErrorCode.INTERNAL_ERROR)
            self._detach_backend(s, ErrorCode.CANCEL)
            return
        if sent and b is not None:
            b.acknowledge(s, sent)
        self.schedule_flush()
        if s.down_done:
            self._response_done(s)

    def _response_done(self, s: _Stream) -> None:
        """The whole response went out: the stream ends here; a request body still
        coming is stopped (RFC 9113 §8.1) on both sides."""
        b = s.back
        if not s.up_done:
            if not s.up_end:
                self.h2.reset_stream(s.sid, ErrorCode.NO_ERROR)
            s.back = None
            if b is not None:
                b.drop(s, ErrorCode.NO_ERROR if s.up_end else ErrorCode.CANCEL)
        elif b is not None:
            s.back = None
            b.finished(s)
        self._forget(s)

    def send_response_headers(self, s: _Stream, headers: list[Any], end: bool) -> bool:
        """Forward response (or 1xx) headers; ``False`` when the client stream is gone."""
        if s.closed:
            return False
        try:
            self.h2.send_headers(s.sid, headers, end_stream=end)
        except H2Error:
            self.reset(s, ErrorCode.INTERNAL_ERROR)
            return False
        self.schedule_flush()
        if end:
            s.down_end = s.down_done = True
            self._response_done(s)
        return True

    def acknowledge(self, s: _Stream, n: int) -> None:
        """``n`` request bytes of ``s`` went to the backend: the client may send more."""
        if not self.closing:
            self.h2.acknowledge_received_data(n, s.sid)
            self.schedule_flush()


# -- backend connections -----------------------------------------------------------------


class _LoopPools(dict[Server, "_Pool"]):
    """The pools of one event loop, by server (touched only in that loop's thread)."""

    def get_pool(self, server: Server) -> _Pool:
        pool = self.get(server)
        if pool is None:
            pool = self[server] = _Pool(server, self)
        return pool

    def unwait(self, s: _Stream) -> None:
        """Take a stream out of the queue of a backend connection being connected."""
        for pool in self.values():
            for c in pool.conns:
                if s in c.waiting:
                    c.waiting.remove(s)
                    return

    def close_all(self) -> None:
        for pool in list(self.values()):
            for c in list(pool.conns):
                c.drain()


class _Pool:
    """The h2c connections of one event-loop thread to one server."""

    __slots__ = ("conns", "pools", "server")

    def __init__(self, server: Server, pools: _LoopPools) -> None:
        self.server = server
        self.pools = pools
        self.conns: list[_BackendConn] = []

    def submit(self, s: _Stream, idle_timeout: float) -> None:
        """Start ``s`` on a connection with room, opening one when none has."""
        for c in self.conns:
            if c.has_room():
                c.attach(s)
                return
        c = _BackendConn(self, idle_timeout)
        self.conns.append(c)
        c.attach(s)
        c.connect()

    def remove(self, c: _BackendConn) -> None:
        with contextlib.suppress(ValueError):
            self.conns.remove(c)
        if not self.conns and self.pools.get(self.server) is self:
            del self.pools[self.server]


class _BackendConn(asyncio.Protocol):
    """One h2c connection to a backend, shared by the streams of many clients."""

    def __init__(self, pool: _Pool, idle_timeout: float) -> None:
        self.pool = pool
        self.server = pool.server
        self.loop = asyncio.get_running_loop()
        self.idle_timeout = idle_timeout
        self.h2 = BackendFacing(BACKEND_LIMITS)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.waiting: list[_Stream] = []
        self.blocked: set[_Stream] = set()
        self.capacity = DEFAULT_BACKEND_STREAMS
        self.draining = False
        self.closed = False
        self.paused = False
        self.out: list[bytes] = []
        self.flush_pending = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    def has_room(self) -> bool:
        return (
            not self.draining
            and not self.closed
            and len(self.streams) + len(self.waiting) < self.capacity
        )

    # -- connecting ----------------------------------------------------------------------

    def connect(self) -> None:
        self.task = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await open_connection(self.loop, self.server, lambda: self)
        except OSError as exc:
            _log.debug("h2 backend %s: connect failed: %r", self.server.address_text, exc)
            self._connect_failed()
        finally:
            self.task = None

    def _connect_failed(self) -> None:
        self.closed = True
        self.pool.remove(self)
        waiting = self.waiting
        self.waiting = []
        for s in waiting:
            if not s.closed:
                s.tried.append(self.server)
                s.front.dispatch(s)

    def attach(self, s: _Stream) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.transport is None:
            self.waiting.append(s)
        else:
            self._start(s)

    def _start(self, s: _Stream) -> None:
        conn = self.h2
        headers = s.headers
        if headers is None or s.closed:
            return
        end = s.up_end and not s.up and s.up_trailers is None
        try:
            bsid = conn.next_stream_id()
            conn.send_headers(bsid, headers, end_stream=end)
        except TooManyStreams:
            if not self.streams:  # MAX_CONCURRENT_STREAMS 0: another connection is alike
                s.front.local_reply(s, 502, "backend takes no streams\n")
                return
            self.capacity = len(self.streams)
            self.pool.submit(s, self.idle_timeout)
            return
        except H2Error as exc:
            _log.debug("h2 backend %s: request refused: %s", self.server.address_text, exc)
            s.front.local_reply(s, 502, "bad request for the backend\n")
            return
        s.headers = None
        # A request without a body can be sent again if the backend refuses it unseen
        # (GOAWAY above its id, or REFUSED_STREAM; RFC 9113 §8.7): once.
        s.retry = headers if end and not s.tried_again else None
        s.back = self
        s.bsid = bsid
        s.up_done = end
        self.streams[bsid] = s
        s.front.session.server = self.server
        self.take(s)
        if not end:
            self.pump_up(s)

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self.transport = t
        t.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self.server.session_opened(self)
        self.h2.initiate()
        self.out.append(self.h2.data_to_send())
        waiting = self.waiting
        self.waiting = []
        for s in waiting:
            self._start(s)
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        try:
            events = self.h2.receive_data(data, self.loop.time())
        except H2Error as exc:
            _log.info("h2 backend %s: %s", self.server.address_text, exc)
            t = self.transport
            if t is not None:
                t.write(exc.wire)
                t.abort()
            return
        for ev in events:
            self._event(ev)
        self.out.append(self.h2.data_to_send())
        self.flush()
        if self.draining and not self.streams:
            self.close()

    def _event(self, ev: Event) -> None:
        if type(ev) is DataReceived:
            s = self.streams.get(ev.stream_id)
            data = ev.data
            if s is None:
                self.h2.acknowledge_received_data(len(data), ev.stream_id)
                return
            s.front.session.back.bytes_in += len(data) + 9
            if data:
                s.down.append(memoryview(data))
                s.down_size += len(data)
            if ev.end_stream:
                s.down_end = True
            s.front._pump_down(s)
        elif type(ev) is ResponseReceived or type(ev) is InformationalResponseReceived:
            s = self.streams.get(ev.stream_id)
            if s is None:
                return
            s.front.session.back.bytes_in += 9 + ev.size
            end = type(ev) is ResponseReceived and ev.end_stream
            if type(ev) is ResponseReceived:
                s.replied = True
            if not s.front.send_response_headers(s, ev.headers, end):
                self.drop(s, ErrorCode.CANCEL)
        elif type(ev) is WindowUpdated:
            if ev.stream_id == 0:
                self._pump_blocked()
            else:
                s = self.streams.get(ev.stream_id)
                if s is not None:
                    self.blocked.discard(s)
                    self.pump_up(s)
        elif type(ev) is TrailersReceived:
            s = self.streams.get(ev.stream_id)
            if s is not None:
                s.front.session.back.bytes_in += 9 + ev.size
                s.down_trailers = ev.headers
                s.down_end = True
                s.front._pump_down(s)
        elif type(ev) is StreamReset:
            s = self.streams.pop(ev.stream_id, None)
            if s is not None:
                self.blocked.discard(s)
                s.back = None
                if ev.error_code == ErrorCode.REFUSED_STREAM and self._retry(s):
                    self._maybe_idle()
                    return
                s.front.reset(s, ev.error_code)
                self._maybe_idle()
        elif type(ev) is RemoteSettingsChanged:
            if ev.max_concurrent_streams is not None:
                self.capacity = max(1, min(ev.max_concurrent_streams, MAX_BACKEND_STREAMS))
            if ev.initial_window_changed:
                self._pump_blocked()
        elif type(ev) is ConnectionTerminated:
            self.draining = True
            self.pool.remove(self)
            last = ev.last_stream_id
            for bsid in [i for i in self.streams if i > last]:
                s = self.streams.pop(bsid)
                self.blocked.discard(s)
                s.back = None
                if not self._retry(s):
                    s.front.reset(s, ErrorCode.REFUSED_STREAM)

    def _retry(self, s: _Stream) -> bool:
        """Send a refused, unprocessed bodiless request again (on another connection)."""
        request = s.retry
        if request is None or s.closed or s.replied:
            return False
        s.retry = None
        s.tried_again = True
        s.headers = request
        s.bsid = 0
        s.front.dispatch(s)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.remove(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.server.session_closed(self, self.bytes_in, self.bytes_out)
        streams = list(self.streams.values())
        self.streams.clear()
        self.blocked.clear()
        for s in streams:
            s.back = None
            if s.closed:
                continue
            if s.replied:
                s.front.reset(s, ErrorCode.INTERNAL_ERROR)
            else:
                s.front.local_reply(s, 502, "backend connection lost\n")

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump_blocked()

    # -- output ------------------------------------------------------------------------------

    def take(self, s: _Stream) -> None:
        """Queue what ``h2`` produced for ``s``, counted as ``s``'s client's bytes."""
        data = self.h2.data_to_send()
        if data:
            s.front.session.back.bytes_out += len(data)
            self.out.append(data)
            if not self.flush_pending:
                self.flush_pending = True
                self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_pending = False
        out = self.out
        if not out:
            return
        self.out = []
        t = self.transport
        if t is None or t.is_closing():
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        if data:
            self.bytes_out += len(data)
            t.write(data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool.remove(self)
        t = self.transport
        if t is not None and not t.is_closing():
            self.out.append(self.h2.goaway())
            self.flush()
            t.close()

    def drain(self) -> None:
        """Take no new streams; close once the running ones are done."""
        self.draining = True
        self.pool.remove(self)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self.streams or self.waiting or self.closed:
            return
        if self.draining:
            self.close()
        elif self.idle_timer is None:
            self.idle_timer = self.loop.call_later(self.idle_timeout, self._idle)

    def _idle(self) -> None:
        self.idle_timer = None
        if not self.streams and not self.waiting:
            self.close()

    # -- streams -----------------------------------------------------------------------------

    def _pump_blocked(self) -> None:
        blocked = self.blocked
        self.blocked = set()
        for s in blocked:
            self.pump_up(s)

    def pump_up(self, s: _Stream) -> None:
        """Send a stream's buffered request to the backend, as far as windows allow;
        each byte sent re-opens the client's window by as much."""
        if self.transport is None or s.back is not self or s.closed:
            return
        conn = self.h2
        sent = 0
        try:
            end = s.up_end and s.up_trailers is None and not s.up_done
            sent, ended, error = _send_queued(conn, s.bsid, s.up, self.paused, end)
            s.up_size -= sent
            if error is not None:
                raise error
            if ended:
                s.up_done = True
            elif s.up:
                self.blocked.add(s)
            elif s.up_end and not s.up_done:
                if s.up_trailers is not None:
                    conn.send_headers(s.bsid, s.up_trailers, end_stream=True)
                else:
                    conn.end_stream(s.bsid)
                s.up_done = True
        except H2Error:
            self.streams.pop(s.bsid, None)
            s.back = None
            s.front.reset(s, ErrorCode.INTERNAL_ERROR)
            self.take(s)
            self._maybe_idle()
            return
        if sent:
            s.front.acknowledge(s, sent)
        self.take(s)

    def acknowledge(self, s: _Stream, n: int) -> None:
        """``n`` response bytes of ``s`` went to the client: the backend may send more."""
        if self.closed:
            return
        self.h2.acknowledge_received_data(n, s.bsid)
        self.take(s)

    def drop(self, s: _Stream, code: ErrorCode) -> None:
        """The client side of ``s`` is done: reset the backend stream if it is open
        and give back the window its unsent response bytes hold."""
        if self.streams.pop(s.bsid, None) is None:
            with contextlib.suppress(ValueError):
                self.waiting.remove(s)
            return
        self.blocked.discard(s)
        if not self.closed:
            conn = self.h2
            conn.reset_stream(s.bsid, code)
            if s.down_size:
                conn.acknowledge_received_data(s.down_size, s.bsid)
            self.take(s)
        s.down.clear()
        s.down_size = 0
        self._maybe_idle()

    def finished(self, s: _Stream) -> None:
        """``s`` ended in both directions."""
        self.streams.pop(s.bsid, None)
        self.blocked.discard(s)
        self._maybe_idle()


def _send_queued(
    conn: H2Side, sid: int, queue: deque[memoryview], paused: bool, end: bool
) -> tuple[int, bool, H2Error | None]:
    """Send DATA from the front of ``queue`` on stream ``sid`` as far as its window and
    the frame size allow (nothing while ``paused``), the last piece with END_STREAM if
    ``end``: (bytes sent, whether the stream was ended, the error that stopped it, if
    any). What is left in ``queue`` waits for a window update."""
    sent = 0
    if paused or not queue:
        return 0, False, None
    try:
        while queue:
            window = conn.local_flow_control_window(sid)
            if window <= 0:
                break
            chunk = queue[0]
            n = min(window, len(chunk), conn.max_outbound_frame_size)
            if n < len(chunk):
                piece = chunk[:n]
                queue[0] = chunk[n:]
            else:
                piece = queue.popleft()
                if end and not queue:
                    conn.send_data(sid, piece, end_stream=True)
                    return sent + n, True, None
            conn.send_data(sid, piece)
            sent += n
    except H2Error as exc:
        return sent, False, exc
    return sent, False, None
