"""The ``http/1.x`` mode of a tcp-lb: request-level load balancing (SPEC §2).

Owns: one client connection's requests, one at a time in the order they came
(pipelined requests wait, parsed, until the previous response is complete), each sent
to a server the upstream picks with the request's Host as the hint, over keep-alive
backend connections pooled per event loop and server; the forwarding headers
(``X-Forwarded-For``, ``X-Client-Port``); bodies streamed both ways with backpressure
(never buffered whole); ``Expect: 100-continue`` passed through; an upgrade answered
with 101 (WebSocket) turning both connections into a plain relay; the error answers
(400/408/414/417/431/501/505 for the client's faults, 502/503/504 for the backends');
the head deadline, the idle timeout; per-request access-log lines and status counters.

Must not: judge HTTP framing itself (``processor/http1.py`` does, strictly; a request
it refuses never reaches a backend), choose servers (the upstream does), or keep a
backend connection whose response framing was broken.

Backend connections are reused only after a complete response with keep-alive, and
only when the request was sent whole. A reused connection that fails before any
response byte (the server closed it while idle) is retried once on a fresh one when
the request had no body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, cast

from vproxy.app.l7.base import L7Session, choose_server, open_connection
from vproxy.component.server_group import Server
from vproxy.net.event_loop import EventLoop
from vproxy.processor.http1 import (
    AddedFields,
    BodyChunk,
    BodyKind,
    Event,
    HttpError,
    HttpLimits,
    RemoteProtocolError,
    RequestEnd,
    RequestHead,
    RequestParser,
    ResponseEnd,
    ResponseHead,
    ResponseParser,
    State,
    encode_head,
    encode_response_head,
)

if TYPE_CHECKING:
    from vproxy.app.tcp_lb import TcpLB

__all__ = ["Http1Mode", "error_response"]

_log = logging.getLogger("vproxy.app")
_monotonic: Final = time.monotonic
_BK_NONE: Final = BodyKind.NONE

MAX_IDLE_PER_SERVER: Final = 64
"""Idle backend connections kept per event loop and server."""
MAX_POOL_IDLE_S: Final = 15.0
"""An idle backend connection is closed after this long (shorter than the usual
backend keep-alive timeouts, so a reused connection is rarely one the server just
closed), or after the tcp-lb's timeout when that is shorter."""
HIGH_WATER: Final = 64 * 1024
"""Bytes waiting in a transport's write buffer before its source stops being read."""
MAX_QUEUED_BYTES: Final = 256 * 1024
"""Body bytes of the client held while the backend connection is being opened."""
MIN_BODY_RATE: Final = 500
"""Bytes per second a request body must keep up on average (after the head deadline's
grace): a body's deadline starts at head-deadline after its head and moves one second
later per 500 bytes received (the rule of Apache's mod_reqtimeout), so a slow-body
client (R.U.D.Y.) is cut while a slow but real upload goes on."""

