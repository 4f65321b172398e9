"""Drives one frame processor (dubbo, framed-int32) the way the proxy does.

The input is cut in two: bytes from a client and bytes from a backend. The client's
frames are sent on the backend connection; then the backend's bytes are fed back.
Invariant: each side returns, or raises the processor layer's
``RemoteProtocolError``; nothing else.
"""

from __future__ import annotations

from _harness import reads

from vproxy.processor.base import ConnectionInfo, Processor, RemoteProtocolError

__all__ = ["drive"]

_INFO = ConnectionInfo(remote=("192.0.2.1", 1234), local=("127.0.0.1", 80))


def drive(proc: Processor, data: bytes) -> None:
    """Feed ``data`` through a frontend and a backend context of ``proc``."""
    if len(data) < 2:
        return
    cut = data[0] * len(data) // 256
    client, server = data[1 : 1 + cut], data[1 + cut :]
    front = proc.new_frontend(_INFO)
    back = proc.new_backend(_INFO)
    try:
        for chunk in reads(client):
            for frame in front.receive_data(chunk):
                back.send_frame(frame, origin=front)
            front.data_to_send()
            back.data_to_send()
    except RemoteProtocolError:
        pass
    try:
        for chunk in reads(server):
            back.receive_data(chunk)
            back.data_to_send()
    except RemoteProtocolError:
        pass
