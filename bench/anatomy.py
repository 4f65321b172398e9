#!/usr/bin/env python3
"""Where an L4 request's CPU goes: vproxy tcp-lb vs HAProxy vs no proxy.

bench/run.py says how fast each proxy is; this script says why, for the L4
keep-alive row (``wrk -t1 -c64`` through one worker, nginx backend) or, with
``--close``, the ``Connection: close`` row (a connection per request). Per request
and per target, from one run each:

- req/s, and the proxy's CPU split into user and system time (/proc/PID/stat);
- the whole machine's busy CPU time (/proc/stat: client, backend, proxy and the
  kernel's softirq work alike), the fair cost of putting the proxy in the path;
- TCP segments sent (/proc/net/snmp ``Tcp: OutSegs``): 2 without a proxy, 4 with;
- with ``--strace``, a second, shorter run under ``strace -c -f``: the proxy's
  system calls per request, by name (strace slows the proxy; only the counts count);
- with ``--perf``, ``perf record`` of the proxy during a third run: the kernel's
  share of its samples and the hottest symbols.

    python3 bench/anatomy.py                        # 3 rounds x 4 s, counters only
    python3 bench/anatomy.py --strace --perf        # and the system calls and the profile
    python3 bench/anatomy.py --close --strace       # a connection per request

The rounds are interleaved and the median is printed. Everything listens on
127.0.0.1 with free ports; every process is started in its own session and stopped
by pid. The helpers (configs, process manager) are bench/run.py's.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # bench/run.py, the side-by-side benchmark

TARGETS = ("direct", "haproxy", "vproxy")


def machine_busy_seconds() -> float:
    """Busy CPU time of the whole machine (every CPU, idle and iowait excluded)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / bench.CLK_TCK


