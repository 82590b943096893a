"""`isola upgrade` in `make bench` (host setting): the take-over time —
`upgrade` sent until the new binary answers `status` — at 100, 1,000 and
10,000 running services, and requests during 20 upgrades in a row under
load (one client on a held socket) beside the same client's steady state.

Nothing else on one host does this to compare with: systemd's
`daemon-reexec` re-executes the service manager (its units keep running)
but is PID 1's alone; supervisord, process-compose and docker compose
stop their services with themselves. The numbers stand on their own.

Imported by bench.py; `Up`, `request` and the sleeper come from there.
"""

import os
import signal
import statistics
import sys
import time

import bench_zero

ROUNDS = 10
UNDER_LOAD = 20


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")


def takeover(work, Up, request, svc, n):
    """`ROUNDS` upgrades of a stack of `n` running sleepers: ms from the
    request to the new binary's `status` answer."""
    up = Up(work, f"upgrade{n}", {f"s{i}": svc for i in range(n)}, "host")
    if up.wait_all(timeout=900) is None:
        up.down()
        return None
    times, unwatched = [], []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        r = request(up.sock, {"cmd": "upgrade"})
        if not r.get("ok"):
            raise SystemExit(f"bench: upgrade refused: {r}")
        request(up.sock, {"cmd": "status"})
        times.append((time.perf_counter() - t0) * 1000)
        unwatched.append(r.get("unwatchedMs", 0))
    rss = up.rss_kb()
    up.down()
    return {"n": n, "p50_ms": statistics.median(times), "p99_ms": pct(times, 99), "rss_kb": rss,
            "unwatched_p50_ms": statistics.median(unwatched)}


def loaded(work, Up, name):
    """A held-socket server under one client, past its steady state: the
    stack, the load, the steady latencies, and where the rest begins."""
    up = Up(work, name, {"web": bench_zero.service(True, "replace")}, "host")
    up.wait_all()
    load = bench_zero.Load()
    bench_zero.wait_answer(load)
    time.sleep(bench_zero.STEADY_S)
    return up, load, list(load.lat), len(load.lat), load.failed


def under_load(work, Up, request):
    """A held-socket server under one client: steady latency, then
    `UNDER_LOAD` upgrades back to back."""
    up, load, steady, mark, failed0 = loaded(work, Up, "upgrade-load")
    t0 = time.perf_counter()
    for _ in range(UNDER_LOAD):
        r = request(up.sock, {"cmd": "upgrade"})
        if not r.get("ok"):
            raise SystemExit(f"bench: upgrade refused: {r}")
    seconds = time.perf_counter() - t0
    during = load.lat[mark:]
    failed = load.failed - failed0
    load.finish()
    up.down()
    return {"steady_p50": pct(steady, 50), "steady_p99": pct(steady, 99), "p50": pct(during, 50),
            "p99": pct(during, 99), "n": len(during), "seconds": seconds, "failed": failed}


KILLS = 4  # the keeper gives up at the fifth death within a minute


def supervisor(up, request):
    """The supervisor's pid, as `info` says (never the keeper's)."""
    pid = request(up.sock, {"cmd": "info"})["info"]["pid"]
    if pid == up.proc.pid:
        raise SystemExit("bench: this isola up has no keeper")
    return pid


