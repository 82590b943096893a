#!/usr/bin/env bash
# Install what the VM harness (and so `make test` and `make demo`) needs and
# a fresh Debian machine lacks: qemu, the kernel it boots, busybox for the
# initramfs, and the tools the tests use inside the VM. Debian packages
# only; says what it installs; does nothing when all is there.
set -euo pipefail
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v busybox >/dev/null || need+=(busybox-static)
command -v modprobe >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
command -v xz >/dev/null || need+=(xz-utils)
command -v ip >/dev/null || need+=(iproute2)
# The stuck-teardown test suspends a device-mapper device in the VM.
command -v dmsetup >/dev/null || need+=(dmsetup)
# The OCI tests drive isola through the real clients (podman via conmon,
# containerd via its runc shim) and compare with crun and runc.
command -v podman >/dev/null || need+=(podman)
command -v conmon >/dev/null || need+=(conmon)
command -v containerd >/dev/null || need+=(containerd)
command -v crun >/dev/null || need+=(crun)
command -v runc >/dev/null || need+=(runc)
command -v tar >/dev/null || need+=(tar)
# `isola top` is tested as a person sees it, in a tmux pane.
command -v tmux >/dev/null || need+=(tmux)
# The metrics endpoint is scraped by a real Prometheus server and linted
# by promtool (both in Debian's prometheus package).
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
# Stack networks: isolation and NAT between networks are nftables rules.
command -v nft >/dev/null || need+=(nftables)
# The CNI driver of stack networks runs the reference plugins.
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
# Images are pulled from a real registry (the CNCF distribution
# registry) that skopeo pushes test images to.
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
# The registry's token auth is tested with a token signed by openssl.
command -v openssl >/dev/null || need+=(openssl)
# Log forwarding is tested against a real systemd-journald, run standalone.
[ -x /lib/systemd/systemd-journald ] || need+=(systemd)
command -v journalctl >/dev/null || need+=(systemd)
# Rootless: subordinate id ranges are mapped by the setuid newuidmap and
# newgidmap (Debian uidmap).
command -v newuidmap >/dev/null || need+=(uidmap)
# ... and their outbound access goes through pasta (Debian passt).
command -v pasta >/dev/null || need+=(passt)
dpkg-query -W -f='${Status}' linux-image-amd64 2>/dev/null | grep -q 'ok installed' || need+=(linux-image-amd64)
if [ ${#need[@]} -gt 0 ]; then
    echo "isola: installing what the VM needs: ${need[*]}"
    if [ "$(id -u)" != 0 ]; then
        echo "isola: run as root, or: apt-get install ${need[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