def user_system_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid``, all its threads."""
    rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(rest[11]) / bench.CLK_TCK, int(rest[12]) / bench.CLK_TCK


def tcp_out_segments() -> int:
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()]
    head, values = next((a, b) for a, b in itertools.pairwise(lines) if a[0] == "Tcp:" == b[0])
    return int(values[head.index("OutSegs")])


#: extra wrk arguments (``--close`` adds ``-H "Connection: close"``)
WRK_ARGS: list[str] = []


def wrk(port: int, seconds: int) -> int:
    out = subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{seconds}s", *WRK_ARGS, f"http://{bench.HOST}:{port}/"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    m = re.search(r"(\d+) requests in", out)
    if m is None or "Non-2xx" in out or "Socket errors" in out:
        raise bench.BenchError(f"wrk failed against port {port}:\n{out}")
    return int(m.group(1))


def measure(port: int, pid: int | None, seconds: int) -> dict[str, float]:
    p0 = user_system_seconds(pid) if pid else (0.0, 0.0)
    m0, s0 = machine_busy_seconds(), tcp_out_segments()
    n = wrk(port, seconds)
    p1 = user_system_seconds(pid) if pid else (0.0, 0.0)
    m1, s1 = machine_busy_seconds(), tcp_out_segments()
    return {
        "rps": n / seconds,
        "user_us": (p1[0] - p0[0]) / n * 1e6,
        "sys_us": (p1[1] - p0[1]) / n * 1e6,
        "machine_us": (m1 - m0) / n * 1e6,
        "segments": (s1 - s0) / n,
    }


def strace_counts(port: int, pid: int, seconds: int, tmp: Path) -> dict[str, float]:
    """System calls of ``pid`` per request, by name, over one wrk run."""
    out = tmp / f"strace.{pid}"
    st = subprocess.Popen(
        ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        bench.wait_until(lambda: out.exists() or st.poll() is not None, 10, "strace")
        n = wrk(port, seconds)
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(30)
    counts: dict[str, float] = {}
    for line in out.read_text().splitlines():
        f = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(f) >= 5 and f[3].isdigit() and f[-1] != "total":
            counts[f[-1]] = int(f[3]) / n
    return counts


def perf_profile(port: int, pid: int, seconds: int, tmp: Path) -> tuple[float, list[str]]:
    """Kernel share of ``pid``'s samples and its ten hottest symbols, over one wrk run."""
    data = tmp / f"perf.{pid}"
    rec = subprocess.Popen(
        ["perf", "record", "-F", "999", "-p", str(pid), "-o", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wrk(port, seconds)
    finally:
        rec.send_signal(signal.SIGINT)
        rec.wait(60)

    def report(sort: str) -> list[tuple[float, str]]:
        out = subprocess.run(
            ["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        rows = []
        for line in out.splitlines():
            m = re.match(r"\s+([\d.]+)%\s+(\S+(?: \S+)*)", line)  # up to a double space
            if m:
                rows.append((float(m.group(1)), m.group(2)))
        return rows

    kernel = sum(pct for pct, dso in report("dso") if dso.startswith("[kernel"))
    return kernel, [f"{pct:.1f}% {sym}" for pct, sym in report("symbol")[:10]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--close", action="store_true", help="Connection: close, not keep-alive")
    p.add_argument("--strace", action="store_true", help="count system calls (needs strace)")
    p.add_argument("--perf", action="store_true", help="profile the proxies (needs perf)")
    a = p.parse_args(argv)
    for tool in ["nginx", "haproxy", "wrk"] + ["strace"] * a.strace + ["perf"] * a.perf:
        if shutil.which(tool) is None:
            print(f"{tool} is needed (bench/run.py installs the others)", file=sys.stderr)
            return 1
    if a.close:
        WRK_ARGS[:] = ["-H", "Connection: close"]
    tmp = Path(tempfile.mkdtemp(prefix="vproxy-anatomy-"))
    pm = bench.ProcessManager(tmp)
    try:
        with bench.sigterm_as_exception():
            return run(a, tmp, pm)
    except (bench.BenchError, bench.Interrupted) as exc:
        print(f"!! {exc}", file=sys.stderr)
        return 1
    finally:
        pm.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def run(a: argparse.Namespace, tmp: Path, pm: bench.ProcessManager) -> int:
    backend = bench.free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(bench.nginx_backend_conf(tmp, backend, bench.free_port()))
    nginx = pm.start(
        "nginx", ["nginx", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)]
    )
    bench.wait_until(lambda: bench.http_probe(backend), 10, "the nginx backend", nginx)
    ports: dict[str, tuple[int, int | None]] = {"direct": (backend, None)}

    hport = bench.free_port()
    (tmp / "haproxy.cfg").write_text(bench.haproxy_conf([(hport, backend)]))
    hp = pm.start("haproxy", ["haproxy", "-db", "-f", str(tmp / "haproxy.cfg")])
    bench.wait_until(lambda: bench.http_probe(hport), 10, "haproxy", hp)
    ports["haproxy"] = (hport, hp.pid)

    vport = bench.free_port()
    env = dict(os.environ, HOME=str(tmp))
    env["PYTHONPATH"] = str(bench.REPO / "src")
    argv = [sys.executable, "-m", "vproxy", "simple", "bind", str(vport)]
    argv += ["backend", f"{bench.HOST}:{backend}", "address", bench.HOST]
    vp = pm.start("vproxy", argv, cwd=bench.REPO, env=env, keep_stdin_open=True)
    bench.wait_until(lambda: bench.http_probe(vport), 30, "vproxy", vp)
    ports["vproxy"] = (vport, vp.pid)

    for port, _ in ports.values():
        wrk(port, 1)  # warm-up
    rows: dict[str, list[dict[str, float]]] = {t: [] for t in TARGETS}
    for r in range(a.rounds):
        for name in TARGETS if r % 2 == 0 else TARGETS[::-1]:
            rows[name].append(measure(*ports[name], a.seconds))
            m = rows[name][-1]
            print(
                f"round {r} {name:8s} {m['rps']:9,.0f} req/s  proxy user {m['user_us']:5.2f}"
                f" sys {m['sys_us']:5.2f} us  machine {m['machine_us']:5.2f} us"
                f"  segments {m['segments']:.2f}",
                flush=True,
            )

    def med(name: str, key: str) -> float:
        return statistics.median(m[key] for m in rows[name])

    print("\n| per request (medians) | " + " | ".join(TARGETS) + " |")
    print("|---|" + "---|" * len(TARGETS))
    for key, title, fmt in (
        ("rps", "req/s", "{:,.0f}"),
        ("user_us", "proxy user CPU (µs)", "{:.2f}"),
        ("sys_us", "proxy system CPU (µs)", "{:.2f}"),
        ("machine_us", "whole machine busy CPU (µs)", "{:.2f}"),
        ("segments", "TCP segments sent", "{:.2f}"),
    ):
        print(f"| {title} | " + " | ".join(fmt.format(med(t, key)) for t in TARGETS) + " |")

    for flag, what in ((a.strace, "strace"), (a.perf, "perf")):
        if not flag:
            continue
        for name in ("haproxy", "vproxy"):
            port, pid = ports[name]
            assert pid is not None
            if what == "strace":
                calls = strace_counts(port, pid, min(a.seconds, 3), tmp)
                top = sorted(calls.items(), key=lambda kv: -kv[1])
                total = sum(calls.values())
                print(f"\n{name}: {total:.2f} system calls per request: ", end="")
                print(", ".join(f"{k} {v:.3f}" for k, v in top if v >= 0.005))
            else:
                kernel, hottest = perf_profile(port, pid, a.seconds, tmp)
                print(f"\n{name}: {kernel:.1f}% of the samples in the kernel; hottest:")
                print("  " + "\n  ".join(hottest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
