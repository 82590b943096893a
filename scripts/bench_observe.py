"""Observability in `make bench`: what a scrape costs at 1,000 and 10,000
services and how `status` fares during back-to-back scrapes; what
`resourceRules` on 1,000 services cost the supervisor; how fast service
lines reach the log files alone, and with copies to syslog and journald.

Imported by bench.py; `Up`, `request`, `sleeper` and the isola binary come
from there. The rules and journald rows need the VM (cgroups; a journald we
may start); the 10,000-service scrape runs on the host (no cgroup files:
the exposition's own cost).
"""

import os
import socket
import statistics
import subprocess
import threading
import time

RULES_N = 1000
RULES_WINDOW_S = 20
LOG_LINES = 100_000
JOURNAL_SOCKET = "/run/systemd/journal/socket"


def get_metrics(port):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
    while c.recv(1 << 16):
        pass
    c.close()


def status_once(sock):
    """One status request, request out to the whole reply in, ms."""
    c = socket.socket(socket.AF_UNIX)
    c.connect(sock)
    t0 = time.perf_counter()
    c.sendall(b'{"cmd":"status"}\n')
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = c.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
    c.close()
    return (time.perf_counter() - t0) * 1000


def scrape_row(work, Up, setting, sleeper, n, free_port):
    """`GET /metrics` at `n` services: median wall and supervisor CPU per
    scrape, body size; `status` alone and during back-to-back scrapes."""
    port = free_port()
    svc = sleeper(setting)
    svc["stderr"] = "stdout"
    if setting == "host":
        del svc["root"]
        svc["process"]["args"] = ["/bin/busybox", "sleep", "100000"]
    up = Up(work, f"scrape{n}", {f"s{i}": svc for i in range(n)}, setting,
            ["--metrics", f"tcp://127.0.0.1:{port}"])
    if up.wait_all(timeout=900) is None:
        up.down()
        return None
    alone = [status_once(up.sock) for _ in range(10)]
    row = up.scrape(port, times=5)
    stop = threading.Event()

    def scraper():
        while not stop.is_set():
            get_metrics(port)

    t = threading.Thread(target=scraper)
    t.start()
    during = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 5:
        during.append(status_once(up.sock))
        time.sleep(0.05)
    stop.set()
    t.join()
    row["status_alone_ms"] = statistics.median(alone)
    row["status_during_ms"] = statistics.median(during)
    row["status_during_max_ms"] = max(during)
    up.down()
    return row


def rules_row(work, Up, setting, sleeper):
    """Supervisor CPU over RULES_WINDOW_S with RULES_N running services,
    with a memory rule and a cpu rule each (checked every second, never
    crossed) and with a pressure rule each (a PSI trigger: nothing read),
    beside the same stack without rules."""
    out = {"n": RULES_N, "window_s": RULES_WINDOW_S}
    kinds = {
        "none": None,
        "memory_cpu": [{"metric": "memory", "above": "1G", "forMs": 60000, "action": "event"},
                       {"metric": "cpu", "above": "95%", "forMs": 60000, "action": "event"}],
        "pressure": [{"metric": "memoryPressure", "above": "50%", "forMs": 60000, "action": "event"}],
    }
    for name, rules in kinds.items():
        svc = sleeper(setting)
        svc["stderr"] = "stdout"
        if rules:
            svc["resourceRules"] = rules
        up = Up(work, f"rules-{name}", {f"s{i}": svc for i in range(RULES_N)}, setting)
        if up.wait_all(timeout=900) is None:
            up.down()
            continue
        time.sleep(2)
        cpu0 = up.cpu_s()
        time.sleep(RULES_WINDOW_S)
        out[name] = {"cpu_pct": (up.cpu_s() - cpu0) / RULES_WINDOW_S * 100}
        up.down()
    return out


