#!/usr/bin/env python3
"""Services from OCI images (issue 25), host setting.

  imported by bench.py: run(work, setting, n_services), report(o)

The image: busybox-static (one layer), 1,500 files of 4 KiB random bytes
(a second), one 16 MiB random file (a third), gzip-compressed, written
here as an OCI layout and pushed by skopeo to a real registry (Debian's
docker-registry) on loopback. Three rows:

- pull: `isola pull` from the registry into an empty store (each layer
  streamed, verified and unpacked once, kept unpacked only) beside
  `skopeo copy` to an OCI layout plus `umoci raw unpack` of it into one
  flattened tree (skopeo keeps the compressed blobs; umoci applies the
  layers one over another). Interleaved rounds, each from empty.
- start: `isola run --pull never REF -- /bin/true` (the store read, the
  root prepared, the overlay mounted in the sandbox, the root removed)
  beside `isola run` of the same starter spec with `root.path` the
  flattened tree and the same mounts: p50 ratio (goal <= 1.1).
- N services of one image under `isola up` (sleeping, pid + mount
  namespaces, no cgroup on the host) against the same N on the flattened
  tree as a read-only directory rootfs: time until all run, and the disk
  each uses (the layers once plus N writable layers, against the one tree).
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402

APPLETS = ["sh", "true", "sleep", "cat", "ls"]


def _layout(path):
    """Write the bench image as an OCI layout at `path`, tagged `bench`."""
    blobs = os.path.join(path, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data):
        h = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, h), "wb") as f:
            f.write(data)
        return "sha256:" + h, len(data)

    def layer(add):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
            add(t)
        data = raw.getvalue()
        return data, gzip.compress(data, 6)

    def base(t):
        t.add("/bin/busybox", "bin/busybox")
        for a in APPLETS:
            i = tarfile.TarInfo(f"bin/{a}")
            i.type, i.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(i)
        for d in ("proc", "dev", "sys", "tmp", "etc"):
            i = tarfile.TarInfo(d)
            i.type, i.mode = tarfile.DIRTYPE, 0o755
            t.addfile(i)

    def files(t):
        for k in range(1500):
            data = os.urandom(4096)
            i = tarfile.TarInfo(f"data/f{k}")
            i.size = len(data)
            t.addfile(i, io.BytesIO(data))

    def big(t):
        data = os.urandom(16 << 20)
        i = tarfile.TarInfo("data/big")
        i.size = len(data)
        t.addfile(i, io.BytesIO(data))

    descs, diffs = [], []
    for add in (base, files, big):
        raw, gz = layer(add)
        d, n = put(gz)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n})
        diffs.append("sha256:" + hashlib.sha256(raw).hexdigest())
    cfg = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/true"], "Env": ["PATH=/bin"]},
           "rootfs": {"type": "layers", "diff_ids": diffs}}
    cd, cn = put(json.dumps(cfg).encode())
    man = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
           "layers": descs}
    md, mn = put(json.dumps(man).encode())
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "digest": md, "size": mn, "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}, f)
    with open(os.path.join(path, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')


class Registry:
    def __init__(self, work):
        self.dir = os.path.join(work, "registry")
        os.makedirs(os.path.join(self.dir, "data"))
        self.host = f"127.0.0.1:{bench.free_port()}"
        cfg = os.path.join(self.dir, "config.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {self.dir}/data\n"
                    f"http:\n  addr: {self.host}\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        import socket
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", int(self.host.split(":")[1])), 1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("bench: docker-registry did not listen")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def skopeo(work, *args):
    subprocess.run(["skopeo", "--tmpdir", work, "copy", "--quiet", *args], check=True,
                   stdout=subprocess.DEVNULL)


def du(*paths):
    out = subprocess.run(["du", "-s", "-B1", "--", *paths], capture_output=True, text=True).stdout
    return sum(int(line.split()[0]) for line in out.splitlines())


def timed(argv):
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def pulls(work, reg, ref, rounds):
    """Seconds per pull: isola, and skopeo + umoci, interleaved."""
    res = {"isola": [], "skopeo+umoci": []}
    for r in range(rounds):
        store = os.path.join(work, f"pull-store{r}")
        res["isola"].append(timed([bench.ISOLA, "pull", "--store", store, "--insecure-registry", reg.host, ref]))
        shutil.rmtree(store)
        oci, rootfs = os.path.join(work, f"pull-oci{r}"), os.path.join(work, f"pull-rootfs{r}")
        t0 = time.perf_counter()
        skopeo(work, "--src-tls-verify=false", ref, f"oci:{oci}:bench")
        subprocess.run(["umoci", "raw", "unpack", "--image", f"{oci}:bench", rootfs], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res["skopeo+umoci"].append(time.perf_counter() - t0)
        shutil.rmtree(oci)
        shutil.rmtree(rootfs)
    return res


def dir_spec(work, rootfs):
    """The starter spec as `isola run REF -- /bin/true` makes it, on the
    flattened tree as a directory rootfs."""
    spec = json.loads(subprocess.run([bench.ISOLA, "spec"], capture_output=True, text=True, check=True).stdout)
    spec["linux"].pop("resources", None)
    spec["process"].update({"args": ["/bin/true"], "env": ["PATH=/bin", "HOME=/"], "cwd": "/"})
    spec["root"] = {"path": rootfs, "readonly": False}
    spec["mounts"] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=64m"]},
    ]
    path = os.path.join(work, "dir-spec.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    return path


def starts(store, ref, spec, n):
    """Seconds per start, image and directory interleaved."""
    res = {"image": [], "directory": []}
    for i in range(n):
        res["image"].append(timed([bench.ISOLA, "run", "--no-cgroup", "--name", f"img{i}", "--store", store,
                                   "--pull", "never", ref, "--", "/bin/true"]))
        res["directory"].append(timed([bench.ISOLA, "run", "--no-cgroup", "--name", f"dir{i}", spec]))
    return res


def many(work, store, ref, rootfs, n, setting):
    """N sleeping services from the image, then from the flattened tree."""
    ns = {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
    out = {}
    for form in ("image", "directory"):
        if form == "image":
            svc = {"image": ref, "process": {"args": ["/bin/sleep", "100000"]}, "linux": ns}
            extra = ["--store", store, "--pull", "never"]
        else:
            svc = {"process": {"args": ["/bin/sleep", "100000"]}, "linux": ns,
                   "root": {"path": rootfs, "readonly": True}}
            extra = []
        up = bench.Up(work, f"images-{form}", {f"s{i}": svc for i in range(n)}, setting, extra)
        secs = up.wait_all()
        disk = (du(os.path.join(store, "layers"), os.path.join(store, "roots")) if form == "image" else du(rootfs))
        up.down()
        out[form] = {"seconds": secs, "disk_bytes": disk}
    return out


def run(work, setting, n_services):
    work = os.path.join(work, "images")
    os.makedirs(work)
    layout = os.path.join(work, "layout")
    _layout(layout)
    reg = Registry(work)
    try:
        ref = f"docker://{reg.host}/bench/img:1"
        skopeo(work, "--dest-tls-verify=false", f"oci:{layout}:bench", ref)
        res = {"pull": pulls(work, reg, ref, 3)}
        store = os.path.join(work, "store")
        subprocess.run([bench.ISOLA, "pull", "--store", store, "--insecure-registry", reg.host, ref], check=True,
                       stdout=subprocess.DEVNULL)
        oci, rootfs = os.path.join(work, "oci"), os.path.join(work, "rootfs")
        skopeo(work, "--src-tls-verify=false", ref, f"oci:{oci}:bench")
        subprocess.run(["umoci", "raw", "unpack", "--image", f"{oci}:bench", rootfs], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spec = dir_spec(work, rootfs)
        starts(store, ref, spec, 5)  # warm
        res["start"] = starts(store, ref, spec, 60)
        res["many"] = many(work, store, ref, rootfs, n_services, setting)
        res["many"]["n"] = n_services
        return res
    finally:
        reg.stop()


def report(o):
    if not o:
        return []
    med = statistics.median
    p = o["pull"]
    s = o["start"]
    m = o["many"]
    lines = ["", "## Services from images (host)", "",
             "| row | isola | peer / directory | ratio |", "|---|---|---|---|"]
    lines.append(f"| pull 23 MiB image, 3 layers (s, median of 3) | {med(p['isola']):.2f} | "
                 f"skopeo+umoci {med(p['skopeo+umoci']):.2f} | {med(p['isola']) / med(p['skopeo+umoci']):.2f} |")
    lines.append(f"| start, image vs directory rootfs (ms, p50 of {len(s['image'])}) | {med(s['image']) * 1000:.1f} | "
                 f"{med(s['directory']) * 1000:.1f} | {med(s['image']) / med(s['directory']):.2f} |")
    if m["image"]["seconds"] and m["directory"]["seconds"]:
        lines.append(f"| {m['n']} services of one image, all running (s) | {m['image']['seconds']:.1f} | "
                     f"{m['directory']['seconds']:.1f} | {m['image']['seconds'] / m['directory']['seconds']:.2f} |")
    lines.append(f"| {m['n']} services, disk (MiB) | {m['image']['disk_bytes'] / 2**20:.1f} | "
                 f"{m['directory']['disk_bytes'] / 2**20:.1f} | {m['image']['disk_bytes'] / m['directory']['disk_bytes']:.2f} |")
    lines += ["", "Pull: isola streams each layer through its digest check into its unpacked directory and keeps",
              "nothing else; skopeo keeps the compressed blobs and umoci writes one flattened tree. Disk: the",
              "image's layers once plus a writable layer per service, against the one tree all directory",
              "services share read-only (and so cannot write)."]
    return lines


if __name__ == "__main__":
    import tempfile
    w = tempfile.mkdtemp(prefix="isola-bench-images-")
    try:
        r = run(w, "host", int(bench.arg("--n", 1000)))
        print("\n".join(report(r)))
    finally:
        shutil.rmtree(w, ignore_errors=True)
