"""Stack networks in `make bench` (VM: bridges, veth pairs and nftables
need root and the modules): what a network costs a start, beside a bare
network namespace, beside the CNI driver (the reference plugins per
start) and beside a shell loop doing the same plumbing with `ip`; service-to-service round trips beside the host's loopback; name
lookups from inside a service.

Imported by bench.py; runnable alone in the VM:
`python3 scripts/bench_networks.py [--n 200]`, and on the host (as root)
for the large row: `python3 scripts/bench_networks.py host --n 10000`.
"""

import json
import os
import subprocess
import time

START_N = 200
RTT_N = 2000
LOOKUPS = 1000

SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', {port})); s.listen()\n"
    "while True:\n"
    "    c = s.accept()[0]\n"
    "    while True:\n"
    "        d = c.recv(64)\n"
    "        if not d: break\n"
    "        c.sendall(d)\n"
)

CLIENT = (
    "import socket, time, statistics\n"
    "c = socket.create_connection(('{host}', {port}))\n"
    "c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
    "lat = []\n"
    "for _ in range({n}):\n"
    "    t = time.perf_counter(); c.sendall(b'x' * 32); c.recv(64); lat.append(time.perf_counter() - t)\n"
    "lat.sort()\n"
    "print(lat[len(lat) // 2] * 1e6, lat[len(lat) * 99 // 100] * 1e6)\n"
)

SINK = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', {port})); s.listen()\n"
    "while True:\n"
    "    c = s.accept()[0]\n"
    "    while c.recv(1 << 20): pass\n"
    "    c.close()\n"
)

# MB/s sending 256 MiB in 1 MiB writes (after 16 MiB of warm-up).
SEND = (
    "import socket, time\n"
    "c = socket.create_connection(('{host}', {port}))\n"
    "b = b'x' * (1 << 20)\n"
    "for _ in range(16): c.sendall(b)\n"
    "t = time.perf_counter()\n"
    "for _ in range(256): c.sendall(b)\n"
    "c.shutdown(socket.SHUT_WR); c.recv(1)\n"
    "print(256 / (time.perf_counter() - t))\n"
)

LOOKUP = (
    "import socket, time\n"
    "lat = []\n"
    "for _ in range({n}):\n"
    "    t = time.perf_counter(); socket.getaddrinfo('{name}', 80, socket.AF_INET); lat.append(time.perf_counter() - t)\n"
    "lat.sort()\n"
    "print(lat[len(lat) // 2] * 1e6, lat[len(lat) * 99 // 100] * 1e6)\n"
)


def service(script, networks=None, netns=True):
    ns = [{"type": "pid"}, {"type": "mount"}] + ([{"type": "network"}] if netns else [])
    s = {"process": {"args": ["/bin/sh", "-c", script]}, "linux": {"namespaces": ns}, "stderr": "stdout"}
    if networks:
        s["networks"] = networks
    return s


def ip_loop(n):
    """A shell loop doing with `ip` what a start on a network does: a
    namespace, a veth pair on a bridge, an address, a default route."""
    return f"""
set -e
ip link add isbench type bridge; ip link set isbench up; ip addr add 10.88.0.1/16 dev isbench
for i in $(seq 1 {n}); do
  ip netns add isb$i
  ip link add isv$i type veth peer name eth0 netns isb$i
  ip link set isv$i master isbench up
  ip -n isb$i addr add 10.88.$((i / 250)).$((i % 250 + 2))/16 dev eth0
  ip -n isb$i link set eth0 up; ip -n isb$i link set lo up
  ip -n isb$i route add default via 10.88.0.1
done
"""


