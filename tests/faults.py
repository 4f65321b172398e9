"""A fault-injecting TCP relay for failover tests (in the spirit of asyncpg's fuzzer).

It sits between the proxy and a real backend and, per connection, passes bytes
through, delays them, swallows them, cuts the stream after N bytes from the backend
(with a reset), or refuses connections altogether. Modes can change at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass

from helpers import LoopThread


@dataclass
class Fault:
    """What the relay does to new connections."""

    mode: str = "pass"  # pass | delay | blackhole | cut | refuse
    delay: float = 0.0  # seconds, for "delay"
    cut_after: int = 0  # bytes from the backend forwarded before the reset, for "cut"


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultyRelay:
    """Listens on a free loopback port and relays to ``target`` through a :class:`Fault`."""

    def __init__(self, lt: LoopThread, target: tuple[str, int]) -> None:
        self.lt = lt
        self.target = target
        self.fault = Fault()
        self.port = 0
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.start()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self) -> None:
        async def _start() -> asyncio.AbstractServer:
            return await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

        self._server = self.lt.run(_start())
        self.port = self._server.sockets[0].getsockname()[1]

    def refuse(self) -> None:
        """Close the listener: connects are refused until :meth:`start`."""
        self.fault = Fault("refuse")
        server = self._server
        self._server = None
        if server is not None:

            async def _close() -> None:
                server.close()
                await server.wait_closed()

            self.lt.run(_close())

    def stop(self) -> None:
        self.refuse()

        async def _cancel() -> None:
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        self.lt.run(_cancel())

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        fault = self.fault
        try:
            if fault.mode == "blackhole":
                while await cr.read(65536):
                    pass
                return
            br, bw = await asyncio.open_connection(*self.target)
            try:
                await asyncio.gather(
                    self._pipe(cr, bw, fault, from_backend=False),
                    self._pipe(br, cw, fault, from_backend=True),
                )
            finally:
                bw.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            cw.close()
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _pipe(
        self,
        r: asyncio.StreamReader,
        w: asyncio.StreamWriter,
        fault: Fault,
        *,
        from_backend: bool,
    ) -> None:
        sent = 0
        while data := await r.read(65536):
            if fault.mode == "delay":
                await asyncio.sleep(fault.delay)
            if fault.mode == "cut" and from_backend:
                room = fault.cut_after - sent
                if len(data) >= room:
                    w.write(data[:room])
                    await w.drain()
                    _rst(w)
                    raise ConnectionResetError("cut by the fault relay")
            w.write(data)
            sent += len(data)
            await w.drain()
        if w.can_write_eof():
            w.write_eof()