_PHRASES: Final = {
    408: "Request Timeout",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

# Reasons to stop reading the client (a bit set).
_P_BACKEND: Final = 1  # the backend's write buffer is full
_P_QUEUE: Final = 2  # requests or body bytes queued behind the current exchange
_P_RELAY: Final = 4  # relay: the backend's write buffer is full (after an upgrade)


def error_response(status: int) -> bytes:
    """A complete ``Connection: close`` response the proxy itself gives."""
    phrase = _PHRASES.get(status, "Error")
    body = f"{status} {phrase}\n".encode("ascii")
    return (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii") + body


class Http1Mode:
    """The ``http/1.x`` mode: one per tcp-lb (it owns that tcp-lb's backend pools)."""

    name = "http/1.x"
    alpn: tuple[str, ...] = ("http/1.1",)

    def __init__(self) -> None:
        self._pools: dict[EventLoop, _Pool] = {}

    def close(self) -> None:
        """Close the idle backend connections (thread-safe; each on its own loop)."""
        for el, pool in list(self._pools.items()):
            el.call_soon(pool.close_all)

    @property
    def idle(self) -> int:
        """Idle backend connections in the pools now."""
        return sum(len(p) for p in list(self._pools.values()))

    def new_frontend(self, lb: TcpLB, el: EventLoop, session: L7Session) -> asyncio.Protocol:
        """The protocol for one accepted client connection."""
        pool = self._pools.get(el)
        if pool is None:
            pool = self._pools[el] = _Pool(el.loop)
        return Http1Frontend(lb, pool, session)


class _Pool:
    """Idle keep-alive backend connections of one event loop, by server.

    One sweep timer per pool (not one per connection) closes connections idle past
    their deadline; it runs about once a second while the pool is not empty.
    """

    __slots__ = ("_idle", "_loop", "_sweep")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._idle: dict[Server, list[_Backend]] = {}
        self._sweep: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return sum(len(c) for c in list(self._idle.values()))

    def close_all(self) -> None:
        for conns in list(self._idle.values()):
            for conn in list(conns):
                conn.close()

    def take(self, server: Server) -> _Backend | None:
        conns = self._idle.get(server)
        while conns:
            conn = conns.pop()
            conn.pool = None
            if not conn.closed:
                return conn
        return None

    def put(self, conn: _Backend, idle_s: float, now: float) -> None:
        """Keep ``conn`` for reuse for ``idle_s`` (at most :data:`MAX_POOL_IDLE_S`) from
        ``now`` (the loop's time)."""
        conns = self._idle.get(conn.server)
        if conns is None:
            conns = self._idle[conn.server] = []
        elif len(conns) >= MAX_IDLE_PER_SERVER:
            conn.close()
            return
        conns.append(conn)
        conn.frontend = None
        conn.pool = self
        conn.idle_until = now + idle_s
        if self._sweep is None:
            self._sweep = self._loop.call_later(1.0, self._expire)

    def discard(self, conn: _Backend) -> None:
        conns = self._idle.get(conn.server)
        if conns is not None and conn in conns:
            conns.remove(conn)

    def _expire(self) -> None:
        self._sweep = None
        now = self._loop.time()
        for server, conns in list(self._idle.items()):
            for conn in [c for c in conns if c.idle_until <= now]:
                conn.close()  # discards itself
            if not conns:
                del self._idle[server]
        if self._idle:
            self._sweep = self._loop.call_later(1.0, self._expire)


class _Backend(asyncio.Protocol):
    """One backend connection: attached to one client's exchange, or idle in a pool.

    While idle it keeps reading: a server never speaks first, so bytes or an EOF on
    an idle connection drop it.
    """

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "closed",
        "frontend",
        "got_bytes",
        "idle_until",
        "parser",
        "pool",
        "reused",
        "server",
        "transport",
    )

    def __init__(self, server: Server, limits: HttpLimits) -> None:
        self.server = server
        self.parser = ResponseParser(limits)
        self.transport: asyncio.Transport | None = None
        self.frontend: Http1Frontend | None = None
        self.closed = False
        self.reused = False
        self.got_bytes = False  # response bytes in the current exchange
        self.bytes_in = 0
        self.bytes_out = 0
        self.pool: _Pool | None = None
        self.idle_until = 0.0

    def close(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()
        self._gone()

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and data:
            self.bytes_out += len(data)
            t.write(data)

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self.transport = t
        t.set_write_buffer_limits(high=HIGH_WATER)
        self.server.session_opened(self)

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        fe = self.frontend
        if fe is None:  # idle: a server never speaks first
            self.close()
            return
        self.got_bytes = True
        fe.backend_data(self, data)

    def eof_received(self) -> bool:
        fe = self.frontend
        if fe is None:
            self.close()
            return False
        fe.backend_eof(self)
        return True

    def pause_writing(self) -> None:
        fe = self.frontend
        if fe is not None:
            fe.pause_client(_P_BACKEND if not fe.relaying else _P_RELAY)

    def resume_writing(self) -> None:
        fe = self.frontend
        if fe is not None:
            fe.resume_client(_P_BACKEND if not fe.relaying else _P_RELAY)

    def connection_lost(self, exc: Exception | None) -> None:
        fe = self.frontend
        self._gone()
        if fe is not None:
            fe.backend_lost(self)

    def _gone(self) -> None:
        if self.closed:
            return
        self.closed = True
        pool = self.pool
        if pool is not None:
            self.pool = None
            pool.discard(self)
        self.server.session_closed(self, self.bytes_in, self.bytes_out)


class Http1Frontend(asyncio.Protocol):
    """One client connection in ``http/1.x`` mode."""

    def __init__(self, lb: TcpLB, pool: _Pool, session: L7Session) -> None:
        self.lb = lb
        self.pool = pool
        self.session = session
        self.loop = session._loop
        limits = lb.l7_limits
        self.head_timeout = limits.head_timeout / 1000
        self.idle_timeout = lb.timeout / 1000
        self.pool_idle = min(self.idle_timeout, MAX_POOL_IDLE_S)
        self.max_pipelined = limits.max_pipelined
        max_line = min(8 * 1024, limits.max_head_size - 4)
        self.http_limits = HttpLimits(
            max_line=max_line, max_head=limits.max_head_size, max_headers=limits.max_headers
        )
        self.parser = RequestParser(self.http_limits)
        client = session.client
        self.source: str = str(client[0])
        self.forwarded = AddedFields(
            (
                (b"X-Forwarded-For", self.source.encode("ascii")),
                (b"X-Client-Port", str(client[1]).encode("ascii")),
            )
        )
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = 0  # _P_* bits
        self.relaying = False
        self.client_eof = False
        # Parsed events not acted on yet (the current request's and pipelined ones),
        # and a client error to answer once they are done.
        self.events: deque[Event] = deque()
        self.queued_bytes = 0
        self.queued_heads = 0
        self.error: HttpError | None = None
        # The current exchange.
        self.head: RequestHead | None = None
        self.backend: _Backend | None = None
        self.tried: list[Server] = []
        self.held: list[bytes] = []  # body bytes before the backend is connected
        self.request_done = False
        self.response_started = False  # final head written to the client
        self.response_complete_waiting = False
        self.backend_keep_alive = False
        self.close_after = False
        self.status = 0
        self.started = 0.0
        self.bytes_to_client = 0
        self.batch: list[bytes] | None = None  # client output held while one read is handled
        self.connect_task: asyncio.Task[None] | None = None
        # Deadlines: one timer, moved lazily.
        self.head_deadline: float | None = None
        self.body_deadline: float | None = None
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # when self.timer fires

    # -- asyncio.Protocol (client side) -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self.transport = t
        self.session.front.transport = t
        t.set_write_buffer_limits(high=HIGH_WATER)
        now = self.loop.time()
        self.head_deadline = now + self.head_timeout
        self.deadline = now + self.idle_timeout
        self._arm(min(self.head_deadline, self.deadline))

    def data_received(self, data: bytes) -> None:
        self.session.front.bytes_in += len(data)
        now = self.loop.time()
        self.deadline = now + self.idle_timeout
        if self.relaying:
            b = self.backend
            if b is not None:
                b.write(data)
                self.session.back.bytes_out += len(data)
            return
        if self.error is not None:
            return  # a refused request: nothing more is read
        idle = self.head is None and not self.events
        if idle and self.head_deadline is None:
            when = self.head_deadline = now + self.head_timeout
            if self.timer is None or self.timer_at > when:
                self._arm(when)
        try:
            events = self.parser.receive_data(data)
        except HttpError as exc:
            events = list(exc.events)
            self.error = exc
        if idle and len(events) == 2 and self.error is None:
            # The usual read: one whole request without a body, nothing waiting. What
            # _queue and _pump do with it, without the queue: start it, then its end.
            head = events[0]
            if type(head) is RequestHead and type(events[1]) is RequestEnd:
                self._start(head, now)
                if not self.closed:
                    self.request_done = True
                    self.body_deadline = None
                    if self.response_complete_waiting:
                        self._finish_exchange()
                    elif self.paused & _P_QUEUE:
                        self._pump()
                return
        self._queue(events)
        self._pump()

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.relaying:
            b = self.backend
            if b is not None and b.transport is not None and b.transport.can_write_eof():
                b.transport.write_eof()
            return True
        if self.error is None:
            try:
                self._queue(self.parser.receive_eof())
            except HttpError as exc:
                self._queue(list(exc.events))
                self.error = exc
        if self.head is None and not self.events and self.error is None:
            return False  # between requests: close
        self._pump()
        return True

    def pause_writing(self) -> None:
        b = self.backend
        if b is not None and b.transport is not None:
            b.transport.pause_reading()

    def resume_writing(self) -> None:
        b = self.backend
        if b is not None and b.transport is not None and not b.closed:
            b.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        task = self.connect_task
        if task is not None:
            task.cancel()
        b = self.backend
        if b is not None:
            self.backend = None
            b.frontend = None
            b.close()  # mid-exchange: the response cannot be reused
        if self.head is not None:
            self._log_request()
        self.session.finish()

    # -- flow control -----------------------------------------------------------------------
    def pause_client(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def resume_client(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # -- requests ---------------------------------------------------------------------------
    def _queue(self, events: Sequence[Event]) -> None:
        if not events:
            return
        for ev in events:
            kind = type(ev)  # the parser's events are these classes exactly
            if kind is BodyChunk:
                self.queued_bytes += len(ev.data)  # type: ignore[union-attr]
            elif kind is RequestHead:
                self.queued_heads += 1
        self.events.extend(events)
        if self.queued_bytes > MAX_QUEUED_BYTES or self.queued_heads > self.max_pipelined:
            self.pause_client(_P_QUEUE)

    def _pump(self) -> None:
        """Act on queued events of the current request (and start the next one)."""
        events = self.events
        while events and not self.closed:
            if self.head is not None and self.request_done:
                return  # the response is still coming: later requests wait
            ev = events.popleft()
            kind = type(ev)
            if kind is BodyChunk:
                data: bytes = ev.data  # type: ignore[union-attr]
                self.queued_bytes -= len(data)
                if self.body_deadline is not None:
                    self.body_deadline += len(data) / MIN_BODY_RATE
                if self.request_done:
                    continue  # the response came early; the rest of this body is dropped
                b = self.backend
                if b is not None:
                    b.write(data)
                    self.session.back.bytes_out += len(data)
                else:
                    self.held.append(data)
            elif kind is RequestHead:
                self.queued_heads -= 1
                self._start(ev, self.loop.time())  # type: ignore[arg-type]
            elif kind is RequestEnd:
                self.request_done = True
                self.body_deadline = None
                if self.response_complete_waiting:
                    self._finish_exchange()
        if self.paused & _P_QUEUE and (
            self.queued_bytes <= MAX_QUEUED_BYTES // 2 and self.queued_heads <= self.max_pipelined
        ):
            self.resume_client(_P_QUEUE)
        if events or self.closed:
            return
        if self.head is None:
            if self.error is not None:
                self._refuse(self.error)
            elif self.client_eof:
                self._close_client()
        elif self.error is not None and not self.request_done:
            # The body of the request being forwarded broke: its head went out, so
            # that backend connection is dropped; the client gets the refusal unless
            # a response has begun.
            b = self.backend
            if b is not None:
                self.backend = None
                b.frontend = None
                b.close()
            task = self.connect_task
            if task is not None:
                task.cancel()
                self.connect_task = None
            if self.response_started:
                self._close_client()
            else:
                self._refuse(self.error)

    def _start(self, head: RequestHead, now: float) -> None:
        """Begin the exchange of ``head`` (``now``: the loop's time)."""
        self.head = head
        self.head_deadline = None
        self.request_done = False
        self.response_started = False
        self.response_complete_waiting = False
        self.close_after = not head.keep_alive
        self.status = 0
        self.bytes_to_client = 0
        # (the duration is for the access log only)
        self.started = _monotonic() if self.lb.access_log is not None else 0.0
        self.tried = []
        self.session.requests += 1
        when = self.deadline = now + self.idle_timeout
        if head.body_kind is _BK_NONE:
            self.body_deadline = None
            if self.timer is None or self.timer_at > when:
                self._arm(when)
        else:
            self.body_deadline = now + self.head_timeout
            self._arm(min(self.deadline, self.body_deadline))
        self._dispatch()

    def _dispatch(self) -> None:
        head = self.head
        assert head is not None
        while (server := choose_server(self.lb, self.source, head.host, self.tried)) is not None:
            self.tried.append(server)
            conn = self.pool.take(server)
            if conn is not None:
                conn.reused = True
                self._attach(conn)
                return
            self.connect_task = self.loop.create_task(self._connect(server))
            return
        self.lb.proxy.failed_no_backend += 1
        self._gateway_error(503)

    async def _connect(self, server: Server) -> None:
        limits = self.http_limits
        try:
            _, conn = await open_connection(self.loop, server, lambda: _Backend(server, limits))
        except OSError as exc:
            self.connect_task = None
            _log.debug("%s: connect to %s failed: %r", self.lb.name, server.address_text, exc)
            if not self.closed:
                self._dispatch()
            return
        self.connect_task = None
        if self.closed:
            conn.close()
            return
        self._attach(conn)

    def _attach(self, conn: _Backend) -> None:
        head = self.head
        assert head is not None
        self.backend = conn
        conn.frontend = self
        conn.got_bytes = False
        self.session.server = conn.server
        t = conn.transport
        ct = self.transport
        if t is not None and ct is not None and ct.get_write_buffer_size() > HIGH_WATER:
            t.pause_reading()  # the client is still behind: its resume_writing resumes
        try:
            conn.parser.expect_response(head.method, head.upgrade is not None)
        except HttpError:
            self._backend_failed(conn)
            return
        out = encode_head(head, self.forwarded)
        if self.held:
            out = b"".join([out, *self.held])
            self.held.clear()
        elif not self.request_done and self.events and type(self.events[0]) is BodyChunk:
            # Body bytes that came with the head go out in the same write (what
            # _pump does with each of them, but one send(2) instead of two).
            parts = [out]
            events = self.events
            while events and type(events[0]) is BodyChunk:
                data: bytes = events.popleft().data  # type: ignore[union-attr]
                self.queued_bytes -= len(data)
                if self.body_deadline is not None:
                    self.body_deadline += len(data) / MIN_BODY_RATE
                parts.append(data)
            out = b"".join(parts)
        if t is not None:  # (conn.write, inline)
            n = len(out)
            conn.bytes_out += n
            self.session.back.bytes_out += n
            t.write(out)
        else:
            self.session.back.bytes_out += len(out)
        if self.events or self.paused & _P_QUEUE or self.error is not None:
            self._pump()  # (with nothing queued and no error it would do nothing)

    # -- responses --------------------------------------------------------------------------
    def backend_data(self, b: _Backend, data: bytes) -> None:
        self.session.back.bytes_in += len(data)
        if self.relaying:
            self.deadline = self.loop.time() + self.idle_timeout
            self._to_client(data)
            return
        req = self.head
        if (
            self.request_done
            and self.backend is b
            and not self.closed
            and req is not None
            and req.upgrade is None
        ):
            # The usual read: a whole final response of the usual shape to a request
            # sent whole. The parser hands back the bytes for the client (the head as
            # received but for its hop-by-hop lines, and the body): no events.
            close = self.close_after or (
                self.client_eof and self.queued_heads == 0 and self.error is None
            )
            whole = b.parser.receive_whole(data, close)
            if whole is not None:
                self.status, self.backend_keep_alive, out = whole
                self.response_started = True
                if close:
                    self.close_after = True
                self._whole_response_out(out)  # (which moves the deadline)
                return
        self.deadline = self.loop.time() + self.idle_timeout
        # What this read produces for the client (a head and a body, often) goes out
        # in one write: one send(2) per response instead of one per event.
        self.batch = []
        try:
            events = b.parser.receive_data(data)
        except HttpError as exc:
            self._responses(b, exc.events)
            self._backend_failed(b, exc)
            self._flush()
            return
        n = len(events)
        if (
            1 < n < 4
            and type(events[-1]) is ResponseEnd
            and self.request_done
            and self.backend is b
            and not self.closed
        ):
            # The usual read: a whole final response to a request sent whole. What
            # _responses does with it, in one go.
            head = events[0]
            req = self.head
            if (
                type(head) is ResponseHead
                and head.status >= 200
                and head.status != 101
                and req is not None
                and req.upgrade is None
                and (n == 2 or type(events[1]) is BodyChunk)
            ):
                self.batch = None
                self.status = head.status
                self.response_started = True
                self.backend_keep_alive = head.keep_alive
                close = self.close_after or (
                    self.client_eof and self.queued_heads == 0 and self.error is None
                )
                if close:
                    self.close_after = True
                out = encode_response_head(head, close)
                if n == 3:
                    out += events[1].data  # type: ignore[union-attr]
                self._whole_response_out(out)
                return
        self._responses(b, events)
        self._flush()

    def _whole_response_out(self, out: bytes) -> None:
        """A whole final response, ready for the client: one write, then the exchange ends."""
        t = self.transport
        if t is not None and not t.is_closing():
            n = len(out)
            self.bytes_to_client += n
            self.session.front.bytes_out += n
            t.write(out)
        self.response_complete_waiting = True
        self._finish_exchange()

    def _flush(self) -> None:
        batch = self.batch
        if batch is None:
            return
        self.batch = None
        if not batch:
            return
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(batch[0] if len(batch) == 1 else b"".join(batch))

    def backend_eof(self, b: _Backend) -> None:
        if self.relaying:
            t = self.transport
            if t is not None and not t.is_closing() and t.can_write_eof():
                t.write_eof()
            if self.client_eof:
                self._close_client()
            return
        try:
            events = b.parser.receive_eof()
        except HttpError as exc:
            self._responses(b, exc.events)
            self._backend_failed(b, exc)
            return
        self._responses(b, events)
        if self.backend is b:  # EOF before the response ended
            self._backend_failed(b)

    def backend_lost(self, b: _Backend) -> None:
        if self.backend is not b:
            return
        if self.relaying:
            self.backend = None
            self._close_client()
            return
        self._backend_failed(b)

    def _responses(self, b: _Backend, events: Sequence[Event]) -> None:
        for ev in events:
            if self.backend is not b or self.closed:
                return
            kind = type(ev)  # the parser's events are these classes exactly
            if kind is BodyChunk:
                self._to_client(ev.data)  # type: ignore[union-attr]
            elif kind is ResponseHead:
                self._response_head(b, ev)  # type: ignore[arg-type]
            elif kind is ResponseEnd:
                self.response_complete_waiting = True
                if self.request_done:
                    self._finish_exchange()
                else:
                    # A final response before the request ended (e.g. 417 after
                    # Expect): the rest of the request is not forwarded; close after.
                    self.close_after = True
                    self._finish_exchange()

    def _response_head(self, b: _Backend, head: ResponseHead) -> None:
        req = self.head
        assert req is not None
        if head.status == 101:
            self._upgrade(b, head)
            return
        if head.status < 200:  # interim (101 is above)
            if req.version != b"1.0":
                self._to_client(encode_response_head(head))
            return
        if req.upgrade is not None:
            try:
                self._queue(self.parser.decline_upgrade())
            except HttpError as exc:
                self._queue(list(exc.events))
                self.error = exc
        self.status = head.status
        self.response_started = True
        self.backend_keep_alive = head.keep_alive
        if not self.request_done:
            self.close_after = True  # the request body is cut short: no reuse of the client
        # After a client's EOF the last request's response closes; a pending refusal
        # still gets its own response after this one.
        close = self.close_after or (
            self.client_eof and self.queued_heads == 0 and self.error is None
        )
        if close:
            self.close_after = True
        self._to_client(encode_response_head(head, close=close))

    def _upgrade(self, b: _Backend, head: ResponseHead) -> None:
        self.status = 101
        self.response_started = True
        self._to_client(encode_response_head(head))
        rest = b.parser.trailing_data
        try:
            early = self.parser.accept_upgrade()
        except HttpError:
            self._close_client()
            return
        self.relaying = True
        self.head_deadline = None
        self.paused &= ~(_P_QUEUE | _P_BACKEND)
        self.events.clear()
        if rest:
            self._to_client(rest)
        if early:
            b.write(early)
            self.session.back.bytes_out += len(early)
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()
        self._log_request()

    def _to_client(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            n = len(data)
            self.bytes_to_client += n
            self.session.front.bytes_out += n
            batch = self.batch
            if batch is not None:
                batch.append(data)
            else:
                t.write(data)

    def _finish_exchange(self) -> None:
        now = self.loop.time()
        b = self.backend
        self.backend = None
        self._log_request()
        self.head = None
        self.response_complete_waiting = False
        if b is not None:
            b.frontend = None
            if (
                self.backend_keep_alive
                and self.request_done
                and b.parser.idle
                and not b.closed
                and b.transport is not None
                and not b.transport.is_closing()
            ):
                t = b.transport
                if not t.is_reading():
                    t.resume_reading()  # idle connections read: to see the server close
                self.pool.put(b, self.pool_idle, now)
            else:
                b.close()
        if self.paused & _P_BACKEND:
            self.resume_client(_P_BACKEND)
        if self.close_after:
            self.events.clear()
            self._close_client()
            return
        when = self.deadline = now + self.idle_timeout
        if self.timer is None or self.timer_at > when:
            self._arm(when)
        if self.events or self.paused & _P_QUEUE or self.error is not None or self.client_eof:
            self._pump()  # (otherwise it would do nothing)

    def _backend_failed(self, b: _Backend, exc: HttpError | None = None) -> None:
        if self.backend is not b:
            return
        self.backend = None
        b.frontend = None
        b.close()
        head = self.head
        if exc is not None:
            _log.debug("%s: backend %s broke HTTP: %s", self.lb.name, b.server.address_text, exc)
        if (
            head is not None
            and b.reused
            and not b.got_bytes
            and head.body_kind is BodyKind.NONE
            and head.upgrade is None
            and self.request_done
            and not self.response_started
        ):
            # The server closed an idle connection as we reused it: try afresh once.
            self.tried = [s for s in self.tried if s is not b.server]
            conn_server = b.server
            self.tried.append(conn_server)
            self.connect_task = self.loop.create_task(self._connect(conn_server))
            return
        self._gateway_error(502)

    def _gateway_error(self, status: int) -> None:
        """The exchange failed on the backend side: answer it, or cut the client."""
        self.status = status if not self.response_started else self.status
        if self.response_started:
            self._close_client()  # what was written stays; nothing is padded
            return
        self._to_client(error_response(status))
        self._close_client()

    def _refuse(self, exc: HttpError) -> None:
        """Answer a request the parser refused, then close."""
        self.status = exc.status
        self._to_client(exc.wire)
        self.lb.l7_refused += 1
        if self.head is None:  # no request to log: count the refusal here
            self.lb.count_status(exc.status)
        self._close_client()

    # -- ending -----------------------------------------------------------------------------
    def _close_client(self) -> None:
        self._flush()
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()  # after what is written (a truncated body stays truncated)
        b = self.backend
        if b is not None and not self.relaying:
            self.backend = None
            b.frontend = None
            b.close()

    def _log_request(self) -> None:
        head = self.head
        if head is None:
            return
        lb = self.lb
        status = self.status
        lb.count_status(status)
        log = lb.access_log
        if log is not None:
            server = self.backend.server if self.backend is not None else self.session.server
            log.request_ended(
                "tcp-lb",
                lb.name,
                self.session.client,
                server,
                head.method.decode("latin-1"),
                head.host,
                head.target.decode("latin-1"),
                status,
                self.bytes_to_client,
                _monotonic() - self.started if self.started else 0.0,
            )
        if status == 101:
            self.head = None

    # -- timers -----------------------------------------------------------------------------
    def _arm(self, when: float) -> None:
        timer = self.timer
        if timer is not None:
            if self.timer_at <= when:
                return  # fires earlier and re-arms itself
            timer.cancel()
        self.timer_at = when
        self.timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.closed:
            return
        now = self.loop.time()
        hd = self.head_deadline
        if hd is not None and now >= hd and self.head is None and not self.relaying:
            # The request head did not come in time (slowloris, or an idle first
            # connection): 408 when some of it came, else just close.
            if self.parser_has_bytes():
                self.status = 408
                self.lb.l7_refused += 1
                self.lb.count_status(408)
                self._to_client(error_response(408))
            self._close_client()
            return
        bd = self.body_deadline
        if bd is not None and now >= bd and (self.paused or self.backend is None):
            # We are not reading the body (backpressure, or still connecting): the
            # client cannot be blamed; its clock starts again when reading resumes.
            bd = self.body_deadline = now + self.head_timeout
        if bd is not None and now >= bd and not self.request_done and not self.relaying:
            # The request body is too slow: that backend connection is dropped.
            _log.debug("%s: request body from %s too slow", self.lb.name, self.source)
            self.error = RemoteProtocolError(408, "request body too slow")
            b = self.backend
            if b is not None:
                self.backend = None
                b.frontend = None
                b.close()
            if self.response_started:
                self._close_client()
            else:
                self.status = 408
                self._to_client(error_response(408))
                self._close_client()
            return
        if now >= self.deadline:
            if self.head is not None and not self.response_started and not self.relaying:
                self._gateway_error(504)
            else:
                self._close_client()
            return
        when = self.deadline
        if hd is not None:
            when = min(when, hd)
        if bd is not None and not self.request_done:
            when = min(when, bd)
        self._arm(when)

    def parser_has_bytes(self) -> bool:
        """Whether part of a request head has arrived (so a 408 is owed)."""
        return self.parser.state is State.HEAD and self.parser.buffered > 0
