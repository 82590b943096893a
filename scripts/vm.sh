#!/usr/bin/env bash
# Boot a throwaway qemu VM (TCG) with a unified cgroup v2 hierarchy and run one
# command in it as root. The guest's root filesystem is the host's `/`, shared
# read-only over virtio-9p, so host-built binaries run unchanged; /tmp and /run
# are tmpfs; a fresh sparse raw file is attached as virtio-blk /dev/vda so
# io.max has a real device to throttle.
#
#   scripts/vm.sh [--timeout SECONDS] [--] COMMAND...
#
# COMMAND runs through bash in the current directory (as seen through the
# share). Its output is streamed; this script exits with COMMAND's status, or
# 124 if the guest did not finish within the timeout, or 125 if the guest died
# without reporting a status.
set -euo pipefail

timeout_s=${ISOLA_VM_TIMEOUT:-900}
interactive=0
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) timeout_s=$2; shift 2 ;;
        --shell) interactive=1; shift ;;
        --) shift; break ;;
        *) break ;;
    esac
done
if [ $# -eq 0 ] && [ "$interactive" = 0 ]; then
    echo "usage: scripts/vm.sh [--timeout S] [--shell] [--] COMMAND..." >&2
    exit 2
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${ISOLA_VM_CACHE:-$repo/.cache/vm}
mkdir -p "$cache"

die() { echo "vm.sh: $*" >&2; exit 125; }

# The kernel comes from Debian's generic image (the cloud flavour lacks 9p);
# resolve the versioned package from the metapackage instead of pinning it.
kpkg=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null | grep -o 'linux-image-[^ ,]*' | head -n1) \
    || die "linux-image-amd64 is not installed (run .ci/run or apt-get install linux-image-amd64)"
