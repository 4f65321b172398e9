"""Demo backends for ``vproxy hello``: tiny HTTP servers that say who they are.

Owns: starting N loopback servers on an event loop that answer any request with
``HTTP/1.0 200`` and ``hello from backend-N``.

Must not: be used as a real server; it reads one request head and closes.
"""

from __future__ import annotations

import asyncio

from vproxy.net.event_loop import EventLoop
from vproxy.net.server_sock import format_address

__all__ = ["DemoBackends"]


class DemoBackends:
    """``count`` HTTP responders on 127.0.0.1, free ports."""

    def __init__(self, el: EventLoop, count: int = 2) -> None:
        self.el = el
        self.servers: list[asyncio.Server] = []
        for i in range(count):
            self.servers.append(el.run_coroutine(self._start(i)).result(10))

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the demo backends listen."""
        out = []
        for s in self.servers:
            host, port = s.sockets[0].getsockname()[:2]
            out.append((host, port))
        return out

    @property
    def addresses_text(self) -> list[str]:
        """The addresses as ``ip:port`` text."""
        return [format_address(h, p) for h, p in self.addresses]

    async def _start(self, i: int) -> asyncio.Server:
        body = f"hello from backend-{i}\n".encode()
        head = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                async with asyncio.timeout(10):
                    await reader.readuntil(b"\r\n\r\n")
                writer.write(head % len(body) + body)
                await writer.drain()
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, TimeoutError):
                pass
            finally:
                writer.close()

        return await asyncio.start_server(handle, "127.0.0.1", 0)

    def close(self) -> None:
        """Stop the demo servers."""
        for s in self.servers:
            self.el.loop.call_soon_threadsafe(s.close)
