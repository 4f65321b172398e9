"""Fuzz the command language (``vproxy.control.command``: lexer, grammar, parser).

Invariant: ``parse(line)`` returns a command or raises ``CommandError``; a command it
returns is written back by ``format_command`` (long and short forms) as a line that
parses to an equal command.

Run: ``python3 fuzz/fuzz_command.py -max_total_time=60``
"""

from __future__ import annotations

import atheris
from _harness import main

with atheris.instrument_imports(include=["vproxy"]):
    from vproxy.control.command import CommandError, format_command, parse

SEEDS = [
    b"add server-group ngx timeout 500 period 1000 up 2 down 3 method wrr event-loop-group w",
    b"add server backend1 to server-group ngx address 127.0.0.1:8080 weight 10",
    b"add tcp-lb lb0 acceptor-elg acceptor event-loop-group worker address 127.0.0.1:18080 "
    b"upstream backend-groups in-buffer-size 16384 out-buffer-size 16384 max-connections 9",
    b"update tcp-lb lb0 max-headers 50 request-head-timeout 2000 protocol http/1.x",
    b"add security-group-rule r0 to security-group secg0 network 10.0.0.0/8 protocol TCP "
    b"port-range 22,22 default deny",
    b"add socks5-server s5 address [::1]:0 upstream u security-group secg0 allow-non-backend",
    b"list bytes-in in server backend1 in server-group ngx",
    b"force-remove conn /.*/ from el worker1 in elg worker",
    b'add server-group g annotations \'{"host": "a.example"}\' timeout 1 period 1 up 1 down 1',
    b'add cert-key ck cert "/a b.pem,/c.pem" key /k.pem',
    b"System: list config",
    b"System: add resp-controller r address 127.0.0.1:16309 password s3cret",
    b"man tcp-lb add",
]


def test_one(data: bytes) -> None:
    line = data.decode("utf-8", errors="replace")
    try:
        cmd = parse(line)
    except CommandError:
        return
    for short in (False, True):
        text = format_command(cmd, short=short)
        again = parse(text)
        if again != cmd:
            raise AssertionError(f"{line!r} -> {text!r} -> {again!r} != {cmd!r}")


if __name__ == "__main__":
    main(test_one, SEEDS)