[ -n "$kpkg" ] || die "cannot resolve the kernel package behind linux-image-amd64"
kver=${kpkg#linux-image-}
vmlinuz=/boot/vmlinuz-$kver
[ -r "$vmlinuz" ] || die "$vmlinuz missing (package $kpkg)"
for tool in qemu-system-x86_64 busybox cpio xz modprobe; do
    command -v "$tool" >/dev/null || die "$tool not found (run .ci/run to install the VM prerequisites)"
done

stamp="$kver $(sha256sum "$0" | cut -c1-16)"
if [ ! -f "$cache/stamp" ] || [ "$(cat "$cache/stamp")" != "$stamp" ] \
    || [ ! -f "$cache/vmlinux" ] || [ ! -f "$cache/initramfs.cpio" ]; then
    echo "vm.sh: building VM kernel and initramfs for $kver into $cache" >&2
    rm -f "$cache/stamp"
    # Booting the uncompressed ELF skips the in-guest xz decompression, which
    # is slow under TCG. Find the xz stream inside the bzImage and unpack it.
    off=$(LC_ALL=C grep -abo $'\xfd7zXZ\x00' "$vmlinuz" | head -n1 | cut -d: -f1) \
        || die "no xz payload in $vmlinuz"
    # tail may die of SIGPIPE once xz has read its one stream: judge the result.
    { tail -c +"$((off + 1))" "$vmlinuz" || true; } | xz -dc --single-stream > "$cache/vmlinux.tmp" 2>/dev/null || true
    head -c 4 "$cache/vmlinux.tmp" | grep -q 'ELF' || die "cannot extract vmlinux from $vmlinuz"
    mv "$cache/vmlinux.tmp" "$cache/vmlinux"

    ird=$(mktemp -d)
    trap 'rm -rf "$ird"' EXIT
    mkdir -p "$ird"/{bin,proc,sys,dev,newroot,mods}
    cp /bin/busybox "$ird/bin/busybox"
    for a in sh mount insmod mkdir switch_root cat echo poweroff chmod; do ln -s busybox "$ird/bin/$a"; done
    : > "$ird/mods/order"
    # Stack networks need veth pairs, bridges and nftables with NAT;
    # autoscaling reads unix listeners' queues over sock_diag; image roots
    # are overlays; a rootless sandbox's outbound access is pasta's tap.
    for m in 9pnet_virtio 9p virtio_pci virtio_blk loop veth bridge nf_tables nft_chain_nat nft_masq unix_diag overlay tun; do
        modprobe -S "$kver" --show-depends "$m" | while read -r verb path _; do
            [ "$verb" = insmod ] || continue
            base=$(basename "$path")
            grep -qx "$base" "$ird/mods/order" && continue
            cp "$path" "$ird/mods/$base"
            echo "$base" >> "$ird/mods/order"
        done
    done
    cat > "$ird/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /mods/order); do insmod /mods/$m || echo "initramfs: insmod $m failed"; done
# What udev would do: /dev/net/tun is for everyone (pasta opens it as a user).
[ -e /dev/net/tun ] && chmod 666 /dev/net/tun
o=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o ro,$o,cache=loose hostroot /newroot || { echo "initramfs: cannot mount host root"; poweroff -f; }
mount -t tmpfs -o mode=755 tmpfs /newroot/run
# Keep the host's /tmp reachable under /run/hosttmp: a checkout living in
# /tmp is bound back into the guest's tmpfs /tmp by stage2.
mkdir -p /newroot/run/hosttmp /newroot/run/isola-vm
mount --bind /newroot/tmp /newroot/run/hosttmp
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t 9p -o $o share /newroot/run/isola-vm || { echo "initramfs: cannot mount share"; poweroff -f; }
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
mount -t cgroup2 -o nsdelegate cgroup2 /newroot/sys/fs/cgroup
exec switch_root /newroot /bin/bash /run/isola-vm/stage2
INIT
    chmod +x "$ird/init"
    (cd "$ird" && find . | cpio -o -H newc --quiet) > "$cache/initramfs.cpio"
    rm -rf "$ird"; trap - EXIT
    echo "$stamp" > "$cache/stamp"
fi

# Per run: the 9p share (command in, status out) and a fresh sparse disk, so
# runs never share state and several VMs can run at once.
work=$(mktemp -d /tmp/isola-vm.XXXXXX)
share=$work/share
disk=$work/disk.raw
mkdir "$share"
truncate -s 256M "$disk"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

# stage2 runs as PID 1 of the guest, after switch_root into the shared host /.
{
    echo '#!/bin/bash'
    echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8'
    printf 'export RUSTUP_HOME=%q CARGO_HOME=%q\n' "${RUSTUP_HOME:-$HOME/.rustup}" "${CARGO_HOME:-$HOME/.cargo}"
    printf 'export PATH="$CARGO_HOME/bin:$PATH"\n'
    # Forward test-selection knobs the developer set on the host.
    for v in RUST_BACKTRACE RUST_TEST_THREADS ISOLA_BIN ISOLA_TEST_FILTER; do
        if [ -n "${!v:-}" ]; then printf 'export %s=%q\n' "$v" "${!v}"; fi
    done
    echo 'mkdir -p /dev/pts /dev/shm /dev/mqueue'
    echo 'mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts 2>/dev/null'
    echo 'mount -t tmpfs tmpfs /dev/shm'
    echo 'mount -t mqueue mqueue /dev/mqueue 2>/dev/null'
    echo 'ip link set lo up 2>/dev/null'
    # As systemd would: delegate the controllers isola needs from the root.
    echo 'echo "+cpuset +cpu +io +memory +pids" > /sys/fs/cgroup/cgroup.subtree_control'
    echo 'hostname isola-vm'
    # A working directory under /tmp is hidden by the guest's tmpfs /tmp:
    # bind the host's copy back in (read-only, like the rest of the host).
    case "$PWD" in
        /tmp/*) printf 'mkdir -p %q && mount --bind %q %q\n' "$PWD" "/run/hosttmp/${PWD#/tmp/}" "$PWD" ;;
    esac
    printf 'cd %q || { echo "vm.sh: cannot enter %q in the guest"; echo 1 > /run/isola-vm/status; echo o > /proc/sysrq-trigger; sleep 10; }\n' "$PWD" "$PWD"
    if [ "$interactive" = 1 ]; then
        echo 'setsid -c bash -i </dev/ttyS0 >/dev/ttyS0 2>&1'
        echo 'st=$?'
    else
        printf 'setsid bash -c %q </dev/null\n' "$*"
        echo 'st=$?'
    fi
    echo 'echo "$st" > /run/isola-vm/status'
    echo 'sync'
    echo 'echo 0 > /proc/sys/kernel/printk'
    echo 'echo o > /proc/sysrq-trigger'
    echo 'sleep 10'
} > "$share/stage2"
chmod +x "$share/stage2"

qemu=(qemu-system-x86_64 -accel tcg,thread=multi -M pc -cpu max -smp 2 -m "${ISOLA_VM_MEM:-1024}"
      -nodefaults -no-reboot -display none -serial stdio -nic none
      -kernel "$cache/vmlinux" -initrd "$cache/initramfs.cpio"
      -append "console=ttyS0 quiet loglevel=1 panic=-1 mitigations=off cgroup_no_v1=all rdinit=/init"
      -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap
      -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
      -fsdev local,id=share,path="$share",security_model=none,multidevs=remap
      -device virtio-9p-pci,fsdev=share,mount_tag=share
      -drive file="$disk",if=virtio,format=raw,cache=none,aio=threads)

set +e
if [ "$interactive" = 1 ]; then
    "${qemu[@]}"
    exit $?
fi
# The serial line turns \n into \r\n; strip the \r (line-buffered, so output
# streams) so logs read normally,
# and drop the kernel's own power-off notice.
timeout --foreground -k 10 "$timeout_s" "${qemu[@]}" </dev/null | sed -u 's/\r$//' \
    | grep --line-buffered -v -E '^\[ *[0-9.]+\] (sysrq: Power Off|reboot: Power down)$'
qst=${PIPESTATUS[0]}
set -e
if [ "$qst" = 124 ] || [ "$qst" = 137 ]; then
    echo "vm.sh: guest did not finish within ${timeout_s}s; killed it (ISOLA_VM_TIMEOUT or --timeout to change)" >&2
    exit 124
fi
if [ ! -s "$share/status" ]; then
    echo "vm.sh: guest exited (qemu status $qst) without reporting the command's status: it crashed or failed to boot" >&2
    exit 125
fi
exit "$(cat "$share/status")"
