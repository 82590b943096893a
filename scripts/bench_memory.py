#!/usr/bin/env python3
"""What one sandbox costs in memory, item by item (VM setting: the VM has
its MemAvailable to itself).

  scripts/vm.sh -- python3 scripts/bench_memory.py [--n 300]

N sleeping services per variant under `isola up`; the memory in use that
is not cache (anonymous pages, page tables, slab, per-CPU, shmem, vmalloc
— kernel stacks included: /proc/meminfo after dropping caches) grows by N
times the cost of one, kernel objects included (process, page tables, namespaces,
mounts, cgroup, BPF programs) and the supervisor's own state for it. The
variants add one thing at a time, so each difference is one item's cost:

  floor          busybox `unshare` (pid, mount, uts, ipc, net) + sleep
  floor+rootfs   the same, bound and pivot_root'ed into the rootfs
  isola          the same namespaces and rootfs (read-only), no cgroup
  +limits        a cgroup with memory, cpu and pids limits, the device filter
  then the stock `crun spec` body (its capabilities, rlimit, hostname and,
  on a v2 host, cgroup namespace), its mounts added a few at a time, its
  masked and read-only paths, and last the starter default-deny seccomp
  profile.

It also reads, for 20 of the isola sandboxes, what their inits hold
themselves (anonymous memory and page tables, /proc/PID/status).
Imported by bench.py (`run(work, n)`, `report(o)`).
"""

import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402
import bench_like  # noqa: E402


