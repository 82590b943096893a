#!/usr/bin/env bash
# The official Kubernetes models (the `kubernetes` Python client, 31.x =
# Kubernetes 1.31) in a venv under target/, for scripts/kube-validate.py
# and the kube round-trip unit test. Idempotent.
set -eu
cd "$(dirname "$0")/.."
venv=target/kube-venv
if "$venv/bin/python3" -c 'import kubernetes, yaml' 2>/dev/null; then
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes==31.0.0'
