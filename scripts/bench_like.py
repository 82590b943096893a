#!/usr/bin/env python3
"""One sandbox, like for like (issue 31): the stock `crun spec` bundle.

  bench_like.py host|vm [--rounds 5] [--n 100] [--json FILE]

The bundle is exactly what `crun spec` writes — pid, network, ipc, uts and
mount namespaces (and cgroup on a cgroup v2 host); its seven mounts (proc, tmpfs /dev, devpts, shm, mqueue,
sysfs, cgroup), masked and read-only paths, three capabilities, an
RLIMIT_NOFILE, noNewPrivileges, hostname — changed only where the issue
allows: args `/bin/true`, no terminal, no `linux.resources` (crun's default
device rule would need a cgroup). No seccomp, no cgroup: isola runs with
`--no-cgroup`, crun with its cgroup manager disabled. Beside them:

- bwrap with the same namespaces and the mounts it can express (a fresh
  proc, its own /dev with devpts, shm and mqueue, /sys read-only bound from
  the host rather than a fresh sysfs; masked paths as tmpfs or /dev/null,
  read-only paths bound read-only from the host's /proc, bwrap having no
  way to remount a path of its own proc; no capabilities kept, no
  rlimit);
- `unshare` of the same namespaces with `--root` (no mounts at all): the
  floor;
- runc in the VM only: it cannot run without a cgroup, which the host
  must not get.

Rounds interleave the tools (A B C A B C …) N starts at a time, so drift
hits all alike; each start is timed from spawn to exit. Reports the p50 and
mean per tool and the ratios isola/crun and isola/unshare of the means.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402


def make_bundle(work):
    """`crun spec` (or `runc spec`), changed only as the module says."""
    bundle = os.path.join(work, "like")
    rootfs = os.path.join(bundle, "rootfs")
    for d in ("bin", "proc", "dev", "sys", "tmp"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for tool in ("true", "sh"):
        os.symlink("busybox", os.path.join(rootfs, "bin", tool))
    maker = "crun" if shutil.which("crun") else "runc"
    subprocess.run([maker, "spec"], cwd=bundle, check=True)
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["process"]["args"] = ["/bin/true"]
    cfg["process"]["terminal"] = False
    cfg["linux"].pop("resources", None)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)
    return bundle, cfg


def _namespaces(cfg):
    return {n["type"] for n in cfg["linux"]["namespaces"]}


def bwrap_argv(rootfs, cfg):
    cgroupns = ["--unshare-cgroup"] if "cgroup" in _namespaces(cfg) else []
    argv = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-ipc", *cgroupns,
            "--hostname", cfg.get("hostname", "bwrap"), "--ro-bind", rootfs, "/",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm", "--mqueue", "/dev/mqueue",
            "--ro-bind", "/sys", "/sys"]
    for p in cfg["linux"].get("maskedPaths", []):
        if os.path.isdir(p):
            argv += ["--tmpfs", p, "--remount-ro", p]
        elif os.path.exists(p):
            argv += ["--ro-bind", "/dev/null", p]
    for p in cfg["linux"].get("readonlyPaths", []):
        argv += ["--ro-bind-try", p, p]
    return argv + ["--cap-drop", "ALL", "/bin/true"]


def tools(work, setting):
    """The tools' command lines and the namespaces the bundle asks for."""
    bundle, cfg = make_bundle(work)
    cfg_path = os.path.join(bundle, "config.json")
    rootfs = os.path.join(bundle, "rootfs")
    t = {"isola": lambda i: [bench.ISOLA, "run", "--no-cgroup", "--name", f"like{i}", cfg_path]}
    if shutil.which("crun"):
        t["crun"] = lambda i: ["crun", "--cgroup-manager=disabled", "run", "-b", bundle, f"crun{i}"]
    if setting == "vm" and shutil.which("runc"):
        t["runc"] = lambda i: ["runc", "run", "-b", bundle, f"runc{i}"]
    if shutil.which("bwrap"):
        bw = bwrap_argv(rootfs, cfg)
        t["bwrap"] = lambda i: bw
    cgroupns = ["--cgroup"] if "cgroup" in _namespaces(cfg) else []
    t["unshare"] = lambda i: ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--net", *cgroupns,
                              "--root", rootfs, "/bin/true"]
    return t, sorted(_namespaces(cfg))


def run(work, setting, rounds, n):
    t, namespaces = tools(work, setting)
    for name, argv in t.items():  # warm caches, and fail early if a tool cannot run
        bench.run_once(argv(999999))
    times = {k: [] for k in t}
    for r in range(rounds):
        for name, argv in t.items():
            for i in range(n):
                times[name].append(bench.run_once(argv(r * n + i)))
    out = {"setting": setting, "rounds": rounds, "n": n, "versions": bench.versions(t), "namespaces": namespaces,
           "tools": {}}
    for k, xs in times.items():
        out["tools"][k] = {"p50": bench.pct(xs, 50), "p90": bench.pct(xs, 90), "mean": statistics.fmean(xs)}
    return out


def report(o):
    if not o:
        return []
    tl = o["tools"]
    base = tl.get("crun", {}).get("mean")
    floor = tl["unshare"]["mean"]
    where = "in the VM (TCG)" if o["setting"] == "vm" else "on the host"
    ns = ", ".join(o.get("namespaces", []))
    lines = ["", f"like for like {where}: the stock `crun spec` bundle ({ns} namespaces, its 7 mounts, masked and "
             f"read-only paths; /bin/true; no seccomp, no cgroup but for runc), {o['rounds']} interleaved rounds "
             f"of {o['n']} starts", "",
             "| tool | p50 ms | p90 ms | mean ms | mean / crun | mean / unshare |", "|---|---|---|---|---|---|"]
    for k, v in tl.items():
        vs_crun = f"{v['mean'] / base:.2f}×" if base else "-"
        lines.append(f"| {k} | {v['p50'] * 1000:.2f} | {v['p90'] * 1000:.2f} | {v['mean'] * 1000:.2f} | "
                     f"{vs_crun} | {v['mean'] / floor:.2f}× |")
    return lines


def main():
    setting = sys.argv[1]
    if setting == "host":
        bench.reexec_with_cgroup2_view()
    work = tempfile.mkdtemp(prefix="isola-like-")
    try:
        o = run(work, setting, int(bench.arg("--rounds", 5)), int(bench.arg("--n", 100)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(o)
    out = bench.arg("--json", None)
    if out:
        with open(out, "w") as f:
            f.write(text)
    print("BENCH-JSON: " + text, flush=True)
    print("\n".join(report(o)))


if __name__ == "__main__":
    main()