def _status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _inits(supervisor_pid):
    """Pids of the sandboxes' inits: the processes whose payload is the
    sleep and whose own command line is isola's (a fork of the spawner)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                kids = f.read().split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"isola" in cmd and kids and int(pid) != supervisor_pid:
            try:
                with open(f"/proc/{kids[0]}/cmdline", "rb") as f:
                    if f.read().startswith(b"/bin/sleep"):
                        out.append(int(pid))
            except OSError:
                pass
    return out


# KernelStack is left out: with CONFIG_VMAP_STACK (Debian's) kernel stacks
# are vmalloc'd and already in VmallocUsed.
FIELDS = ("AnonPages", "PageTables", "SUnreclaim", "SReclaimable", "Percpu", "Shmem", "VmallocUsed")


def meminfo():
    """Memory in use that is not cache, after dropping what can be dropped
    (page cache and reclaimable slab: the VM is ours), and its parts."""
    subprocess.run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    m = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            m[k] = int(v.split()[0])
    return {k: m.get(k, 0) for k in FIELDS}


def in_use(parts):
    return sum(parts.values())


def per_sandbox(before, after, n):
    return {k: (after[k] - before[k]) / n for k in FIELDS}


def settle(baseline):
    """Wait (up to 30 s) until what the previous variant left (network
    namespaces go away asynchronously) is gone."""
    for _ in range(60):
        if in_use(meminfo()) <= baseline + 2048:
            return
        time.sleep(0.5)


def _variant(work, name, services, setting, n, baseline):
    settle(baseline)
    before = meminfo()
    up = bench.Up(work, name, services, setting)
    if up.wait_all() is None:
        up.down()
        return {"kb_per_sandbox": None, "parts": {}, "failed": "not all running"}
    time.sleep(2)
    parts = per_sandbox(before, meminfo(), n)
    inits = _inits(up.proc.pid)[:20]
    anon = [_status_kb(p, "RssAnon") for p in inits]
    pte = [_status_kb(p, "VmPTE") for p in inits]
    row = {"kb_per_sandbox": sum(parts.values()), "supervisor_rss_kb": up.rss_kb(), "parts": parts,
           "init_anon_kb": sum(a for a in anon if a) / max(1, len(anon)),
           "init_pte_kb": sum(p for p in pte if p) / max(1, len(pte))}
    up.down()
    return row


def _like_steps(work):
    """The like-for-like bundle's body as a service, built up in steps:
    name → spec, each step the one before plus one item."""
    bundle, cfg = bench_like.make_bundle(os.path.join(work, "mem"))
    os.symlink("busybox", os.path.join(bundle, "rootfs/bin/sleep"))
    cfg["root"]["path"] = os.path.join(bundle, "rootfs")
    cfg["process"]["args"] = ["/bin/sleep", "100000"]
    cfg["linux"]["resources"] = bench.LIMITS
    full = json.loads(json.dumps(cfg))
    mounts = cfg.pop("mounts")
    masked = cfg["linux"].pop("maskedPaths")
    readonly = cfg["linux"].pop("readonlyPaths")
    steps = {}

    def step(name, dests):
        cfg["mounts"] = [m for m in mounts if m["destination"] in dests]
        steps[name] = json.loads(json.dumps(cfg))

    step("+crun's body, no mounts", ())
    step("+proc", ("/proc",))
    dev = ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue")
    step("+/dev, devpts, shm, mqueue", dev)
    step("+sysfs, cgroup", dev + ("/sys", "/sys/fs/cgroup"))
    cfg["linux"]["maskedPaths"] = masked
    cfg["linux"]["readonlyPaths"] = readonly
    step("+masked and read-only paths", dev + ("/sys", "/sys/fs/cgroup"))
    assert steps["+masked and read-only paths"] == full
    full["linux"]["seccomp"] = json.loads(bench.sh(bench.ISOLA, "spec"))["linux"]["seccomp"]
    steps["+seccomp"] = full
    return steps


def _floor(n, rootfs, baseline):
    settle(baseline)
    before = meminfo()
    res = {"kb_per_sandbox": None, "parts": {}}

    def measure():
        res["parts"] = per_sandbox(before, meminfo(), n)
        res["kb_per_sandbox"] = sum(res["parts"].values())

    if bench.scale_floor(n, rootfs, measure)["seconds"] is None:
        return {"kb_per_sandbox": None, "parts": {}, "failed": "not all running"}
    return res


def run(work, n):
    rootfs = os.path.join(work, "rootfs")
    baseline = in_use(meminfo())
    plain = {f"s{i}": bench.sleeper("host") for i in range(n)}
    limited = {f"s{i}": bench.sleeper("vm") for i in range(n)}
    rows = {"floor": _floor(n, None, baseline), "floor+rootfs": _floor(n, rootfs, baseline),
            "isola": _variant(work, "mem-plain", plain, "host", n, baseline),
            "+limits": _variant(work, "mem-limits", limited, "vm", n, baseline)}
    for k, (name, spec) in enumerate(_like_steps(work).items()):
        rows[name] = _variant(work, f"mem-{k}", {f"s{i}": spec for i in range(n)}, "vm", n, baseline)
    shutil.rmtree(os.path.join(work, "mem"), ignore_errors=True)
    return {"n": n, "rows": rows}


def report(o):
    if not o:
        return []
    lines = ["", f"memory per sandbox in the VM ({o['n']} sleeping services per variant; the growth of what is in use "
             "and not cache, /proc/meminfo after dropping caches, / N: kernel objects and the supervisor's state "
             "included; each row adds one thing to the one above)", "",
             "| variant | KiB per sandbox | + KiB | init's anon KiB | init's page tables KiB | where (KiB per sandbox) |",
             "|---|---|---|---|---|---|"]
    prev = None
    for k, r in o["rows"].items():
        if r["kb_per_sandbox"] is None:
            lines.append(f"| {k} | {r.get('failed')} | | | | |")
            prev = None
            continue
        delta = f"{r['kb_per_sandbox'] - prev:+.0f}" if prev is not None else "-"
        anon = f"{r['init_anon_kb']:.0f}" if "init_anon_kb" in r else "-"
        pte = f"{r['init_pte_kb']:.0f}" if "init_pte_kb" in r else "-"
        where = ", ".join(f"{f} {v:.0f}" for f, v in r["parts"].items() if abs(v) >= 4)
        lines.append(f"| {k} | {r['kb_per_sandbox']:.0f} | {delta} | {anon} | {pte} | {where} |")
        prev = r["kb_per_sandbox"]
    return lines


if __name__ == "__main__":
    import tempfile
    work = tempfile.mkdtemp(prefix="isola-mem-")
    bench.make_bundle(work, True)
    try:
        o = run(work, int(bench.arg("--n", 300)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("BENCH-JSON: " + json.dumps(o), flush=True)
    print("\n".join(report(o)))
