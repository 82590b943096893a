"""Autoscaling in `make bench` (host setting, queue signal; the CPU signal
needs a cgroup and is left to the VM tests):

- from zero: a connection to a service with no replica → its answer,
  beside the same service held stopped and started by `isola start` at
  the moment the client connects (start + readiness + one request: the
  floor the wake path adds to);
- a load step (1 → 8 clients): → the first new replica ready;
- a ramp of slow requests (1 → 16 → 1 clients): failed requests, p99 and
  replica-seconds, autoscaled (max 8) beside a fixed `replicas: 8`;
- the supervisor's CPU with 100 autoscaled services idle, beside the same
  100 with a fixed count.

Imported by bench.py; `Up` and `request` come from there.
"""

import os
import socket
import statistics
import sys
import threading
import time

PORT = 18950
COLD = 20

SERVER = """import os, select, signal, socket, time
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
s = socket.socket(fileno=3)
s.setblocking(False)
delay = float(os.environ.get("DELAY", "0"))
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.connect(os.environ["NOTIFY_SOCKET"])
n.send(b"READY=1")
while not stop:
    if not select.select([s], [], [], 0.1)[0]:
        continue
    try:
        c, _ = s.accept()
    except BlockingIOError:
        continue
    c.setblocking(True)
    time.sleep(delay)
    c.sendall(os.environ.get("ISOLA_REPLICA", "1").encode() + b"\\n")
    c.close()
"""


def service(port, delay=0.0, autoscale=None, replicas=None):
    s = {"process": {"args": [sys.executable, "-c", SERVER], "env": [f"DELAY={delay}", "PATH=/usr/bin:/bin"]},
         "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
         "sockets": [{"name": "http", "listen": f"tcp://127.0.0.1:{port}"}],
         "stop": {"timeoutMs": 5000},
         "notify": "systemd"}
    if autoscale:
        s["autoscale"] = autoscale
    if replicas:
        s["replicas"] = replicas
    return s


def ask(port, timeout=60):
    c = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    data = c.recv(64)
    c.close()
    if not data.endswith(b"\n"):
        raise OSError("no answer")
    return data


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def from_zero(work, Up, request):
    """First response from zero, beside start + readiness + a request:
    interleaved rounds, so both see the same machine."""
    zero = Up(work, "as-zero", {"web": service(PORT, autoscale={"min": 0, "max": 1, "idleMs": 300})}, "host")
    fixed = Up(work, "as-start", {"web": service(PORT + 1)}, "host")
    fixed.wait_all()
    cold, started = [], []
    for _ in range(COLD):
        wait_zero(zero)
        t0 = time.perf_counter()
        ask(PORT)
        cold.append((time.perf_counter() - t0) * 1000)
        request(fixed.sock, {"cmd": "stop", "name": "web"})
        t0 = time.perf_counter()
        c = socket.create_connection(("127.0.0.1", PORT + 1), timeout=60)
        request(fixed.sock, {"cmd": "start", "name": "web"})
        if not c.recv(64).endswith(b"\n"):
            raise SystemExit("bench: the started service did not answer")
        c.close()
        started.append((time.perf_counter() - t0) * 1000)
    warm = []
    for _ in range(50):
        t0 = time.perf_counter()
        ask(PORT + 1)
        warm.append((time.perf_counter() - t0) * 1000)
    zero.down()
    fixed.down()
    return {"cold_ms": summary(cold), "warm_ms": summary(warm), "start_ms": summary(started)}


def wait_zero(up):
    while not any(s["state"] == "scaled to zero" for s in up.status()):
        time.sleep(0.02)


def summary(xs):
    return {"p50": statistics.median(xs), "p99": pct(xs, 0.99), "n": len(xs)}


class Clients:
    """`active` clients sending requests back to back; latency of each."""

    def __init__(self, port, most):
        self.port, self.active, self.done = port, 0, False
        self.lat, self.failed = [], 0
        self.threads = [threading.Thread(target=self.run, args=(k,)) for k in range(most)]
        for t in self.threads:
            t.start()

    def run(self, k):
        while not self.done:
            if k >= self.active:
                time.sleep(0.01)
                continue
            t0 = time.perf_counter()
            try:
                ask(self.port)
                self.lat.append((time.perf_counter() - t0) * 1000)
            except OSError:
                self.failed += 1

    def stop(self):
        self.done = True
        for t in self.threads:
            t.join()


def running(up):
    return sum(1 for s in up.status() if s["state"] == "running")


def step(work, Up):
    """1 → 8 clients: until the first new replica is ready."""
    scale = {"min": 1, "max": 4, "backlog": 2, "upAfterMs": 200, "downAfterMs": 60000}
    up = Up(work, "as-step", {"web": service(PORT + 2, delay=0.05, autoscale=scale)}, "host")
    up.wait_all()
    load = Clients(PORT + 2, 8)
    load.active = 1
    time.sleep(1)
    load.active = 8
    t0 = time.perf_counter()
    while not any(s["name"] == "web.2" and s["ready"] for s in up.status()):
        time.sleep(0.005)
    ready = (time.perf_counter() - t0) * 1000
    load.stop()
    up.down()
    return {"ready_ms": ready, "up_after_ms": scale["upAfterMs"], "failed": load.failed}


