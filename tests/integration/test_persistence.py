"""Autosave and load-last as a process: SIGHUP saves, kill -9 never leaves a bad file."""

from __future__ import annotations

import contextlib
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import ROOT, wait_until
from vproxy.control.command import parse
from vproxy.control.persist import read_config


def start(home: Path, *words: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "vproxy", *words],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def upstream_numbers(path: Path) -> list[int]:
    lines = read_config(path)  # raises on a truncated / unparsable file
    nums = []
    for ln in lines:
        parse(ln.text)
        m = re.fullmatch(r"add upstream u(\d+)", ln.text)
        if m:
            nums.append(int(m.group(1)))
    return nums


def test_kill_9_during_saves_never_leaves_a_bad_file(tmp_path: Path) -> None:
    rng = random.Random(1234)
    last = tmp_path / ".vproxy" / "vproxy.last"
    n = 0
    for round_ in range(6):
        words = ("noLoadLast",) if round_ == 0 else ()
        p = start(tmp_path, *words)
        try:
            assert p.stdin is not None
            if round_:
                # load-last picked up exactly what the last complete save held
                loaded = upstream_numbers(last)
                assert loaded == list(range(len(loaded)))
                n = len(loaded)
            # The console answers only after the signal handlers are installed.
            assert p.stdout is not None
            p.stdin.write(b"list upstream\n")
            p.stdin.flush()
            p.stdout.readline()
            deadline = time.monotonic() + rng.uniform(0.3, 1.2)
            while time.monotonic() < deadline:
                p.stdin.write(f"add upstream u{n}\n".encode())
                p.stdin.flush()
                n += 1
                time.sleep(0.01)
                p.send_signal(signal.SIGHUP)  # autosave, keeps running
            time.sleep(rng.uniform(0, 0.05))
        finally:
            p.kill()  # kill -9 at a random moment, maybe mid-save
            try:
                p.wait(10)
            finally:
                for f in (p.stdin, p.stdout, p.stderr):
                    if f is not None:
                        with contextlib.suppress(OSError):  # (stdin: a broken pipe)
                            f.close()
        assert last.exists()
        nums = upstream_numbers(last)
        assert nums == list(range(len(nums))), "the saved file is not one consistent state"
    assert n > 0
    leftovers = [f for f in last.parent.iterdir() if f.name != "vproxy.last"]
    assert len(leftovers) <= 1  # at most one temp file from a save cut by the kill


def test_sigterm_saves_and_next_start_loads(tmp_path: Path) -> None:
    p = start(tmp_path, "noLoadLast")
    try:
        assert p.stdin is not None
        assert p.stdout is not None
        p.stdin.write(b"add upstream keep-me\nadd event-loop-group extra\n")
        p.stdin.flush()
        last = tmp_path / ".vproxy" / "vproxy.last"
        # Both commands answered: the process runs (and handles SIGTERM) however long
        # its start took on a busy machine.
        out = b""
        deadline = time.monotonic() + 30
        while out.splitlines().count(b"OK") < 2 and time.monotonic() < deadline:
            ready, _, _ = select.select([p.stdout], [], [], 1)
            if ready:
                chunk = os.read(p.stdout.fileno(), 4096)
                assert chunk, f"vproxy exited before answering: {out!r}"
                out += chunk
        answers = [ln for ln in out.splitlines() if ln in (b"OK",) or ln.startswith(b"(error)")]
        assert answers == [b"OK", b"OK"]
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:  # a failed check above: do not leave it running
            p.kill()
            p.wait(10)
    p.stdout.close()
    p.stdin.close()
    assert p.stderr is not None
    p.stderr.close()
    text = last.read_text()
    assert "add upstream keep-me\n" in text
    assert "add event-loop-group extra\n" in text
    assert oct(last.stat().st_mode & 0o777) == "0o600"

    q = start(tmp_path, "noSave")
    try:
        assert q.stdout is not None
        assert q.stdin is not None
        line = q.stdout.readline().decode()
        assert line.startswith(f"vproxy: loaded {last}")
        q.stdin.write(b"list upstream\n")
        q.stdin.flush()
        assert q.stdout.readline().decode().strip() == '1) "keep-me"'
    finally:
        q.terminate()
        q.wait(10)
        for f in (q.stdin, q.stdout, q.stderr):
            if f is not None:
                f.close()
    wait_until(lambda: q.poll() is not None)