def start_journald():
    """A standalone systemd-journald (the VM has none), or None."""
    if os.path.exists(JOURNAL_SOCKET) or not os.path.exists("/lib/systemd/systemd-journald"):
        return None
    os.makedirs("/run/systemd/journal", exist_ok=True)
    p = subprocess.Popen(["/lib/systemd/systemd-journald"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        if os.path.exists(JOURNAL_SOCKET):
            return p
        time.sleep(0.05)
    p.kill()
    return None


def log_rate(up, name):
    """Lines per second between the payload's `start` and `done` lines, as
    the log file's timestamps say."""
    logs = os.path.join(up.dir, "logs")
    t_end = time.perf_counter() + 600
    text = ""
    while time.perf_counter() < t_end:
        # The live file and the rotated ones, oldest first.
        files = sorted((f for f in os.listdir(logs) if f.startswith(f"{name}.log")),
                       key=lambda f: -int(f.rsplit(".", 1)[1]) if f[-1].isdigit() else 0)
        text = ""
        for f in files:
            try:
                text += open(os.path.join(logs, f)).read()
            except OSError:
                pass
        if " done" in text:
            break
        time.sleep(0.2)
    stamps = {}
    for line in text.splitlines():
        ts, _stream, msg = (line.split(" ", 2) + ["", ""])[:3]
        if msg in ("start", "done"):
            stamps[msg] = time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000
    if len(stamps) < 2:
        return None
    return LOG_LINES / max(stamps["done"] - stamps["start"], 0.001)


def dropped(up, request):
    """isola_log_lines_dropped_total by sink."""
    text = request(up.sock, {"cmd": "metrics"}).get("metrics", "")
    out = {}
    for line in text.splitlines():
        if line.startswith("isola_log_lines_dropped_total{sink="):
            sink = line.split('"')[1]
            out[sink] = float(line.rsplit(" ", 1)[1])
    return out


def logs_row(work, Up, request, setting, sleeper):
    """A payload writes LOG_LINES lines of 100 bytes: lines/s into the log
    file alone, with a copy to a syslog receiver over UDP (this process,
    reading), and with a copy to journald (VM: standalone)."""
    writer = sleeper(setting)
    writer["process"]["args"] = ["/bin/sh", "-c",
                                 f"echo start; yes {'x' * 99} | head -n {LOG_LINES}; echo done; exec sleep 100000"]
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    got = [0]
    stop = threading.Event()

    def receive():
        rx.settimeout(0.2)
        while not stop.is_set():
            try:
                rx.recv(65536)
                got[0] += 1
            except socket.timeout:
                pass

    t = threading.Thread(target=receive)
    t.start()
    journald = start_journald() if setting == "vm" else None
    kinds = {"files": None, "syslog_udp": {"syslog": f"udp://127.0.0.1:{rx.getsockname()[1]}"}}
    if journald or (setting == "vm" and os.path.exists(JOURNAL_SOCKET)):
        kinds["journald"] = {"journald": True}
    out = {"lines": LOG_LINES}
    for name, logging in kinds.items():
        svc = dict(writer)
        if logging:
            svc["logging"] = logging
        got[0] = 0
        up = Up(work, f"logs-{name}", {"w": svc}, setting)
        rate = log_rate(up, "w")
        out[name] = {"lines_per_s": rate, "dropped": dropped(up, request)}
        if name == "syslog_udp":
            time.sleep(0.5)
            out[name]["received"] = got[0]
        up.down()
    stop.set()
    t.join()
    if journald:
        journald.kill()
        journald.wait()
    return out


def run(work, Up, request, setting, sleeper, free_port, counts):
    out = {"scrape": {}}
    for n in counts:
        out["scrape"][n] = scrape_row(work, Up, setting, sleeper, n, free_port)
    if setting == "vm":
        out["rules"] = rules_row(work, Up, setting, sleeper)
    out["logs"] = logs_row(work, Up, request, setting, sleeper)
    return out


def report(h, v):
    """Markdown lines for the results (h, v: the two settings' results)."""
    lines = ["", "### Observability", ""]
    lines += ["| setting | services | scrape wall | supervisor CPU per scrape | body | status alone | status during scrapes (median / max) |",
              "|---|---|---|---|---|---|---|"]
    for name, res in (("host", h), ("vm", v)):
        for n, r in sorted((res.get("observe", {}).get("scrape") or {}).items(), key=lambda kv: int(kv[0])):
            if not r:
                continue
            lines.append(f"| {name} | {n} | {r['wall_ms']:.1f} ms | {r['cpu_ms']:.1f} ms | {r['bytes'] / 1024:.0f} KiB "
                         f"| {r['status_alone_ms']:.1f} ms | {r['status_during_ms']:.1f} / {r['status_during_max_ms']:.0f} ms |")
    rules = v.get("observe", {}).get("rules")
    if rules:
        lines += ["", f"resourceRules on {rules['n']} running services (VM), supervisor CPU over {rules['window_s']} s: " +
                  ", ".join(f"{k} {r['cpu_pct']:.2f}% of a core" for k, r in rules.items() if isinstance(r, dict))]
    for name, res in (("host", h), ("vm", v)):
        logs = res.get("observe", {}).get("logs")
        if not logs:
            continue
        parts = []
        for k, r in logs.items():
            if isinstance(r, dict) and r.get("lines_per_s"):
                extra = f", {int(r['received'])} received" if "received" in r else ""
                drops = sum(r.get("dropped", {}).values())
                parts.append(f"{k} {r['lines_per_s']:,.0f} lines/s ({drops:.0f} dropped{extra})")
        lines += ["", f"log lines ({name}, {logs['lines']:,} of 100 bytes): " + "; ".join(parts)]
    return lines



if __name__ == "__main__":
    # Only these rows: `python3 scripts/bench_observe.py host|vm [--scrape 1000,10000]`.
    import json
    import shutil
    import sys
    import tempfile

    import bench

    setting = sys.argv[1]
    counts = [int(c) for c in bench.arg("--scrape", "1000").split(",")]
    work = tempfile.mkdtemp(prefix="isola-observe-")
    bench.make_bundle(work, setting == "vm")
    res = {"setting": setting,
           "observe": run(work, bench.Up, bench.request, setting, bench.sleeper, bench.free_port, counts)}
    print("BENCH-JSON: " + json.dumps(res), flush=True)
    shutil.rmtree(work, ignore_errors=True)
