"""Neighbour isolation in `make bench` (VM setting, cgroup v2): a victim
service times a small fixed piece of work in a loop; beside it, in turn,
one hog with its limits. Reported per hog: the victim's p99 against its
idle baseline (same run), the slowest `status` answer meanwhile, whether
the victim was touched (restarts), and the supervisor's RSS growth.

Imported by bench.py; `Up` and `request` come from there.
"""

import os
import sys
import time

WINDOW_S = 4
# The victim's loop: the time of sum(range(N)) in µs, one line of samples
# per half second, appended to the file it is given.
VICTIM = """import sys, time
out = open(sys.argv[1], "a")
lat, flush = [], time.monotonic() + 0.5
while True:
    t0 = time.perf_counter()
    sum(range(5000))
    lat.append(time.perf_counter() - t0)
    time.sleep(0.002)
    if time.monotonic() >= flush:
        out.write(" ".join("%d" % (x * 1e6) for x in lat) + "\\n")
        out.flush()
        lat, flush = [], flush + 0.5
"""

BOMB = "b() { b | b & }; b"
MEMORY = "import time\nx = []\nwhile True:\n    x.append(bytearray(1 << 20))\n"
FDS = "import os, time\nfds = []\nwhile True:\n    try:\n        fds.append(os.open('/dev/null', os.O_RDONLY))\n    except OSError:\n        for fd in fds: os.close(fd)\n        fds = []\n"
CPU = "while :; do :; done & while :; do :; done"
FILL = "while :; do dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>/dev/null; rm -f /tmp/fill; done"
FLOOD = "yes 'flood flood flood flood flood flood flood flood flood flood' | head -c 100000000; sleep 1000"


def service(args, **extra):
    s = {"process": {"args": args, "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
         "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
         "restart": {"policy": "always", "delayMs": 100, "limit": {"burst": 100000, "intervalMs": 1000}}}
    for k, v in extra.items():
        if k == "resources":
            s["linux"]["resources"] = v
        else:
            s[k] = v
    return s


def fd_bomb():
    s = service([sys.executable, "-c", FDS])
    s["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}]
    return s


def disk():
    return tuple(int(x) for x in open("/sys/block/vda/dev").read().split(":"))


def hogs():
    major, minor = disk()
    return {
        "fork bomb (pids.max 64)": service(["sh", "-c", BOMB], resources={"pids": {"limit": 64}}),
        "memory bomb (memory.max 64 MiB, no swap)": service(
            [sys.executable, "-c", MEMORY], resources={"memory": {"limit": 64 << 20, "swap": 64 << 20}}),
        "CPU hog, 2 threads (cpu.max 50 %)": service(
            ["sh", "-c", CPU], resources={"cpu": {"quota": 50000, "period": 100000}}),
        "io hog (io.max 4 MB/s on the disk)": service(
            ["dd", "if=/dev/zero", "of=/dev/vda", "bs=1M", "count=100000", "oflag=direct"],
            mounts=[{"destination": "/dev/vda", "type": "bind", "source": "/dev/vda"}],
            resources={"blockIO": {"throttleWriteBpsDevice": [{"major": major, "minor": minor, "rate": 4 << 20}]},
                       "devices": [{"allow": True, "type": "b", "major": major, "minor": minor, "access": "rw"}]}),
        "fd bomb (RLIMIT_NOFILE 1024)": fd_bomb(),
        "tmpfs filler (/tmp size=16m)": service(
            ["sh", "-c", FILL],
            mounts=[{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["size=16m"]}]),
        "log flood (100 MB of output)": service(["sh", "-c", FLOOD]),
    }


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")


def window(work, Up, request, name, hog):
    """Victim (and hog) for WINDOW_S; the victim's samples after the first
    second, the slowest status, the victim's restarts, RSS growth."""
    out = os.path.join(work, f"victim-{len(os.listdir(work))}.txt")
    open(out, "w").close()
    victim = service([sys.executable, "-c", VICTIM, out],
                     mounts=[{"destination": out, "type": "bind", "source": out}])
    services = {"victim": victim}
    if hog is not None:
        services["hog"] = hog
    up = Up(work, name, services, "vm")
    # The victim runs (a hog may well be in backoff: that is its limit).
    t0 = time.perf_counter()
    while not any(s["name"] == "victim" and s["state"] == "running" for s in up.status()):
        if time.perf_counter() - t0 > 120:
            raise SystemExit("bench: the victim never ran")
        time.sleep(0.1)
    time.sleep(1)
    rss0 = up.rss_kb()
    start_line = sum(1 for _ in open(out))
    slowest = 0.0
    t_end = time.perf_counter() + WINDOW_S
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        request(up.sock, {"cmd": "status"})
        slowest = max(slowest, (time.perf_counter() - t0) * 1000)
        time.sleep(0.2)
    victim_row = next(s for s in up.status() if s["name"] == "victim")
    rss = up.rss_kb() - rss0
    up.down()
    lines = open(out).read().splitlines()[start_line:]
    samples = [int(x) for line in lines for x in line.split()]
    return {"p50": pct(samples, 50), "p99": pct(samples, 99), "n": len(samples), "status_ms": slowest,
            "victim_restarts": victim_row["restarts"], "victim_state": victim_row["state"], "rss_kb": rss}


def run(work, Up, request):
    work = os.path.join(work, "neighbours")
    os.makedirs(work, exist_ok=True)
    out = {"baseline": window(work, Up, request, "nb-idle", None)}
    for k, (label, hog) in enumerate(hogs().items()):
        out[label] = window(work, Up, request, f"nb-{k}", hog)
    return out


def report(n):
    base = n["baseline"]["p99"]
    lines = ["", f"neighbour isolation: a victim timing sum(range(5000)) in a loop beside one hog at a time, {WINDOW_S} s each "
                 f"(idle p50 {n['baseline']['p50']} µs, p99 {base} µs)", "",
             "| hog | victim p99 (µs) | / idle p99 | slowest status (ms) | victim restarts | supervisor RSS growth (KiB) |",
             "|---|---|---|---|---|---|"]
    for label, r in n.items():
        if label == "baseline":
            continue
        ratio = r["p99"] / base if base else float("nan")
        lines.append(f"| {label} | {r['p99']} | {ratio:.2f} | {r['status_ms']:.1f} | {r['victim_restarts']} | {r['rss_kb']} |")
    return lines


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    import bench
    import tempfile
    with tempfile.TemporaryDirectory() as work:
        print("\n".join(report(run(work, bench.Up, bench.request))))
