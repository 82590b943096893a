#!/usr/bin/env python3
"""isola beside runc, crun, bubblewrap and unshare, same work, same run.

  bench.py host [--n N] [--seq N] [--json FILE]   host setting (no cgroup)
  bench.py vm   [--n N] [--seq N]                 VM setting (cgroup v2), prints BENCH-JSON
  bench.py report HOST.json VM.json               markdown table on stdout

Every tool gets the same OCI bundle: a busybox-static rootfs, namespaces
pid, mount, uts, ipc, net, a /proc mount, Docker's default capabilities, the
starter default-deny seccomp profile (`isola spec`), and in the VM the same
memory.max, cpu.max and pids.max. Runs are interleaved (A B C A B C ...) so
drift hits every tool alike. Only ratios mean anything: these are shared VMs,
and the VM setting runs under TCG.
"""

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISOLA = os.environ.get("ISOLA_BIN", os.path.join(ROOT, "target/x86_64-unknown-linux-gnu/release/isola"))
NS = ["pid", "network", "mount", "uts", "ipc"]
LIMITS = {"memory": {"limit": 64 << 20}, "cpu": {"quota": 50000, "period": 100000}, "pids": {"limit": 64}}


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def make_bundle(work, with_limits):
    """One rootfs, two configs: the OCI one for runc/crun, isola's (same
    body, minus the fields isola places itself)."""
    rootfs = os.path.join(work, "rootfs")
    for d in ("bin", "proc", "dev", "tmp", "sys"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for tool in ("true", "sh", "sleep"):
        os.symlink("busybox", os.path.join(rootfs, "bin", tool))
    starter = json.loads(sh(ISOLA, "spec"))
    cfg = {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": True},
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/true"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": starter["process"]["capabilities"],
            "noNewPrivileges": True,
        },
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {
            "namespaces": [{"type": t} for t in NS],
            "seccomp": starter["linux"]["seccomp"],
        },
    }
    if with_limits:
        cfg["linux"]["resources"] = LIMITS
    with open(os.path.join(work, "isola.json"), "w") as f:
        json.dump(cfg, f)
    # Host-root mode: the same process in the same namespaces, no rootfs —
    # isola makes the host read-only and gives a fresh /dev, /proc and /tmp
    # (bwrap's `--ro-bind / / --dev /dev --proc /proc --tmpfs /tmp`).
    host = json.loads(json.dumps(cfg))
    del host["root"]
    host["mounts"] = []
    with open(os.path.join(work, "isola-hostroot.json"), "w") as f:
        json.dump(host, f)
    oci = json.loads(json.dumps(cfg))
    if with_limits:
        oci["linux"]["cgroupsPath"] = "/isola-bench-peer"
    with open(os.path.join(work, "config.json"), "w") as f:
        json.dump(oci, f)
    return rootfs


def tools(work, setting):
    rootfs = os.path.join(work, "rootfs")
    t = {}
    if setting == "vm":
        t["isola"] = lambda i: [ISOLA, "run", "--name", f"bench{i}", os.path.join(work, "isola.json")]
        if shutil.which("crun"):
            t["crun"] = lambda i: ["crun", "run", "-b", work, f"crun{i}"]
        if shutil.which("runc"):
            t["runc"] = lambda i: ["runc", "run", "-b", work, f"runc{i}"]
    else:
        t["isola"] = lambda i: [ISOLA, "run", "--no-cgroup", "--name", f"bench{i}", os.path.join(work, "isola.json")]
        if shutil.which("crun"):
            t["crun"] = lambda i: ["crun", "--cgroup-manager=disabled", "run", "-b", work, f"crun{i}"]
        if shutil.which("bwrap"):
            t["bwrap"] = lambda i: ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-ipc",
                                    "--ro-bind", rootfs, "/", "--proc", "/proc", "--dev", "/dev", "/bin/true"]
        t["unshare"] = lambda i: ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--net",
                                  "--root", rootfs, "/bin/true"]
        t["isola host-root"] = lambda i: [ISOLA, "run", "--no-cgroup", "--name", f"hr{i}",
                                          os.path.join(work, "isola-hostroot.json")]
        if shutil.which("bwrap"):
            t["bwrap host-root"] = lambda i: ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-uts",
                                              "--unshare-ipc", "--ro-bind", "/", "/", "--dev", "/dev",
                                              "--proc", "/proc", "--tmpfs", "/tmp", "/bin/true"]
    return t


