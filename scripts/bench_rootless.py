#!/usr/bin/env python3
"""Rootless start→exit (issue 28): the like-for-like bundle as a user.

  bench_rootless.py [--rounds 5] [--n 100] [--json FILE]     (as root)

The bundle is `crun spec --rootless` (pid, network, ipc, uts, mount and
user namespaces, no id mappings: each runtime maps the caller's own id,
crun and isola alike; args `/bin/true`, no terminal, no resources). As
the user (uid 65534 here: a user the bench need not create; no
/etc/subuid range, so one id mapped):

- isola (user): `isola run BUNDLE/config.json` (no cgroup: nothing is
  delegated to the user);
- crun (user): `crun --cgroup-manager=disabled run`;
- bwrap (user): the same namespaces and the mounts bwrap can express
  (see bench_like), with `--unshare-user --uid 0 --gid 0`;
- unshare (user): `unshare -r` and the same namespaces, no mounts: the
  floor.

Beside them, as root: isola (root), `isola run --no-cgroup` of the same
bundle without the user namespace (what rootless costs on top).

Each round times isola (root) N times, then one process already running
as the user (so no setpriv in any timing) times each user tool N times;
rounds repeat, so drift hits all alike. Reports p50 and mean per tool,
and the ratios isola (user) / isola (root) (goal ≤ 1.2) and
isola (user) / crun (user) (goal < 1).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402
import bench_like  # noqa: E402

USER = 65534


def make_bundles(work):
    """The like-for-like bundle for root and its rootless twin."""
    root_bundle, cfg = bench_like.make_bundle(work)
    user_bundle = os.path.join(work, "rootless")
    os.makedirs(user_bundle)
    subprocess.run(["crun", "spec", "--rootless"], cwd=user_bundle, check=True)
    path = os.path.join(user_bundle, "config.json")
    with open(path) as f:
        ucfg = json.load(f)
    ucfg["process"]["args"] = ["/bin/true"]
    ucfg["process"]["terminal"] = False
    ucfg["linux"].pop("resources", None)
    ucfg["root"] = {"path": os.path.join(root_bundle, "rootfs"), "readonly": True}
    with open(path, "w") as f:
        json.dump(ucfg, f, indent=1)
    for d, _, files in os.walk(work):
        os.chmod(d, 0o755)
        for name in files:
            p = os.path.join(d, name)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o444)
    return root_bundle, user_bundle, ucfg


def user_tools(work, user_bundle, ucfg):
    """Command lines (as the user) by tool name; `{i}` is the start's number."""
    rootfs = ucfg["root"]["path"]
    t = {"isola (user)": [bench.ISOLA, "run", "--name", "rl{i}", os.path.join(user_bundle, "config.json")]}
    if shutil.which("crun"):
        t["crun (user)"] = ["crun", "--cgroup-manager=disabled", "--root", os.path.join(work, "crun-state"),
                            "run", "-b", user_bundle, "crun{i}"]
    if shutil.which("bwrap"):
        bw = bench_like.bwrap_argv(rootfs, ucfg)
        t["bwrap (user)"] = [bw[0], "--unshare-user", "--uid", "0", "--gid", "0", *bw[1:]]
    t["unshare (user)"] = ["unshare", "-r", "--pid", "--fork", "--mount", "--uts", "--ipc", "--net",
                           "--root", rootfs, "/bin/true"]
    return t


def user_round(spec_path, n, first):
    """As the user: time each tool `n` times; print the times as JSON."""
    with open(spec_path) as f:
        t = json.load(f)
    times = {}
    for name, argv in t.items():
        times[name] = [bench.run_once([a.replace("{i}", str(first + i)) for a in argv]) for i in range(n)]
    print(json.dumps(times))


def as_user(argv):
    return ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "--", *argv]


def run(work, rounds, n):
    root_bundle, user_bundle, ucfg = make_bundles(work)
    os.makedirs(os.path.join(work, "crun-state"), mode=0o777)
    os.chmod(os.path.join(work, "crun-state"), 0o777)
    t = user_tools(work, user_bundle, ucfg)
    spec_path = os.path.join(work, "user-tools.json")
    with open(spec_path, "w") as f:
        json.dump(t, f)
    os.chmod(spec_path, 0o644)
    root_argv = [bench.ISOLA, "run", "--no-cgroup", "--name", "rf{i}", os.path.join(root_bundle, "config.json")]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent",
           "XDG_RUNTIME_DIR": os.path.join(work, "crun-state")}
    times = {"isola (root)": [], **{k: [] for k in t}}
    user_cmd = as_user([sys.executable, os.path.abspath(__file__), "user-round", spec_path])
    # Warm caches, and fail early if a tool cannot run.
    subprocess.run(user_cmd + ["1", "999999"], check=True, env=env, capture_output=True)
    for r in range(rounds):
        for i in range(n):
            times["isola (root)"].append(bench.run_once([a.replace("{i}", str(r * n + i)) for a in root_argv]))
        out = subprocess.run(user_cmd + [str(n), str(r * n)], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"bench_rootless: the user's round failed: {out.stderr.strip()}")
        for k, xs in json.loads(out.stdout).items():
            times[k] += xs
    res = {"rounds": rounds, "n": n, "user": USER, "tools": {}}
    for k, xs in times.items():
        res["tools"][k] = {"p50": bench.pct(xs, 50), "p90": bench.pct(xs, 90), "mean": statistics.fmean(xs)}
    return res


def report(o):
    if not o:
        return []
    tl = o["tools"]
    rootful = tl["isola (root)"]["mean"]
    crun = tl.get("crun (user)", {}).get("mean")
    lines = ["", f"rootless on the host: the like-for-like bundle as uid {o['user']} (`crun spec --rootless`: its own "
             f"user namespace, one id mapped; no cgroup), {o['rounds']} rounds of {o['n']} starts; isola (root) runs "
             "the same bundle without the user namespace", "",
             "| tool | p50 ms | p90 ms | mean ms | mean / isola (root) | mean / crun (user) |", "|---|---|---|---|---|---|"]
    for k, v in tl.items():
        vs_crun = f"{v['mean'] / crun:.2f}×" if crun else "-"
        lines.append(f"| {k} | {v['p50'] * 1000:.2f} | {v['p90'] * 1000:.2f} | {v['mean'] * 1000:.2f} | "
                     f"{v['mean'] / rootful:.2f}× | {vs_crun} |")
    return lines


def main():
    if sys.argv[1:2] == ["user-round"]:
        return user_round(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    bench.reexec_with_cgroup2_view()
    work = tempfile.mkdtemp(prefix="isola-rootless-")
    os.chmod(work, 0o755)
    try:
        o = run(work, int(bench.arg("--rounds", 5)), int(bench.arg("--n", 100)))
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
