#!/usr/bin/env bash
# The peers `make bench` measures isola against, from Debian's packages.
set -euo pipefail
need=()
command -v runc >/dev/null || need+=(runc)
command -v crun >/dev/null || need+=(crun)
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v podman >/dev/null || need+=(podman)
command -v conmon >/dev/null || need+=(conmon)
# Images: a registry to pull from, skopeo and umoci as the peer of a pull.
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v umoci >/dev/null || need+=(umoci)
if [ ${#need[@]} -gt 0 ]; then
    echo "bench: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
