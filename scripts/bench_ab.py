#!/usr/bin/env python3
"""Two isola binaries A and B, same supervisor work, alternating runs
(A B A B …): time to all running, status request latency, supervisor
and keeper RSS, the take-over after `isola upgrade` and after `kill -9`
of the supervisor at 100 and 1000 services, idle wakeups at 100. For a change to the
supervisor: A is the commit it started from, B the change.

  bench_ab.py host|vm A_BIN B_BIN [--rounds N] [--services 100,1000]

Prints one JSON object per measurement and a table of medians with B/A.
"""

import json
import os
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import bench_upgrade  # noqa: E402


def one(work, setting, n, tag):
    up = bench.Up(work, f"{tag}-{n}", {f"s{i}": bench.sleeper(setting) for i in range(n)}, setting)
    row = {"running_s": up.wait_all(), "status_ms": up.status_ms(20 if n <= 100 else 10),
           "rss_kb": up.rss_kb(), "keeper_rss_kb": up.keeper_rss_kb()}
    if n == 100:
        before = up.switches()
        time.sleep(5)
        row["idle_wakeups_per_s"] = (up.switches() - before) / 5
    row.update(takeovers(up))
    up.down()
    return row


def takeovers(up):
    """Three `isola upgrade`s (to the same binary) and one `kill -9` of
    the supervisor: ms until a supervisor answers `status` again."""
    ups = []
    for _ in range(3):
        t0 = time.perf_counter()
        if not bench.request(up.sock, {"cmd": "upgrade"}).get("ok"):
            return {}
        bench.request(up.sock, {"cmd": "status"})
        ups.append((time.perf_counter() - t0) * 1000)
    time.sleep(1.5)  # at rest: the keeper has a snapshot of it
    old = bench_upgrade.supervisor(up, bench.request)
    t0 = time.perf_counter()
    os.kill(old, signal.SIGKILL)
    bench_upgrade.new_supervisor(up, bench.request, old)
    return {"upgrade_ms": statistics.median(ups), "killed_ms": (time.perf_counter() - t0) * 1000}


def main():
    setting, a, b = sys.argv[1:4]
    rounds = int(bench.arg("--rounds", 3))
    counts = [int(c) for c in bench.arg("--services", "100,1000").split(",")]
    if setting == "host":
        bench.reexec_with_cgroup2_view()
    work = tempfile.mkdtemp(prefix="isola-ab-")
    bench.make_bundle(work, setting == "vm")
    results = {"A": {}, "B": {}}
    for r in range(rounds):
        for tag, binary in (("A", a), ("B", b)):
            bench.ISOLA = binary
            for n in counts:
                row = one(work, setting, n, f"{tag}{r}")
                print(json.dumps({"bin": tag, "round": r, "services": n, **row}), flush=True)
                for k, v in row.items():
                    results[tag].setdefault((n, k), []).append(v)
    print(f"\n{setting}: medians of {rounds} alternating rounds; A = {a}, B = {b}\n")
    print("| services | measure | A | B | B/A |")
    print("|---|---|---|---|---|")
    for key in sorted(set(results["A"]) & set(results["B"])):
        va = statistics.median(results["A"][key])
        vb = statistics.median(results["B"][key])
        ratio = f"{vb / va:.2f}" if va else "-"
        print(f"| {key[0]} | {key[1]} | {va:.2f} | {vb:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