def new_supervisor(up, request, old, timeout=120):
    """Wait until a supervisor other than `old` answers `status`."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if request(up.sock, {"cmd": "info"})["info"]["pid"] != old:
                request(up.sock, {"cmd": "status"})
                return
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.002)
    raise SystemExit(f"bench: no new supervisor {timeout}s after the kill: "
                     f"{open(os.path.join(up.dir, 'err')).read()[-2000:]}")


def killed(work, Up, request, svc, n):
    """`KILLS` times `kill -9` of the supervisor of a stack of `n` running
    sleepers: ms from the kill until a new supervisor answers `status`."""
    up = Up(work, f"killed{n}", {f"s{i}": svc for i in range(n)}, "host")
    if up.wait_all(timeout=900) is None:
        up.down()
        return None
    times = []
    for _ in range(KILLS):
        time.sleep(1.5)  # at rest: the keeper has a snapshot of it
        old = supervisor(up, request)
        t0 = time.perf_counter()
        os.kill(old, signal.SIGKILL)
        new_supervisor(up, request, old)
        times.append((time.perf_counter() - t0) * 1000)
    keeper = up.keeper_rss_kb()
    up.down()
    return {"n": n, "p50_ms": statistics.median(times), "max_ms": max(times), "keeper_rss_kb": keeper}


def killed_under_load(work, Up, request):
    """A held-socket server under one client through `KILLS - 1` kills of
    its supervisor."""
    up, load, steady, mark, failed0 = loaded(work, Up, "killed-load")
    for _ in range(KILLS - 1):
        time.sleep(1.5)
        old = supervisor(up, request)
        os.kill(old, signal.SIGKILL)
        new_supervisor(up, request, old)
    time.sleep(1)
    during = load.lat[mark:]
    failed = load.failed - failed0
    load.finish()
    up.down()
    return {"steady_p99": pct(steady, 99), "p99": pct(during, 99), "n": len(during), "failed": failed}


def run(work, Up, request, sleeper, counts):
    svc = sleeper("host")
    svc["stderr"] = "stdout"
    del svc["root"]
    svc["process"]["args"] = ["/bin/busybox", "sleep", "100000"]
    out = {"takeover": [], "load": under_load(work, Up, request), "killed": [],
           "killed_load": killed_under_load(work, Up, request)}
    for n in counts:
        r = takeover(work, Up, request, svc, n)
        if r:
            out["takeover"].append(r)
        else:
            print(f"bench: upgrade at {n} services: the stack never ran", file=sys.stderr)
        r = killed(work, Up, request, svc, n)
        if r:
            out["killed"].append(r)
    return out


def report(u):
    """Markdown lines for bench/results.md."""
    if not u:
        return []
    lines = ["", f"`isola upgrade` (host, `--no-cgroup`): request → the new binary answers `status`, {ROUNDS} upgrades "
                 "of a stack of host-root busybox sleepers (goal ≤ 100 ms at 100, ≤ 1 s at 10,000). It includes "
                 "asking the new binary to read the state (a child process) and, in the new one, forking a fresh "
                 "spawner and parsing the stack again. No peer does this for its services: systemd's "
                 "`daemon-reexec` is PID 1's only", "",
             "| services | p50 | p99 | of which unwatched (snapshot → new binary serving), p50 | supervisor RSS after |",
             "|---|---|---|---|---|"]
    for r in u["takeover"]:
        lines.append(f"| {r['n']} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | {r.get('unwatched_p50_ms', 0):.0f} ms "
                     f"| {r['rss_kb'] / 1024:.1f} MiB |")
    r = u["load"]
    lines += ["", f"{UNDER_LOAD} upgrades in a row ({r['seconds']:.1f} s) under one client on a held socket: "
                  f"{r['n']} requests, {r['failed']} failed; latency p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms; "
                  f"steady state p50 {r['steady_p50']:.2f} ms, p99 {r['steady_p99']:.2f} ms (goal: 0 failed, "
                  f"p99 ≤ 2× steady)"]
    if u.get("killed"):
        lines += ["", f"`kill -9` of the supervisor (host, `--no-cgroup`, {KILLS} kills a stack): the kill → a new "
                      "supervisor, started by the stack's keeper from its last snapshot, answers `status` (goal: "
                      "no failed request). The keeper is the process `isola up` started as", "",
                  "| services | p50 | max | keeper RSS |", "|---|---|---|---|"]
        for r in u["killed"]:
            lines.append(f"| {r['n']} | {r['p50_ms']:.0f} ms | {r['max_ms']:.0f} ms | {r['keeper_rss_kb'] / 1024:.1f} MiB |")
        r = u["killed_load"]
        lines += ["", f"{KILLS - 1} kills under one client on a held socket: {r['n']} requests, {r['failed']} failed; "
                      f"p99 {r['p99']:.2f} ms against {r['steady_p99']:.2f} ms steady"]
    return lines


if __name__ == "__main__":
    # Standalone: python3 scripts/bench_upgrade.py [N,N…] (after cargo build --release).
    import os
    import tempfile
    sys.path.insert(0, os.path.dirname(__file__))
    import bench
    counts = [int(c) for c in (sys.argv[1] if len(sys.argv) > 1 else "100,1000").split(",")]
    with tempfile.TemporaryDirectory() as work:
        print("\n".join(report(run(work, bench.Up, bench.request, bench.sleeper, counts))))
