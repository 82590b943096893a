"""Health probes in `make bench` (host setting): what a check costs the
supervisor, beside the same check done by a process per check (what docker
and process-compose do), 1000 services probed every second, and the time
from a service turning unhealthy to its replacement being ready.

Imported by bench.py; `Up`, `request` and the isola binary come from there.
"""

import http.server
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

# Services probed in the scale row, and the window CPU is measured over.
SCALE_N = 1000
WINDOW_S = 10
EXEC_N = 100
# Process-per-check baseline: this many sequential `wget` runs.
BASELINE_N = 200


class Target:
    """An HTTP server on the host's loopback answering every GET with 200
    (Connection: close), counting the requests; also a TCP target."""

    def __init__(self):
        count = self.count = [0]

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self):
                count[0] += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        class S(http.server.ThreadingHTTPServer):
            request_queue_size = 4096
            daemon_threads = True

        self.srv = S(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def stop(self):
        self.srv.shutdown()


def cpu_s(pid, children=False):
    """utime+stime of `pid` (and of its reaped children) in seconds."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def svc(probe, ns=("pid", "mount", "uts", "ipc")):
    return {"process": {"args": ["/bin/sleep", "100000"]},
            "linux": {"namespaces": [{"type": t} for t in ns]},
            "probes": {"liveness": dict(probe, periodMs=1000, timeoutMs=1000, failureThreshold=3)}}


def probed_stack(work, Up, name, n, probe, children=False):
    """`n` services with this liveness probe every second: supervisor CPU
    over WINDOW_S, the checks done meanwhile, status latency."""
    up = Up(work, name, {f"s{i}": svc(probe) for i in range(n)}, "host")
    up.wait_all()
    time.sleep(2)
    c0 = cpu_s(up.proc.pid, children)
    t0 = time.perf_counter()
    time.sleep(WINDOW_S)
    cpu = cpu_s(up.proc.pid, children) - c0
    wall = time.perf_counter() - t0
    status_ms = up.status_ms(10)
    healthy = sum(1 for s in up.status() if s.get("health") == "healthy")
    up.down()
    return {"n": n, "cpu_pct": 100 * cpu / wall, "wall": wall, "cpu_s": cpu,
            "status_ms": status_ms, "healthy": healthy}


def baseline(target):
    """The same HTTP check as a process per check: busybox wget."""
    url = f"http://127.0.0.1:{target.port}/"
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    for _ in range(BASELINE_N):
        subprocess.run(["busybox", "wget", "-q", "-O", "/dev/null", url], check=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"n": BASELINE_N, "cpu_ms_per_check": 1000 * cpu / BASELINE_N, "wall_ms_per_check": 1000 * wall / BASELINE_N}


LISTENER = """import signal, socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 9000))
s.listen(64)
sick = []
signal.signal(signal.SIGUSR1, lambda *a: sick.append(1))
while not sick:
    s.accept()[0].close()
s.close()
while True:
    time.sleep(1000)
"""


def replacement(work, Up, request):
    """A service in its own network namespace stops listening (SIGUSR1);
    liveness tcp every 100 ms, threshold 3, restart delay 0; from the
    signal to the new sandbox's `ready` event."""
    tcp = {"tcp": {"port": 9000}}
    s = {"process": {"args": [sys.executable, "-c", LISTENER]},
         "linux": {"namespaces": [{"type": t} for t in ("pid", "mount", "network")]},
         "restart": {"policy": "always", "delayMs": 0, "maxDelayMs": 0},
         "probes": {"startup": dict(tcp, periodMs=20, failureThreshold=500),
                    "liveness": dict(tcp, periodMs=100, failureThreshold=3),
                    "readiness": dict(tcp, periodMs=20, failureThreshold=1)}}
    up = Up(work, "replace", {"svc": s}, "host")
    # Ready, and liveness passed since: no failure counted before the signal.
    while not (up.status()[0].get("ready") and up.status()[0].get("probe", {}).get("liveness", {}).get("ok")):
        time.sleep(0.02)
    ev = socket.socket(socket.AF_UNIX)
    ev.connect(up.sock)
    ev.sendall(b'{"cmd":"events"}\n')
    f = ev.makefile()
    f.readline()
    pid = up.status()[0]["pid"]
    t0 = time.perf_counter()
    os.kill(pid, signal.SIGUSR1)
    seen = {}
    for line in f:
        e = line.split('"event":"', 1)[-1].split('"', 1)[0]
        t = time.perf_counter() - t0
        if e.startswith("unhealthy") and "killed" not in seen:
            seen["killed"] = t
        if e.startswith("running") and "killed" in seen:
            seen["running"] = t
        if e == "ready" and "running" in seen:
            seen["ready"] = t
            break
    ev.close()
    up.down()
    return {"floor_ms": 300, **{k: v * 1000 for k, v in seen.items()}}



def run(work, Up, request):
    target = Target()
    out = {}
    try:
        http = {"http": {"port": target.port, "path": "/"}}
        c0 = target.count[0]
        out["http"] = probed_stack(work, Up, "probe-http", SCALE_N, http)
        out["http"]["checks"] = target.count[0] - c0
        out["tcp"] = probed_stack(work, Up, "probe-tcp", SCALE_N, {"tcp": {"port": target.port}})
        out["exec"] = probed_stack(work, Up, "probe-exec", EXEC_N, {"exec": ["/bin/true"]}, children=True)
        out["baseline"] = baseline(target)
    finally:
        target.stop()
    out["replacement"] = replacement(work, Up, request)
    return out


def report(h):
    """Markdown lines for bench/results.md."""
    rows = []
    for k, label in (("http", "`http` (socket in the loop)"), ("tcp", "`tcp` (socket in the loop)"),
                     ("exec", "`exec` (`/bin/true` joined to the sandbox)")):
        r = h[k]
        per_check = 1000 * r["cpu_s"] / (r["n"] * r["wall"])
        rows.append(f"| {label} | {r['n']} | {r['cpu_pct']:.1f} % | {per_check:.3f} | {r['status_ms']:.2f} | {r['healthy']}/{r['n']} |")
    b = h["baseline"]
    rows.append(f"| process per check (`busybox wget`, what docker/process-compose do) | - | - | "
                f"{b['cpu_ms_per_check']:.3f} | - | - |")
    r = h["replacement"]
    lines = ["", "health probes: services probed every 1 s for 10 s (supervisor CPU; exec includes the probe processes)", "",
             "| probe | services | supervisor CPU (% of a core) | CPU per check (ms) | status request (ms) | healthy |",
             "|---|---|---|---|---|---|"] + rows
    if "ready" in r:
        lines += ["", f"unhealthy → replacement ready (liveness tcp every 100 ms, threshold 3, restart delay 0; floor "
                      f"{r['floor_ms']:.0f} ms): killed at {r['killed']:.0f} ms, new sandbox running at "
                      f"{r['running']:.0f} ms, ready at {r['ready']:.0f} ms"]
    return lines
