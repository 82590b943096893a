#!/usr/bin/env bash
# Runs inside the VM (see vm-test.sh): each integration test binary in turn,
# one test at a time (tests measure CPU and I/O rates and check that no cgroup
# or process is left behind, so they must not overlap). Prints the cargo test
# summary line of every binary at the end and fails if any binary failed.
set -u
args=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=("$1"); shift; done
shift
status=0
summary=()
for exe in "$@"; do
    name=$(basename "$exe" | sed 's/-[0-9a-f]*$//')
    echo "=== $name"
    out=$(mktemp)
    # A hung test binary fails with a message instead of eating the VM's
    # whole time budget.
    timeout -k 10 "${ISOLA_TEST_TIMEOUT:-600}" "$exe" --test-threads=1 "${args[@]}" 2>&1 | tee "$out"
    st=${PIPESTATUS[0]}
    line=$(grep '^test result:' "$out" | tail -n1)
    summary+=("$name: ${line:-no summary line (status $st)}")
    [ "$st" = 124 ] && summary+=("$name: TIMED OUT after ${ISOLA_TEST_TIMEOUT:-600}s")
    [ "$st" = 0 ] || status=1
    rm -f "$out"
done
echo "=== in-VM summary"
printf '%s\n' "${summary[@]}"
exit $status
