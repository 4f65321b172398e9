#!/usr/bin/env python3
"""Micro-benchmark: HTTP/1.x request parsing with httptools (llhttp) vs h11.

Chooses the parser under ``vproxy.processor.http1`` (see its module docstring) and
keeps an eye on what our processor costs on top. Two workloads are a stream of
pipelined keep-alive requests cut into 64 KiB reads, as a socket would hand them over:

* ``GET``: a browser-like GET with 10 header fields (390 bytes), 20,000 times;
* ``POST``: a POST with a 64 KiB Content-Length body, 500 times.

The third, ``proxy pair``, is what the ``http/1.x`` mode of tcp-lb does per request
on a keep-alive connection, one message per ``receive_data`` call: parse a wrk-like
GET, ``encode_head`` it with ``X-Forwarded-For`` and ``X-Client-Port``, announce it
to a ``ResponseParser``, and turn an nginx-like 200 with a 6-byte body into the
bytes for the client as the mode does (``receive_whole``, or ``receive_data`` and
``encode_response_head`` for a response off the usual shape); 20,000 times. The
fourth, ``browser pair``, is the same with the browser-like GET of the first workload
as the request. httptools there parses both messages (one request and one response
parser); h11 is left out (it cannot be told which request a response answers without
driving a client connection too).

Contenders, each doing what a proxy needs at the least (method, target, header list,
every body byte, the end of each message):

* ``httptools``: one ``HttpRequestParser`` per stream with Python callbacks;
* ``h11``: one server ``Connection``; h11 will not parse request N+1 before the
  response to request N is sent, so each cycle also sends a minimal response;
* ``vproxy``: ``vproxy.processor.http1.RequestParser`` (compiled regexes for heads,
  framing and strictness in Python).

Each measurement is run ``--runs`` times (default 5) and the median is reported, in
requests per second and MB/s of process CPU time (so that other load on the machine
counts less). Needs ``pip install httptools h11``. No network.

Usage: ``python bench/http1_parsers.py [--runs N] [--quick] [--json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import version

import h11
import httptools

from vproxy.processor.http1 import (
    BodyChunk,
    RequestEnd,
    RequestHead,
    RequestParser,
    ResponseEnd,
    ResponseHead,
    ResponseParser,
    encode_head,
    encode_response_head,
)

GET = (
    b"GET /static/app.js?v=20240101 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
    b"Accept: */*\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Referer: https://www.example.com/\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=0123456789abcdef0123456789abcdef\r\n"
    b"Sec-Fetch-Dest: script\r\n"
    b"Cache-Control: max-age=0\r\n"
    b"\r\n"
)
BODY = bytes(range(256)) * 256  # 64 KiB
POST = (
    b"POST /api/upload HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"\r\n" + BODY
)
READ_SIZE = 64 * 1024
PAIR_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
PAIR_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.24.0\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Content-Type: text/html\r\n"
    b"Content-Length: 6\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
    b"hello\n"
)
FORWARDED = [(b"X-Forwarded-For", b"127.0.0.1"), (b"X-Client-Port", b"50000")]


def segments(message: bytes, count: int) -> list[bytes]:
    stream = message * count
    return [stream[i : i + READ_SIZE] for i in range(0, len(stream), READ_SIZE)]


class _HttptoolsConsumer:
    __slots__ = ("body", "headers", "messages", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = 0
        self.messages = 0

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += len(body)

    def on_message_complete(self) -> None:
        self.messages += 1


def run_httptools(reads: list[bytes]) -> int:
    consumer = _HttptoolsConsumer()
    parser = httptools.HttpRequestParser(consumer)
    for data in reads:
        parser.feed_data(data)
    return consumer.messages


def run_h11(reads: list[bytes]) -> int:
    conn = h11.Connection(h11.SERVER)
    messages = 0
    response = h11.Response(status_code=200, headers=[(b"content-length", b"0")])
    for data in reads:
        conn.receive_data(data)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.EndOfMessage):
                messages += 1
                conn.send(response)
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
    return messages


def run_vproxy(reads: list[bytes]) -> int:
    parser = RequestParser()
    messages = 0
    body = 0
    for data in reads:
        for event in parser.receive_data(data):
            if type(event) is BodyChunk:
                body += len(event.data)
            elif type(event) is RequestEnd:
                messages += 1
    return messages


def pair_reads(count: int, request: bytes = PAIR_REQUEST) -> list[bytes]:
    """The proxy pair workload: request, response, request, ... one per call."""
    return [request, PAIR_RESPONSE] * count


def run_httptools_pair(reads: list[bytes]) -> int:
    consumer = _HttptoolsConsumer()
    requests = httptools.HttpRequestParser(consumer)
    responses = httptools.HttpResponseParser(consumer)
    for i in range(0, len(reads), 2):
        requests.feed_data(reads[i])
        responses.feed_data(reads[i + 1])
    return consumer.messages // 2


def run_vproxy_pair(reads: list[bytes]) -> int:
    requests = RequestParser()
    responses = ResponseParser()
    pairs = 0
    for i in range(0, len(reads), 2):
        for event in requests.receive_data(reads[i]):
            if type(event) is RequestHead:
                encode_head(event, FORWARDED)
                responses.expect_response(event.method)
        data = reads[i + 1]
        if responses.receive_whole(data, False) is not None:
            pairs += 1
            continue
        for event in responses.receive_data(data):
            if type(event) is ResponseHead:
                encode_response_head(event)
            elif type(event) is ResponseEnd:
                pairs += 1
    return pairs


PARSERS: dict[str, Callable[[list[bytes]], int]] = {
    "httptools": run_httptools,
    "h11": run_h11,
    "vproxy": run_vproxy,
}
PAIR_PARSERS: dict[str, Callable[[list[bytes]], int]] = {
    "httptools": run_httptools_pair,
    "vproxy": run_vproxy_pair,
}


def measure(run: Callable[[list[bytes]], int], reads: list[bytes], count: int) -> float:
    # CPU time of this process: on a shared machine, wall time also counts the time
    # other processes held the CPU.
    start = time.process_time()
    got = run(reads)
    elapsed = time.process_time() - start
    if got != count:
        raise RuntimeError(f"{run.__name__} parsed {got} requests, expected {count}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=5, help="runs per measurement (median)")
    ap.add_argument("--quick", action="store_true", help="a tenth of the requests")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    scale = 10 if args.quick else 1
    pairs = 20_000 // scale
    workloads = {
        "GET": (len(GET), 20_000 // scale, segments(GET, 20_000 // scale), PARSERS),
        "POST 64KiB": (len(POST), 500 // scale, segments(POST, 500 // scale), PARSERS),
        "proxy pair": (
            len(PAIR_REQUEST) + len(PAIR_RESPONSE),
            pairs,
            pair_reads(pairs),
            PAIR_PARSERS,
        ),
        "browser pair": (
            len(GET) + len(PAIR_RESPONSE),
            pairs,
            pair_reads(pairs, GET),
            PAIR_PARSERS,
        ),
    }
    results: dict[str, dict[str, dict[str, float]]] = {}
    for wname, (size, count, reads, parsers) in workloads.items():
        results[wname] = {}
        for pname, run in parsers.items():
            run(reads[:2])  # warm up (imports, caches)
            times = [measure(run, reads, count) for _ in range(args.runs)]
            median = statistics.median(times)
            results[wname][pname] = {
                "requests_per_s": count / median,
                "mb_per_s": size * count / median / 1e6,
                "seconds": median,
            }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"Python {platform.python_version()}, httptools {version('httptools')}, "
        f"h11 {version('h11')}; median of {args.runs}; {READ_SIZE // 1024} KiB reads"
    )
    print(
        f"GET is {len(GET)} bytes; POST is {len(POST)} bytes; a proxy pair is "
        f"{len(PAIR_REQUEST)} + {len(PAIR_RESPONSE)} bytes (requests/s: pairs/s)"
    )
    print(f"{'workload':<13} {'parser':<10} {'requests/s':>12} {'MB/s':>9}")
    for wname, by_parser in results.items():
        for pname, r in by_parser.items():
            print(f"{wname:<13} {pname:<10} {r['requests_per_s']:>12,.0f} {r['mb_per_s']:>9,.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
