"""An HTTP/1.1 backend for the L7 tests: aiohttp's server on a test loop thread.

Each backend answers with its own id and records what it saw, so tests can check
where each request went and which forwarding headers arrived.

Routes: ``/upload`` (POST: streams the body into sha256; JSON digest and length),
``/ws`` (WebSocket echo), ``/big?n=N`` (N bytes, streamed), anything else: the id as
the body, with ``X-Backend``, and the ``X-Forwarded-For`` / ``X-Client-Port`` it got
echoed as ``X-Seen-For`` / ``X-Seen-Port``.
"""

from __future__ import annotations

import hashlib
import socket
from typing import Any

from aiohttp import WSMsgType, web

from helpers import LoopThread


class HttpBackend:
    """One aiohttp server on 127.0.0.1, port chosen by the kernel."""

    def __init__(self, lt: LoopThread, ident: str) -> None:
        self.lt = lt
        self.ident = ident
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.upload_peak_chunk = 0
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/upload", self._upload)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/big", self._big)
        app.router.add_route("*", "/{tail:.*}", self._ident)
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.address = ("127.0.0.1", self.port)

        async def start() -> None:
            await self.runner.setup()
            await web.SockSite(self.runner, self.sock).start()

        lt.run(start())

    def stop(self) -> None:
        self.lt.run(self.runner.cleanup(), timeout=15)
        self.sock.close()

    def _record(self, request: web.Request) -> None:
        self.requests.append((request.method, request.path_qs, dict(request.headers)))

    async def _ident(self, request: web.Request) -> web.Response:
        self._record(request)
        await request.read()
        return web.Response(
            text=self.ident,
            headers={
                "X-Backend": self.ident,
                "X-Seen-For": request.headers.get("X-Forwarded-For", ""),
                "X-Seen-Port": request.headers.get("X-Client-Port", ""),
            },
        )

    async def _upload(self, request: web.Request) -> web.Response:
        self._record(request)
        digest = hashlib.sha256()
        length = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
        body: dict[str, Any] = {"sha256": digest.hexdigest(), "length": length}
        body["backend"] = self.ident
        return web.json_response(body)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        self._record(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(f"{self.ident}:{msg.data}")
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def _big(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        n = int(request.query.get("n", "0"))
        resp = web.StreamResponse(headers={"X-Backend": self.ident})
        resp.content_length = n
        await resp.prepare(request)
        block = b"x" * 65536
        while n > 0:
            await resp.write(block[: min(n, len(block))])
            n -= len(block)
        await resp.write_eof()
        return resp
