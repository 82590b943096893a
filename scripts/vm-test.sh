#!/usr/bin/env bash
# Build the root integration tests on the host and run them as root inside the
# cgroup v2 VM. Any failing test (or a guest that cannot run them) fails this
# script. Extra arguments go to every test binary, e.g. a test-name filter:
#   scripts/vm-test.sh oom_kill_is_reported
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

cargo build --quiet -p isola ${CARGO_PROFILE_ARGS:-}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test -p isola-tests --no-run ${CARGO_PROFILE_ARGS:-} 2>"$log" || { cat "$log" >&2; exit 1; }
mapfile -t exes < <(sed -n 's/.*Executable .*(\(.*\))$/\1/p' "$log" | grep -v '/isola_tests-')
if [ ${#exes[@]} -eq 0 ]; then
    echo "vm-test.sh: no integration test executables were built" >&2
    exit 1
fi
args=$(printf '%q ' "$@")
cmd="bash scripts/in-vm-tests.sh ${args}-- $(printf '%q ' "${exes[@]}")"
exec scripts/vm.sh --timeout "${ISOLA_VM_TIMEOUT:-1200}" -- "$cmd"
