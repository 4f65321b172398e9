"""Sans-IO protocol processors: bytes in, events (and bytes to send) out.

Owns the wire formats vproxy speaks or inspects (RESP, HTTP/1.x, HTTP/2, dubbo,
length-prefixed frames, socks5, WebSocket), one module each. Must not import asyncio,
socket, selectors or time, nor anything from ``vproxy.net`` or ``vproxy.control``:
the drivers feed these parsers and do the I/O themselves.

Submodules are imported by name (``from vproxy.processor.resp import RespParser``);
this package re-exports nothing so that importing one protocol never loads the others.
"""

__all__: list[str] = []
