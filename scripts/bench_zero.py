"""Zero downtime in `make bench` (host setting): requests that fail while
a service restarts ten times under load — with the socket held by isola
(`replace`, `overlap`) and with the service binding its own port (the
control: what systemd without socket activation, docker and supervisord
give) — the time from `isola restart` to the new instance answering, and
request latency during a rolling restart of 4 replicas against steady
state.

Imported by bench.py; `Up` and `request` come from there.
"""

import socket
import statistics
import sys
import threading
import time

RESTARTS = 10
PORT = 18900
# Steady-state and rolling windows of the replica row.
STEADY_S = 5

SERVER = """import os, select, signal, socket
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
me = os.urandom(4).hex().encode() + b"\\n"
if "LISTEN_FDS" in os.environ:
    s = socket.socket(fileno=3)
else:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", PORT))
    s.listen(128)
if "NOTIFY_SOCKET" in os.environ:
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n.connect(os.environ["NOTIFY_SOCKET"])
    n.send(b"READY=1")
while not stop:
    if select.select([s], [], [], 0.1)[0]:
        c, _ = s.accept()
        c.sendall(me)
        c.close()
"""


def service(held, mode, replicas=None):
    s = {"process": {"args": [sys.executable, "-c", SERVER.replace("PORT", str(PORT))]},
         "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
         "restart": {"policy": "always", "mode": mode, "delayMs": 0, "limit": {"burst": 1000, "intervalMs": 60000}},
         "notify": "systemd"}
    if held:
        s["sockets"] = [{"name": "http", "listen": f"tcp://127.0.0.1:{PORT}"}]
    if replicas:
        s["replicas"] = replicas
    return s


class Load:
    """One client connecting again and again: answers, failures, latency
    of each answered request, and the last answer (which instance)."""

    def __init__(self):
        self.ok = 0
        self.failed = 0
        self.lat = []
        self.last = None
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            t0 = time.perf_counter()
            try:
                c = socket.create_connection(("127.0.0.1", PORT), timeout=30)
                data = c.recv(64)
                c.close()
                if not data.endswith(b"\n"):
                    raise OSError("no answer")
                self.lat.append((time.perf_counter() - t0) * 1000)
                self.last = data
                self.ok += 1
            except OSError:
                self.failed += 1
                time.sleep(0.001)

    def finish(self):
        self.stop = True
        self.t.join()


def wait_answer(load, other_than=None, timeout=60):
    t0 = time.perf_counter()
    n = load.ok
    while load.ok < n + 1 or load.last == other_than:
        if time.perf_counter() - t0 > timeout:
            raise SystemExit("bench: the service stopped answering")
        time.sleep(0.001)


def restarts(work, Up, request, label, held, mode):
    """Ten restarts under load: failed requests and restart → new answer."""
    up = Up(work, f"zd-{label}", {"web": service(held, mode)}, "host")
    up.wait_all()
    load = Load()
    wait_answer(load)
    to_new = []
    t_start = time.perf_counter()
    for _ in range(RESTARTS):
        old = load.last
        t0 = time.perf_counter()
        request(up.sock, {"cmd": "restart", "name": "web"})
        wait_answer(load, other_than=old)
        to_new.append((time.perf_counter() - t0) * 1000)
    seconds = time.perf_counter() - t_start
    load.finish()
    up.down()
    return {"ok": load.ok, "failed": load.failed, "to_new_ms": statistics.median(to_new), "seconds": seconds,
            "max_ms": max(load.lat)}


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")


def rolling(work, Up, request):
    """Latency of 4 replicas: steady, then during a rolling restart."""
    up = Up(work, "zd-rolling", {"web": service(True, "replace", replicas=4)}, "host")
    up.wait_all()
    load = Load()
    wait_answer(load)
    time.sleep(STEADY_S)
    steady = list(load.lat)
    mark = len(load.lat)
    failed0 = load.failed
    t0 = time.perf_counter()
    request(up.sock, {"cmd": "restart", "name": "web"})
    roll_s = time.perf_counter() - t0
    during = load.lat[mark:]
    failed = load.failed - failed0
    load.finish()
    up.down()
    return {"steady_p50": pct(steady, 50), "steady_p99": pct(steady, 99), "roll_p50": pct(during, 50),
            "roll_p99": pct(during, 99), "roll_n": len(during), "roll_s": roll_s, "failed": failed}


def run(work, Up, request):
    return {"replace": restarts(work, Up, request, "replace", True, "replace"),
            "overlap": restarts(work, Up, request, "overlap", True, "overlap"),
            "control": restarts(work, Up, request, "control", False, "replace"),
            "rolling": rolling(work, Up, request)}


def report(z):
    """Markdown lines for bench/results.md."""
    lines = ["", f"zero downtime: {RESTARTS} `isola restart` of one service under load (one client connecting back to back; "
             "the server answers each connection with its instance id and signals READY=1)", "",
             "| | requests answered | failed or refused | restart → new instance answering (median) | slowest request |",
             "|---|---|---|---|---|"]
    for k, label in (("replace", "isola, socket held, `replace`"), ("overlap", "isola, socket held, `overlap`"),
                     ("control", "control: the service binds its own port (systemd without socket activation, docker, supervisord)")):
        r = z[k]
        lines.append(f"| {label} | {r['ok']} in {r['seconds']:.2f} s | {r['failed']} | {r['to_new_ms']:.0f} ms | {r['max_ms']:.0f} ms |")
    r = z["rolling"]
    lines += ["", f"rolling restart of 4 replicas sharing a held socket ({r['roll_s']:.1f} s, {r['roll_n']} requests, "
                  f"{r['failed']} failed): latency p50 {r['roll_p50']:.2f} ms, p99 {r['roll_p99']:.2f} ms; "
                  f"steady state p50 {r['steady_p50']:.2f} ms, p99 {r['steady_p99']:.2f} ms"]
    return lines


if __name__ == "__main__":
    # Standalone: python3 scripts/bench_zero.py (after cargo build --release).
    import os
    import tempfile
    sys.path.insert(0, os.path.dirname(__file__))
    import bench
    with tempfile.TemporaryDirectory() as work:
        print("\n".join(report(run(work, bench.Up, bench.request))))