RAMP = [1, 2, 4, 8, 16, 16, 8, 4, 2, 1]


def ramp(work, Up, label, port, svc):
    """The ramp, 1.5 s a step: failures, latency, replica-seconds."""
    up = Up(work, f"as-ramp-{label}", {"web": svc}, "host")
    up.wait_all()
    load = Clients(port, max(RAMP))
    replica_s, most = 0.0, 0
    for n in RAMP:
        load.active = n
        end = time.perf_counter() + 1.5
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            r = running(up)
            most = max(most, r)
            time.sleep(0.1)
            replica_s += r * (time.perf_counter() - t0)
    load.stop()
    up.down()
    return {"ok": len(load.lat), "failed": load.failed, "p50_ms": statistics.median(load.lat),
            "p99_ms": pct(load.lat, 0.99), "replica_s": replica_s, "most": most}


def idle_cpu(work, Up, label, autoscale):
    """Supervisor CPU over 10 s with 100 idle services, each its socket."""
    svcs = {}
    for i in range(100):
        s = {"process": {"args": ["/bin/sleep", "100000"]},
             "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
             "sockets": [{"name": "http", "listen": f"tcp://127.0.0.1:{PORT + 100 + i}"}]}
        if autoscale:
            s["autoscale"] = {"min": 1, "max": 4}
        else:
            s["replicas"] = 1
        svcs[f"s{i}"] = s
    up = Up(work, f"as-idle-{label}", svcs, "host")
    up.wait_all()
    time.sleep(1)
    before = cpu_ticks(up.proc.pid)
    time.sleep(10)
    used = (cpu_ticks(up.proc.pid) - before) / os.sysconf("SC_CLK_TCK")
    up.down()
    return {"cpu_percent": used / 10 * 100}


def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def run(work, Up, request):
    scale = {"min": 1, "max": 8, "backlog": 2, "upAfterMs": 300, "downAfterMs": 1500}
    return {"zero": from_zero(work, Up, request),
            "step": step(work, Up),
            "ramp_auto": ramp(work, Up, "auto", PORT + 3, service(PORT + 3, delay=0.05, autoscale=scale)),
            "ramp_fixed": ramp(work, Up, "fixed", PORT + 4, service(PORT + 4, delay=0.05, replicas=8)),
            "idle_auto": idle_cpu(work, Up, "auto", True),
            "idle_fixed": idle_cpu(work, Up, "fixed", False)}


def report(a):
    """Markdown lines for bench/results.md."""
    z, s = a["zero"], a["step"]
    lines = ["", "autoscaling on the held socket's accept queue (a python server that signals READY=1; host, no cgroup)", "",
             "| | p50 ms | p99 ms | N |", "|---|---|---|---|"]
    for k, label in (("cold_ms", "first response from zero (the connection starts the replica)"),
                     ("start_ms", "the same service held stopped, `isola start` as the client connects (start + readiness + request)"),
                     ("warm_ms", "a request to it running")):
        r = z[k]
        lines.append(f"| {label} | {r['p50']:.1f} | {r['p99']:.1f} | {r['n']} |")
    gap = z["cold_ms"]["p50"] - z["start_ms"]["p50"]
    lines += ["", f"from zero vs start + readiness: {gap:+.1f} ms at p50 (goal ≤ 10 ms)", "",
              f"load step 1 → 8 clients: the first new replica ready after {s['ready_ms']:.0f} ms "
              f"(upAfterMs {s['up_after_ms']} + a start), {s['failed']} failed", "",
              "a ramp 1 → 16 → 1 clients, 1.5 s a step, 50 ms requests", "",
              "| | answered | failed | p50 ms | p99 ms | replica-seconds | most replicas |", "|---|---|---|---|---|---|---|"]
    for k, label in (("ramp_auto", "autoscale max 8, backlog 2, upAfterMs 300, downAfterMs 1500"), ("ramp_fixed", "fixed `replicas: 8`")):
        r = a[k]
        lines.append(f"| {label} | {r['ok']} | {r['failed']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['replica_s']:.1f} | {r['most']} |")
    ra, rf = a["ramp_auto"], a["ramp_fixed"]
    lines += ["", f"p99 autoscaled / fixed: {ra['p99_ms'] / rf['p99_ms']:.2f}× (goal ≤ 2×); replica-seconds "
              f"{ra['replica_s'] / rf['replica_s']:.2f}× the fixed count's", "",
              f"supervisor CPU with 100 idle services over 10 s: autoscaled {a['idle_auto']['cpu_percent']:.2f} % of a core, "
              f"fixed count {a['idle_fixed']['cpu_percent']:.2f} % (goal ≤ 1 %)"]
    return lines


if __name__ == "__main__":
    # On its own: `python3 scripts/bench_autoscale.py` (root, host).
    import json
    import tempfile
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench
    res = run(tempfile.mkdtemp(prefix="isola-bench-as-"), bench.Up, bench.request)
    print("BENCH-JSON: " + json.dumps(res))
    print("\n".join(report(res)))