def run_once(argv):
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed ({r.returncode}): {r.stderr.decode().strip()}")
    return dt


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(xs):
    return {"n": len(xs), "p50": pct(xs, 50), "p90": pct(xs, 90), "max": max(xs)}


def start_exit(t, n):
    """create+run+delete of /bin/true, interleaved."""
    res = {k: [] for k in t}
    for i in range(n):
        for name, argv in t.items():
            res[name].append(run_once(argv(i)))
    return {k: summary(v) for k, v in res.items()}


def throughput(t, n):
    """n sandboxes back to back per tool; tools take turns in blocks of 50."""
    total = {k: 0.0 for k in t}
    for block in range(0, n, 50):
        for name, argv in t.items():
            t0 = time.perf_counter()
            for i in range(block, min(n, block + 50)):
                subprocess.run(argv(100000 + i), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            total[name] += time.perf_counter() - t0
    return {k: {"n": n, "seconds": v, "per_second": n / v} for k, v in total.items()}


# ---- the supervisor ------------------------------------------------------

def request(sock, req):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall((json.dumps(req) + "\n").encode())
    buf = read_reply(s)
    s.close()
    return json.loads(buf)


def read_reply(s):
    """Bytes up to the reply's closing newline."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
    return buf


class Up:
    def __init__(self, work, name, services, setting, extra=()):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.sock = os.path.join(self.dir, "s.sock")
        path = os.path.join(self.dir, f"{name}.json")
        with open(path, "w") as f:
            json.dump({"services": services}, f)
        args = [ISOLA, "up", "--quiet", "--socket", self.sock, "--log-dir", os.path.join(self.dir, "logs")]
        if setting == "host":
            args.append("--no-cgroup")
        args += list(extra)
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(args + [path], stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "err"), "w"))
        while True:
            try:
                request(self.sock, {"cmd": "status"})
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"bench: isola up failed: {open(os.path.join(self.dir, 'err')).read()}")
                time.sleep(0.005)

    def status(self):
        return request(self.sock, {"cmd": "status"})["services"]

    def wait_all(self, state="running", timeout=600):
        """Seconds until every service is in `state`, or None (with a note
        on stderr) when some never got there."""
        while True:
            st = self.status()
            if all(s["state"] == state for s in st):
                return time.perf_counter() - self.t0
            if time.perf_counter() - self.t0 > timeout:
                counts = {}
                for s in st:
                    counts[s["state"]] = counts.get(s["state"], 0) + 1
                print(f"bench: not all {len(st)} services {state} after {timeout}s: {counts}", file=sys.stderr)
                return None
            # A status of 1000 rows costs the supervisor (and Python's JSON
            # parse) real time under TCG: poll big stacks less often so the
            # bench does not slow down what it measures.
            time.sleep(min(0.25, max(0.01, len(st) / 4000)))

    def status_ms(self, times):
        """Median of `times` status requests, request out to the whole
        reply in (Python's own JSON parse of 1000 rows would be most of the
        number otherwise)."""
        lat = []
        for _ in range(times):
            c = socket.socket(socket.AF_UNIX)
            c.connect(self.sock)
            t0 = time.perf_counter()
            c.sendall(b'{"cmd":"status"}\n')
            read_reply(c)
            lat.append((time.perf_counter() - t0) * 1000)
            c.close()
        return statistics.median(lat)

    def pid(self):
        """The supervisor's pid: `isola up`'s own is its keeper's (a binary
        from before the keeper says its own)."""
        try:
            return request(self.sock, {"cmd": "info"})["info"]["pid"]
        except (OSError, KeyError, TypeError):
            return self.proc.pid

    def rss_kb(self, pid=None):
        for line in open(f"/proc/{pid or self.pid()}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def keeper_rss_kb(self):
        """The keeper's own memory (RssAnon: its text pages are the
        supervisor's too), 0 when `isola up` has none."""
        if self.pid() == self.proc.pid:
            return 0
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
        return 0

    def switches(self):
        n = 0
        for line in open(f"/proc/{self.pid()}/status"):
            if "ctxt_switches" in line:
                n += int(line.split()[1])
        return n

    def cpu_s(self):
        """The supervisor's user + system CPU so far, in seconds."""
        with open(f"/proc/{self.pid()}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def scrape(self, port, times=20):
        """GET /metrics `times` times: median wall ms, supervisor CPU ms
        per scrape, body bytes."""
        wall, size = [], 0
        cpu0 = self.cpu_s()
        for _ in range(times):
            c = socket.create_connection(("127.0.0.1", port))
            t0 = time.perf_counter()
            c.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            body = b""
            while chunk := c.recv(1 << 16):
                body += chunk
            wall.append((time.perf_counter() - t0) * 1000)
            size = len(body)
            c.close()
        return {"wall_ms": statistics.median(wall), "cpu_ms": (self.cpu_s() - cpu0) * 1000 / times, "bytes": size}

    def down(self):
        request(self.sock, {"cmd": "down"})
        self.proc.wait(timeout=600)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sleeper(setting):
    s = {"process": {"args": ["/bin/sleep", "100000"]}, "linux": {"namespaces": [{"type": t} for t in NS]},
         "root": {"path": "../rootfs", "readonly": True}}
    if setting == "vm":
        s["linux"]["resources"] = LIMITS
    return s


def kmsg_clock_offset(kmsg):
    """CLOCK_MONOTONIC minus the kernel log's clock, in seconds: a marker
    written to /dev/kmsg comes back with the kernel's timestamp."""
    best = None
    for i in range(5):
        marker = f"isola-bench-clock-{os.getpid()}-{i}"
        t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
        with open("/dev/kmsg", "w") as w:
            w.write(marker + "\n")
        t1 = time.clock_gettime(time.CLOCK_MONOTONIC)
        while True:
            line = kmsg.readline()
            if marker in line:
                ts = int(line.split(";")[0].split(",")[2]) / 1e6
                # The write took t1 - t0; keep the tightest bracket.
                if best is None or t1 - t0 < best[0]:
                    best = (t1 - t0, (t0 + t1) / 2 - ts)
                break
    return best[1]


def oom_detection(work, kills=100, timeout=600):
    """Kernel OOM kill (its /dev/kmsg timestamp) -> `status` over the control
    socket shows it (oomKills counted up). The payload is a dd that wants 64
    MiB under memory.max 16 MiB, restarted at once after every kill."""
    svc = sleeper("vm")
    svc["linux"]["resources"] = {"memory": {"limit": 16 << 20}, "pids": {"limit": 64}}
    svc["process"]["args"] = ["/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]
    svc["mounts"] = [{"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}]
    svc["restart"] = {"policy": "always", "delayMs": 0, "maxDelayMs": 0, "limit": {"burst": 100000, "intervalMs": 1000}}
    kmsg = open("/dev/kmsg", "r")
    os.set_blocking(kmsg.fileno(), False)
    try:
        while kmsg.readline():  # skip what is already logged
            pass
    except BlockingIOError:
        pass
    os.set_blocking(kmsg.fileno(), True)
    offset = kmsg_clock_offset(kmsg)
    os.set_blocking(kmsg.fileno(), False)
    up = Up(work, "oom", {"oom": svc}, "vm")
    event_times = []

    def subscribe():
        sub = socket.socket(socket.AF_UNIX)
        sub.connect(up.sock)
        sub.sendall(b'{"cmd":"events"}\n')
        for line in sub.makefile("rb"):
            if b'"oom-kill:' in line:
                event_times.append(time.clock_gettime(time.CLOCK_MONOTONIC))
    events = threading.Thread(target=subscribe, daemon=True)
    events.start()
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(up.sock)
    reader = conn.makefile("rb")
    kernel = []   # monotonic time of each kill, from the kernel's log
    seen = []     # monotonic time at which status first showed each kill
    deadline = time.monotonic() + timeout
    while len(seen) < kills and time.monotonic() < deadline:
        while True:
            try:
                line = kmsg.readline()
            except BlockingIOError:
                break
            if not line:
                break
            if "Memory cgroup out of memory: Killed process" in line:
                kernel.append(int(line.split(";")[0].split(",")[2]) / 1e6 + offset)
        conn.sendall(b'{"cmd":"status"}\n')
        st = json.loads(reader.readline())["services"][0]
        now = time.clock_gettime(time.CLOCK_MONOTONIC)
        while len(seen) < st["oomKills"]:
            seen.append(now)
    conn.close()
    up.down()
    lat = [(s - k) * 1000 for k, s in zip(kernel, seen)]
    events.join(timeout=10)
    # An `isola events` subscriber gets the oom-kill event from the handler
    # that counts the kill (status shows it from then on), with no poll
    # cycle of its own in between.
    # (Paired with the latest kill before each event: kills come ≥ 50 ms
    # apart, a restart each, and the subscription may miss the first.)
    pushed = []
    for e in event_times:
        before = [k for k in kernel if k <= e]
        if before and e - before[-1] < 1:
            pushed.append((e - before[-1]) * 1000)
    return {"kills": len(kernel), "detected": min(len(seen), len(kernel)), "ms": summary(lat) if lat else None,
            "event_ms": summary(pushed) if pushed else None}


def mem_available_kb():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def scale_floor(n, rootfs=None, measure=None):
    """The same namespaces without isola: n busybox-static `unshare` (pid,
    mount, uts, ipc, net) each running `sleep`, started from one shell loop
    in parallel. Seconds until all n sleep, and the memory each costs (no
    cgroup, no limits, no mounts, no seccomp, no init: a floor, not a
    peer). With `rootfs`, each also binds it and pivot_roots into it, as
    every runtime with a rootfs does: pivot_root visits every thread of the
    system (the kernel's chroot_fs_refs), so its cost grows with the count."""
    marker = "100001"
    before = mem_available_kb()
    t0 = time.perf_counter()
    payload = f"/bin/busybox sleep {marker}"
    if rootfs:
        payload = (f"busybox sh -c 'mount --bind {rootfs} {rootfs} && cd {rootfs} && "
                   f"busybox pivot_root . . && busybox umount -l . && exec {payload}'")
    loop = (f"for i in $(seq {n}); do busybox unshare -p -f -m -u -i -n --propagation private "
            f"{payload} & done; wait")
    sh_proc = subprocess.Popen(["sh", "-c", loop], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def sleeping():
        c = 0
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if f.read() == b"/bin/busybox\0sleep\0" + marker.encode() + b"\0":
                            c += 1
                except OSError:
                    pass
        return c

    dt = None
    while dt is None:
        if sleeping() >= n:
            dt = time.perf_counter() - t0
        elif time.perf_counter() - t0 > 900:
            print(f"bench: the namespace floor never got {n} sleeps running", file=sys.stderr)
            break
        else:
            time.sleep(0.25)
    time.sleep(1)
    per_kb = (before - mem_available_kb()) / n
    if measure:
        measure()
    # PID 1 of a namespace ignores signals it has no handler for, SIGKILL aside.
    subprocess.run(["pkill", "-KILL", "-f", f"^/bin/busybox sleep {marker}$"])
    sh_proc.wait()
    return {"seconds": dt, "kb_per_sandbox": per_kb}


def supervisor(work, setting, counts):
    out = {"rss_kb": {}, "scale_s": {}, "status_ms": {}}
    for n in counts:
        before = mem_available_kb()
        port = free_port()
        up = Up(work, f"scale{n}", {f"s{i}": sleeper(setting) for i in range(n)}, setting,
                ["--metrics", f"tcp://127.0.0.1:{port}"])
        out["scale_s"][n] = up.wait_all()
        if n == max(counts) and setting == "vm":
            # MemAvailable is the host's too in the host setting: only the
            # VM has it to itself.
            time.sleep(1)
            out["kb_per_sandbox"] = (before - mem_available_kb()) / n
        out["status_ms"][n] = up.status_ms(20)
        # What a user waits for: the `isola status` command, exec included.
        cli = []
        for _ in range(10):
            t0 = time.perf_counter()
            subprocess.run([ISOLA, "status", "--socket", up.sock], stdout=subprocess.DEVNULL, check=True)
            cli.append((time.perf_counter() - t0) * 1000)
        out.setdefault("status_cli_ms", {})[n] = statistics.median(cli)
        out["rss_kb"][n] = up.rss_kb()
        out.setdefault("scrape", {})[n] = up.scrape(port)
        if n == 100:
            before = up.switches()
            time.sleep(10)
            out["idle_wakeups_per_s"] = (up.switches() - before) / 10
        up.down()
    # Restart latency: payload exits -> supervisor sees it -> next payload
    # running, with restart delay 0, from the supervisor's own log.
    crash = sleeper(setting)
    crash["process"]["args"] = ["/bin/sh", "-c", "exit 1"]
    crash["restart"] = {"policy": "always", "delayMs": 0, "maxDelayMs": 0, "limit": {"burst": 100000, "intervalMs": 1000}}
    up = Up(work, "restart", {"crash": crash}, setting)
    while len(up.status()[0]["history"]) < 32:
        time.sleep(0.05)
    up.down()
    events = []
    for line in open(os.path.join(up.dir, "logs", "crash.log")):
        ts, stream, text = line.rstrip("\n").split(" ", 2)
        if stream == "isola":
            t = time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000
            events.append((t, text))
    gaps = []
    for (t1, a), (t2, b) in zip(events, events[1:]):
        if a.startswith("exited") and b.startswith("running"):
            gaps.append((t2 - t1) * 1000)
    out["restart_ms"] = summary(gaps) if gaps else None
    if setting == "vm":
        out["oom"] = oom_detection(work)
        import bench_neighbours
        out["neighbours"] = bench_neighbours.run(work, Up, request)
        out["floor"] = scale_floor(max(counts))
        out["floor"]["n"] = max(counts)
    else:
        out["big"] = big_stack(work, setting)
        import bench_health
        out["health"] = bench_health.run(work, Up, request)
        import bench_zero
        out["zero"] = bench_zero.run(work, Up, request)
        import bench_autoscale
        out["autoscale"] = bench_autoscale.run(work, Up, request)
        import bench_upgrade
        counts = [int(c) for c in arg("--upgrade-n", "100,1000,10000").split(",")]
        out["upgrade"] = bench_upgrade.run(work, Up, request, sleeper, counts)
    return out


# What `isola up` holds per running service (docs/ARCHITECTURE.md, "Who
# holds which fd"; host::check_capacity): its output pipe — one, as the
# big stack's sleepers send stderr to stdout ("stderr": "stdout"; two
# without) — and for itself: 128 open logs and 160 of its own.
FDS_PER_SERVICE = 1
SUPERVISOR_FDS = 128 + 160
BIG_TARGET = 10000


def big_stack(work, setting):
    """The largest stack this host holds, up to 10,000 services, in both
    forms (the sleeper with its rootfs, and host-root): how long until all
    run, when the 1st, 1000th and last one ran (does a start cost more as
    the count grows?), the status request, RSS and fds per service at that
    size, beside the namespace floor at the same count. Says which limit
    capped the count."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nofile = hard if os.geteuid() == 0 else soft
    by_fds = (nofile - SUPERVISOR_FDS) // FDS_PER_SERVICE
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    by_pids = (pid_max - 2000) // 2
    n = min(BIG_TARGET, by_fds, by_pids)
    n -= n % 1000
    limit = None
    if n < BIG_TARGET:
        limit = (f"RLIMIT_NOFILE {nofile} holds {by_fds} services at {FDS_PER_SERVICE} fds each"
                 if by_fds <= by_pids else f"kernel.pid_max {pid_max} holds {by_pids} services")
    # Its own date: the slowest part of the bench, rerun on its own when the
    # start path changes.
    out = {"n": n, "limit": limit, "forms": {}, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for form in ("rootfs", "host-root"):
        svc = sleeper(setting)
        svc["stderr"] = "stdout"
        if form == "host-root":
            # The host's own busybox, as the floor runs (/bin/sleep is
            # dynamically linked: its loader alone would cost more).
            del svc["root"]
            svc["process"]["args"] = ["/bin/busybox", "sleep", "100000"]
        out["forms"][form] = big_run(work, setting, n, svc, form)
    out["floor"] = scale_floor(n)
    out["floor_pivot"] = scale_floor(n, os.path.join(work, "rootfs"))
    return out


def big_run(work, setting, n, svc, form):
    up = Up(work, f"big{n}-{form}", {f"s{i}": svc for i in range(n)}, setting)
    marks, total = {}, None
    while total is None:
        st = up.status()
        running = sum(1 for s in st if s["state"] == "running")
        t = time.perf_counter() - up.t0
        for m in (1, 1000, n):
            if running >= m and m not in marks:
                marks[m] = t
        if running == n:
            total = t
        elif t > 900 or any(s["state"] in ("failed", "exited") for s in st):
            break
        time.sleep(0.25)
    # Before any `status` of ours opens stat files (there are none here:
    # the host setting has no cgroup).
    fds = len(os.listdir(f"/proc/{up.proc.pid}/fd"))
    out = {"seconds": total, "marks": marks, "status_ms": up.status_ms(10), "rss_kb": up.rss_kb(),
           "fds_per_service": fds / n if n else None}
    up.down()
    return out


def main():
    setting = sys.argv[1]
    if setting == "report":
        return report(sys.argv[2:])
    n = int(arg("--n", 200))
    seq = int(arg("--seq", 500))
    counts = [int(c) for c in arg("--services", "10,100,1000").split(",")]
    if setting == "host":
        reexec_with_cgroup2_view()
    work = tempfile.mkdtemp(prefix="isola-bench-")
    import bench_like
    make_bundle(work, setting == "vm")
    t = tools(work, setting)
    for name, argv in t.items():  # warm caches, and fail early if a tool cannot run
        run_once(argv(999999))
    res = {
        "setting": setting,
        "machine": f"{platform.node()} {os.cpu_count()} cpus",
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "versions": versions(t),
        "start_exit": start_exit(t, n),
        "like": bench_like.run(work, setting, 5, int(arg("--like-n", 100 if setting == "host" else 30))),
        "throughput": throughput(t, seq),
        "supervisor": supervisor(work, setting, counts),
    }
    import bench_observe
    scrape_counts = [int(c) for c in arg("--scrape", "1000,10000" if setting == "host" else "1000").split(",")]
    res["observe"] = bench_observe.run(work, Up, request, setting, sleeper, free_port, scrape_counts)
    if setting == "host":
        import bench_images
        res["images"] = bench_images.run(work, setting, int(arg("--img-n", 1000)))
        import bench_rootless
        rl_work = os.path.join(work, "rootless-bench")
        os.makedirs(rl_work)
        os.chmod(work, 0o755)
        os.chmod(rl_work, 0o755)
        res["rootless"] = bench_rootless.run(rl_work, 5, int(arg("--like-n", 100)))
    import bench_networks
    if setting == "vm":
        res["networks"] = bench_networks.run(work, ISOLA)
    else:
        # 10,000 on one network, in a network namespace of the bench's own.
        res["networks_host"] = bench_networks.host_scale(work, ISOLA, int(arg("--net-n", BIG_TARGET)))
    if setting == "vm":
        import bench_memory
        res["memory"] = bench_memory.run(work, int(arg("--mem-n", 200)))
        import bench_oci
        with open(os.path.join(work, "config.json")) as f:
            res["oci"] = bench_oci.run(work, ISOLA, json.load(f))
    text = json.dumps(res)
    out = arg("--json", None)
    if out:
        with open(out, "w") as f:
            f.write(text)
    print("BENCH-JSON: " + text, flush=True)
    shutil.rmtree(work, ignore_errors=True)


def reexec_with_cgroup2_view():
    """crun refuses a hybrid host (cgroup v1 controllers beside a unified
    hierarchy at /sys/fs/cgroup/unified) even with its cgroup manager
    disabled. On such a host, run the whole bench again in a private mount
    namespace whose /sys/fs/cgroup is a read-only bind of the unified
    mount: a bind, because a fresh cgroup2 mount would apply its options
    to the host's whole hierarchy. Nothing of the host's cgroups is
    written. A unified host needs nothing."""
    if os.environ.get("ISOLA_BENCH_NS"):
        return
    fstype = subprocess.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"], capture_output=True, text=True).stdout.strip()
    if fstype != "tmpfs" or not os.path.isdir("/sys/fs/cgroup/unified"):
        return
    os.environ["ISOLA_BENCH_NS"] = "1"
    inner = ("mount --bind /sys/fs/cgroup/unified /sys/fs/cgroup && mount -o remount,bind,ro /sys/fs/cgroup && "
             f"exec {sys.executable} " + " ".join(map(sh_quote, sys.argv)))
    os.execvp("unshare", ["unshare", "-m", "--propagation", "private", "sh", "-c", inner])


def versions(t):
    v = {"isola": sh(ISOLA, "--version").strip()}
    for name, cmd in (("crun", ["crun", "--version"]), ("runc", ["runc", "--version"]), ("bwrap", ["bwrap", "--version"]),
                      ("unshare", ["unshare", "--version"])):
        if name in t:
            v[name] = subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
    return v


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def report(paths):
    loaded = {}
    for p in paths:
        if os.path.exists(p):
            r = json.load(open(p))
            loaded[r["setting"]] = r
    lines = report_settings(paths)
    import bench_like
    for setting in ("host", "vm"):
        lines += bench_like.report(loaded.get(setting, {}).get("like"))
    import bench_memory
    lines += bench_memory.report(loaded.get("vm", {}).get("memory"))
    import bench_observe
    lines += bench_observe.report(loaded.get("host", {}), loaded.get("vm", {}))
    import bench_images
    lines += bench_images.report(loaded.get("host", {}).get("images"))
    import bench_rootless
    lines += bench_rootless.report(loaded.get("host", {}).get("rootless"))
    import bench_networks
    lines += bench_networks.report(loaded.get("vm", {}))
    lines += bench_networks.report_host(loaded.get("host", {}))
    print("\n".join(lines))


def report_settings(paths):
    lines = ["# isola benchmarks", "",
             "Generated by `make bench` (scripts/bench.py). Ratios are what count: shared 2-core VMs,",
             "and the VM setting runs under TCG emulation.", ""]
    for p in paths:
        if not os.path.exists(p):
            continue
        r = json.load(open(p))
        title = "In the VM (cgroup v2, limits)" if r["setting"] == "vm" else "On the host (no cgroup)"
        lines += [f"## {title}", "",
                  f"{r['machine']}, kernel {r['kernel']}, {r['date']}; " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()), ""]
        se = r["start_exit"]
        base = se.get("crun", {}).get("p50")
        lines += ["start→exit of /bin/true (create+run+delete), interleaved", "",
                  "| tool | N | p50 ms | p90 ms | max ms | p50 / crun |", "|---|---|---|---|---|---|"]
        for k, v in se.items():
            ratio = f"{v['p50'] / base:.2f}" if base else "-"
            lines.append(f"| {k} | {v['n']} | {v['p50'] * 1000:.2f} | {v['p90'] * 1000:.2f} | {v['max'] * 1000:.2f} | {ratio} |")
        tp = r["throughput"]
        cb = tp.get("crun", {}).get("per_second")
        lines += ["", "sequential throughput", "", "| tool | sandboxes | seconds | per second | × crun |", "|---|---|---|---|---|"]
        for k, v in tp.items():
            ratio = f"{v['per_second'] / cb:.2f}" if cb else "-"
            lines.append(f"| {k} | {v['n']} | {v['seconds']:.2f} | {v['per_second']:.1f} | {ratio} |")
        s = r["supervisor"]
        lines += ["", "isola up (status: one request over the socket / the `isola status` command, exec included)", "",
                  "| services | time to all running (s) | status request (ms) | `isola status` (ms) | supervisor RSS (KiB) |",
                  "|---|---|---|---|---|"]
        for n in s["rss_kb"]:
            scale = s["scale_s"][n]
            scale = f"{scale:.2f}" if scale is not None else "did not finish"
            cli = s.get("status_cli_ms", {}).get(n)
            cli = f"{cli:.2f}" if cli is not None else "-"
            lines.append(f"| {n} | {scale} | {s['status_ms'][n]:.2f} | {cli} | {s['rss_kb'][n]} |")
        if s.get("floor"):
            f = s["floor"]
            big = str(f["n"]) if str(f["n"]) in s["scale_s"] else f["n"]
            isola_s = s["scale_s"].get(big)
            ratio = f"{isola_s / f['seconds']:.2f}×" if isola_s and f["seconds"] else "-"
            floor_s = f"{f['seconds']:.2f} s" if f["seconds"] else "did not finish"
            lines += ["", f"{f['n']} sandboxes, the namespace floor (busybox `unshare -p -f -m -u -i -n` + sleep, in parallel, "
                      f"no cgroup, mounts, seccomp or init): {floor_s}; isola with all of those {ratio} that"]
            if s.get("kb_per_sandbox"):
                lines += ["", f"memory per sandbox (MemAvailable drop / {f['n']}, kernel objects included): "
                          f"isola {s['kb_per_sandbox']:.0f} KiB, the floor {f['kb_per_sandbox']:.0f} KiB"]
        if s.get("big"):
            g = s["big"]
            n = g["n"]
            lines += ["", f"the largest stack this host holds, {n} services"
                      + (f" (capped by {g['limit']})" if g["limit"] else "")
                      + (f", measured {g['date']}" if g.get("date") else "")
                      + "; sleepers with stderr to stdout (one pipe each); the floor starts the same namespaces "
                      "with busybox `unshare` (and for the rootfs form binds and pivot_roots into the same rootfs), "
                      "without isola's init, other mounts, seccomp or output capture:",
                      "", "| form | all running (s) | 1st / 1000th / last running (s) | the namespace floor (s) | isola / floor | status request (ms) | RSS (KiB) | fds per service |",
                      "|---|---|---|---|---|---|---|---|"]
            for form, r in g.get("forms", {}).items():
                floor = g.get("floor_pivot") if form == "rootfs" and g.get("floor_pivot") else g["floor"]
                fl = floor["seconds"]
                fls = f"{fl:.2f}" if fl else "did not finish"
                ratio = f"{r['seconds'] / fl:.2f}×" if r["seconds"] and fl else "n/a"
                secs = f"{r['seconds']:.2f}" if r["seconds"] else "did not finish"
                m = {int(k): v for k, v in r["marks"].items()}
                lines.append(f"| {form} | {secs} | {m.get(1, 0):.2f} / {m.get(1000, 0):.2f} / {m.get(n, 0):.2f} | "
                             f"{fls} | {ratio} | {r['status_ms']:.2f} | {r['rss_kb']} | {r['fds_per_service']:.2f} |")
        if s.get("restart_ms"):
            rm = s["restart_ms"]
            lines += ["", f"restart latency (exit seen → next payload running, delay 0): p50 {rm['p50']:.1f} ms, p90 {rm['p90']:.1f} ms, max {rm['max']:.1f} ms (N={rm['n']}, 1 ms log resolution)"]
        if s.get("oom"):
            o = s["oom"]
            ms = o["ms"]
            text = f"p50 {ms['p50']:.1f} ms, p90 {ms['p90']:.1f} ms, max {ms['max']:.1f} ms" if ms else "no latency"
            lines += ["", f"OOM detection (kernel's oom kill in /dev/kmsg → `status` shows it): {o['detected']} of {o['kills']} detected; {text}"]
            if o.get("event_ms"):
                c = o["event_ms"]
                lines += ["", f"OOM kill → an `isola events` subscriber receives it (status shows it from then on; no poll cycle): "
                          f"p50 {c['p50']:.1f} ms, p90 {c['p90']:.1f} ms, max {c['max']:.1f} ms"]
        if s.get("health"):
            import bench_health
            lines += bench_health.report(s["health"])
        if s.get("neighbours"):
            import bench_neighbours
            lines += bench_neighbours.report(s["neighbours"])
        if s.get("zero"):
            import bench_zero
            lines += bench_zero.report(s["zero"])
        if s.get("autoscale"):
            import bench_autoscale
            lines += bench_autoscale.report(s["autoscale"])
        if s.get("upgrade"):
            import bench_upgrade
            lines += bench_upgrade.report(s["upgrade"])
        if r.get("oci"):
            import bench_oci
            lines += bench_oci.report(r["oci"])
        for n, sc in sorted(s.get("scrape", {}).items(), key=lambda kv: int(kv[0])):
            lines += ["", f"metrics scrape at {n} services (`GET /metrics`, text format): {sc['wall_ms']:.2f} ms wall, "
                          f"{sc['cpu_ms']:.2f} ms supervisor CPU, {sc['bytes'] / 1024:.0f} KiB"]
        if "idle_wakeups_per_s" in s:
            lines += ["", f"idle supervisor with 100 services: {s['idle_wakeups_per_s']:.2f} context switches per second over 10 s"]
        lines.append("")
    return lines


if __name__ == "__main__":
    main()
