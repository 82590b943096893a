"""isola as an OCI runtime in `make bench` (VM setting, cgroup v2):

- `create` + `start` + wait + `delete` of one container, isola beside crun
  and runc: the same bundle and config.json (busybox rootfs, /bin/true, the
  starter's capabilities and seccomp profile, the bench's limits, the same
  cgroupsPath), driven the same way (this process is the subreaper that
  waits on the pid file's pid, as conmon is);
- `podman run --rm IMG true` with isola, crun and runc as the runtime:
  same image, same flags, podman's own configuration in a scratch
  directory (../shared/notes/podman-in-a-vm.md).

Imported by bench.py (`run(work, isola, config)`); standalone:
`scripts/vm.sh -- python3 scripts/bench_oci.py` after a release build.
"""

import ctypes
import json
import os
import shutil
import subprocess
import time

PR_SET_CHILD_SUBREAPER = 36
CYCLES = 30
PODMAN_RUNS = 8


def _subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("bench_oci: prctl(PR_SET_CHILD_SUBREAPER) failed")


def _run(argv, log):
    # Output to a file: the container inherits create's stdio, and a pipe
    # would stay open as long as it lives.
    with open(log, "w") as f:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f)
    if r.returncode != 0:
        with open(log) as f:
            raise SystemExit(f"bench_oci: {' '.join(argv)} failed ({r.returncode}): {f.read().strip()}")


def _cycle(prefix, bundle, cid, work):
    pidfile = os.path.join(work, "pid")
    log = os.path.join(work, "log")
    t0 = time.perf_counter()
    _run(prefix + ["create", "--bundle", bundle, "--pid-file", pidfile, cid], log)
    with open(pidfile) as f:
        pid = int(f.read())
    _run(prefix + ["start", cid], log)
    _, st = os.waitpid(pid, 0)
    _run(prefix + ["delete", cid], log)
    dt = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(st) != 0:
        raise SystemExit(f"bench_oci: {prefix[0]} container exited {st}")
    return dt


def _summary(xs):
    xs = sorted(xs)
    return {"n": len(xs), "p50": xs[len(xs) // 2], "p90": xs[min(len(xs) - 1, int(len(xs) * 0.9))], "max": xs[-1]}


def lifecycle(work, isola, config):
    bundle = os.path.join(work, "oci-bundle")
    os.makedirs(bundle, exist_ok=True)
    cfg = json.loads(json.dumps(config))
    cfg["root"]["path"] = os.path.join(work, "rootfs")
    cfg["linux"]["cgroupsPath"] = "/isola-bench-oci/ctr"
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(cfg, f)
    tools = {"isola": [isola, "--root", os.path.join(work, "isola-state")]}
    for t in ("crun", "runc"):
        if shutil.which(t):
            tools[t] = [t, "--root", os.path.join(work, f"{t}-state")]
    times = {k: [] for k in tools}
    for i in range(CYCLES + 1):
        for name, prefix in tools.items():
            dt = _cycle(prefix, bundle, f"{name}-{i}", work)
            if i > 0:  # the first is a warm-up
                times[name].append(dt)
    return {k: _summary(v) for k, v in times.items()}


def _podman_env(work, isola):
    d = os.path.join(work, "podman")
    for sub in ("home/.config/containers", "run", "graph", "net", "tmp", "libpod", "xdg"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    with open(os.path.join(d, "containers.conf"), "w") as f:
        f.write(f"""[containers]
netns = "none"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
image_copy_tmp_dir = "{d}/tmp"
tmp_dir = "{d}/libpod"
runtime_supports_json = ["crun", "runc", "isola"]
[engine.runtimes]
isola = ["{isola}"]
[network]
network_config_dir = "{d}/net"
""")
    with open(os.path.join(d, "storage.conf"), "w") as f:
        f.write(f'[storage]\ndriver = "vfs"\nrunroot = "{d}/run"\ngraphroot = "{d}/graph"\n')
    open(os.path.join(d, "registries.conf"), "w").close()
    with open(os.path.join(d, "home/.config/containers/policy.json"), "w") as f:
        f.write('{"default":[{"type":"insecureAcceptAnything"}]}')
    env = dict(os.environ, CONTAINERS_CONF=f"{d}/containers.conf", CONTAINERS_STORAGE_CONF=f"{d}/storage.conf",
               CONTAINERS_REGISTRIES_CONF=f"{d}/registries.conf", HOME=f"{d}/home", XDG_RUNTIME_DIR=f"{d}/xdg",
               TMPDIR=f"{d}/tmp")
    return env


def podman(work, isola):
    if not shutil.which("podman"):
        return None
    env = _podman_env(work, isola)
    tar = os.path.join(work, "rootfs.tar")
    subprocess.run(["tar", "-C", os.path.join(work, "rootfs"), "-cf", tar, "."], check=True)
    subprocess.run(["podman", "import", tar, "localhost/bench"], env=env, check=True, capture_output=True)
    runtimes = {"isola": isola}
    for t in ("crun", "runc"):
        if shutil.which(t):
            runtimes[t] = shutil.which(t)
    times = {k: [] for k in runtimes}
    for i in range(PODMAN_RUNS + 1):
        for name, path in runtimes.items():
            t0 = time.perf_counter()
            r = subprocess.run(["timeout", "-k", "5", "120", "podman", "--runtime", path, "run", "--rm",
                                "localhost/bench", "/bin/true"], env=env, capture_output=True)
            dt = time.perf_counter() - t0
            if r.returncode != 0:
                raise SystemExit(f"bench_oci: podman --runtime {name} failed: {r.stderr.decode().strip()}")
            if i > 0:
                times[name].append(dt)
    return {k: _summary(v) for k, v in times.items()}


def run(work, isola, config):
    _subreaper()
    return {"lifecycle": lifecycle(work, isola, config), "podman": podman(work, isola)}


def report(o):
    """Markdown lines for bench/results.md."""
    lines = ["", "as an OCI runtime (same bundle and config.json for all: busybox rootfs, /bin/true, starter capabilities "
             "and seccomp, the limits above, one cgroupsPath; the caller is the subreaper that waits on the pid file's pid)", "",
             "| | create + start + exit + delete p50 (ms) | p90 (ms) | ratio to isola (p50) |", "|---|---|---|---|"]
    lc = o["lifecycle"]
    base = lc["isola"]["p50"]
    for k, s in lc.items():
        lines.append(f"| {k} | {s['p50'] * 1000:.1f} | {s['p90'] * 1000:.1f} | {s['p50'] / base:.2f}× |")
    p = o.get("podman")
    if p:
        base = p["isola"]["p50"]
        lines += ["", "`podman run --rm IMG /bin/true` (podman 4.3 + conmon, cgroupfs, vfs storage, no network; "
                  "only `--runtime` differs)", "",
                  "| runtime | p50 (s) | p90 (s) | ratio to isola (p50) |", "|---|---|---|---|"]
        for k, s in p.items():
            lines.append(f"| {k} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p50'] / base:.2f}× |")
    return lines


if __name__ == "__main__":
    import sys
    import tempfile
    sys.path.insert(0, os.path.dirname(__file__))
    import bench
    with tempfile.TemporaryDirectory() as work:
        bench.make_bundle(work, True)
        with open(os.path.join(work, "config.json")) as f:
            config = json.load(f)
        print("\n".join(report(run(work, bench.ISOLA, config))))