def timed_up(out, name, d, svcs, nets, up, flags):
    """`out[name]`: seconds until `up … up -d FLAGS` has every service of
    the stack (`svcs` on `nets`) running; then it goes down."""
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "stack.json")
    doc = {"services": svcs}
    if nets:
        doc["networks"] = nets
    with open(path, "w") as f:
        json.dump(doc, f)
    sock = os.path.join(d, "s.sock")
    t0 = time.perf_counter()
    r = subprocess.run(up + ["up", "-d"] + flags + ["--socket", sock, "--log-dir", os.path.join(d, "logs"), path],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=2000)
    out[name] = time.perf_counter() - t0 if r.returncode == 0 else None
    if r.returncode != 0:
        out[f"{name}_error"] = r.stderr.decode()[-300:]
    subprocess.run([up[-1], "down", "--socket", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_cost(work, isola, n):
    """Seconds until `n` sleepers run: on one network, each with a bare
    network namespace, and a shell loop making a namespace, a veth pair
    and a bridge port per sandbox with `ip`."""
    out = {"n": n}
    conflist = os.path.join(work, "bench.conflist")
    with open(conflist, "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": "isolabench", "plugins": [{
            "type": "bridge", "bridge": "isolabench0", "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "dataDir": os.path.join(work, "ipam"),
                     "ranges": [[{"subnet": "10.87.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}, f)
    cni = {"net": {"driver": "cni", "cni": {"conflist": conflist}}}
    for name, nets in (("bare", None), ("network", {"net": {}}), ("cni", cni)):
        svcs = {f"s{i}": service("exec sleep 100000", ["net"] if nets else None) for i in range(n)}
        timed_up(out, name, os.path.join(work, f"net-{name}"), svcs, nets, [isola], ["--wait-seconds", "900"])
    script = ip_loop(n)
    t0 = time.perf_counter()
    r = subprocess.run(["sh", "-c", script], capture_output=True)
    out["ip_loop"] = time.perf_counter() - t0 if r.returncode == 0 else None
    subprocess.run(["sh", "-c", f"for i in $(seq 1 {n}); do ip netns del isb$i; done; ip link del isbench; "
                    "ip link del isolabench0"], capture_output=True)
    return out


def host_scale(work, isola, n):
    """On the host (`--no-cgroup`; no cgroup v2 here) inside a network
    namespace of the bench's own, so that no bridge or rule touches the
    host's: `n` services with a network namespace each, bare and on one
    network (a /16: past 1,000 sandboxes it spans joined bridges); a shell
    loop with `ip` for min(n, 1000) sandboxes, per start."""
    out = {"n": n}
    svc = {"process": {"args": ["/bin/busybox", "sleep", "100000"]}, "stderr": "stdout",
           "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}]}}
    for name, nets in (("bare", None), ("network", {"big": {"subnet": "10.90.0.0/16"}})):
        svcs = {f"s{i}": dict(svc, networks=["big"]) if nets else svc for i in range(n)}
        timed_up(out, name, os.path.join(work, f"hostnet-{name}"), svcs, nets, ["unshare", "-n", isola],
                 ["--no-cgroup", "--wait-seconds", "1800"])
    k = min(n, 1000)
    script = ip_loop(k) + f"for i in $(seq 1 {k}); do ip netns del isb$i; done\n"
    t0 = time.perf_counter()
    r = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True)
    out["ip_loop_per_start_ms"] = (time.perf_counter() - t0) * 1000 / k if r.returncode == 0 else None
    return out


def exec_py(isola, sock, name, code):
    r = subprocess.run([isola, "exec", "--socket", sock, name, "--", "python3", "-c", code],
                       capture_output=True, text=True, timeout=600)
    return r.stdout.strip()


def rtt_and_lookups(work, isola):
    """TCP round trips between two services on a network, beside two
    processes on the host's loopback; lookups of a service's name from
    inside another."""
    d = os.path.join(work, "net-rtt")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "rtt.json")
    doc = {"networks": {"net": {}}, "services": {
        "server": service(f"exec python3 -c \"{SERVER.format(port=9000)}\"", ["net"]),
        "sink": service(f"exec python3 -c \"{SINK.format(port=9002)}\"", ["net"]),
        "client": service("exec sleep 100000", ["net"]),
    }}
    with open(path, "w") as f:
        json.dump(doc, f)
    sock = os.path.join(d, "s.sock")
    subprocess.run([isola, "up", "-d", "--socket", sock, "--log-dir", os.path.join(d, "logs"), path],
                   check=True, stdout=subprocess.DEVNULL)
    time.sleep(1)
    out = {}
    p50, p99 = map(float, exec_py(isola, sock, "client", CLIENT.format(host="server", port=9000, n=RTT_N)).split())
    out["network_us"] = {"p50": p50, "p99": p99}
    out["network_mb_s"] = float(exec_py(isola, sock, "client", SEND.format(host="sink", port=9002)))
    cpu0 = supervisor_cpu(sock)
    p50, p99 = map(float, exec_py(isola, sock, "client", LOOKUP.format(name="server", n=LOOKUPS)).split())
    out["lookup_us"] = {"p50": p50, "p99": p99, "supervisor_cpu_ms_per_1000": (supervisor_cpu(sock) - cpu0) * 1000 * 1000 / LOOKUPS}
    subprocess.run([isola, "down", "--socket", sock], stdout=subprocess.DEVNULL)
    srv = subprocess.Popen(["python3", "-c", SERVER.format(port=9001)])
    time.sleep(1)
    r = subprocess.run(["python3", "-c", CLIENT.format(host="127.0.0.1", port=9001, n=RTT_N)],
                       capture_output=True, text=True)
    srv.kill()
    p50, p99 = map(float, r.stdout.split())
    out["loopback_us"] = {"p50": p50, "p99": p99}
    sink = subprocess.Popen(["python3", "-c", SINK.format(port=9003)])
    time.sleep(1)
    r = subprocess.run(["python3", "-c", SEND.format(host="127.0.0.1", port=9003)], capture_output=True, text=True)
    sink.kill()
    out["loopback_mb_s"] = float(r.stdout)
    return out


def supervisor_cpu(sock):
    """CPU seconds of the supervisor that listens on `sock`."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            if b"up" in cmd and sock.encode() in cmd:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            continue
    return 0.0


def run(work, isola, n=START_N):
    return {"start": start_cost(work, isola, n), "traffic": rtt_and_lookups(work, isola)}


def report(v):
    r = v.get("networks")
    if not r:
        return []
    s, t = r["start"], r["traffic"]
    lines = ["", "### Stack networks (VM)", ""]
    if s.get("bare") and s.get("network"):
        ip = f", a shell loop with `ip` (netns, veth, bridge port, address, route) {s['ip_loop']:.1f} s" if s.get("ip_loop") else ""
        lines.append(f"{s['n']} services until all run: with a bare network namespace {s['bare']:.1f} s, on one network "
                     f"{s['network']:.1f} s ({s['network'] / s['bare']:.2f}×){ip}.")
    if s.get("cni") and s.get("network"):
        lines.append(f"The same on a CNI network (Debian's bridge + host-local plugins, run per start): {s['cni']:.1f} s "
                     f"({s['cni'] / s['network']:.2f}× isola's own network, {s['cni'] / s['bare']:.2f}× bare).")
    lines.append(f"TCP round trip between two services on a network: p50 {t['network_us']['p50']:.0f} µs, p99 "
                 f"{t['network_us']['p99']:.0f} µs, beside the host's loopback p50 {t['loopback_us']['p50']:.0f} µs "
                 f"({t['network_us']['p50'] / t['loopback_us']['p50']:.2f}×).")
    if t.get("network_mb_s") and t.get("loopback_mb_s"):
        lines.append(f"TCP throughput between two services on a network: {t['network_mb_s']:.0f} MB/s, beside "
                     f"{t['loopback_mb_s']:.0f} MB/s over the host's loopback ({100 * t['network_mb_s'] / t['loopback_mb_s']:.0f} %).")
    lines.append(f"Name lookups from inside a service: p50 {t['lookup_us']['p50']:.0f} µs, p99 {t['lookup_us']['p99']:.0f} µs; "
                 f"supervisor CPU {t['lookup_us']['supervisor_cpu_ms_per_1000']:.1f} ms per 1,000 lookups.")
    return lines


def report_host(v):
    h = v.get("networks_host")
    if not h or not h.get("bare") or not h.get("network"):
        return []
    per = (h["network"] - h["bare"]) * 1000 / h["n"]
    loop = f"; a shell loop with `ip` takes {h['ip_loop_per_start_ms']:.0f} ms per sandbox" if h.get("ip_loop_per_start_ms") else ""
    return ["", "### Stack networks at scale (host, `--no-cgroup`, in a network namespace of the bench's)", "",
            f"{h['n']} services until all run: with a bare network namespace {h['bare']:.1f} s, on one network "
            f"{h['network']:.1f} s ({h['network'] / h['bare']:.2f}×, {per:.1f} ms more per start){loop}."]


if __name__ == "__main__":
    import sys
    import tempfile
    n = int(sys.argv[sys.argv.index("--n") + 1]) if "--n" in sys.argv else START_N
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    isola = os.environ.get("ISOLA_BIN", os.path.join(root, "target/x86_64-unknown-linux-gnu/release/isola"))
    work = tempfile.mkdtemp(prefix="isola-netbench-")
    if "host" in sys.argv:
        print("BENCH-JSON: " + json.dumps({"networks_host": host_scale(work, isola, n)}), flush=True)
    else:
        print("BENCH-JSON: " + json.dumps({"networks": run(work, isola, n)}), flush=True)
