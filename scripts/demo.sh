#!/usr/bin/env bash
# The demo stack, run inside the VM by `make demo`: start it, let it live a
# few seconds, show status and logs, run two one-off sandboxes, tear down.
set -u
isola=${ISOLA_BIN:-target/x86_64-unknown-linux-gnu/debug/isola}
sock=/run/isola/demo.sock
export ISOLA_SOCKET=$sock

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

"$isola" up --log-dir /tmp/demo-logs specs/demo-stack.json &
up=$!
for _ in $(seq 100); do "$isola" status >/dev/null 2>&1 && break; sleep 0.1; done
sleep 6
step "$isola" status
step "$isola" logs -n 6 crashy
step "$isola" logs -n 3 hog
step "$isola" restart worker
step "$isola" upgrade
step "$isola" info
# The supervisor killed: its keeper (the pid `isola up` started as) starts
# a new one, and no service notices.
sup=$("$isola" info --json | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
step kill -9 "$sup"
for _ in $(seq 50); do "$isola" status >/dev/null 2>&1 && break; sleep 0.1; done
step "$isola" status
step "$isola" run specs/hello.json
step "$isola" run specs/busybox-rootfs.json
step "$isola" down
wait "$up"
echo "isola up exited with $?"
