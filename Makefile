# `make test` is the one test command (CI runs it through .ci/run).
.PHONY: all build test unit vm-test vm-deps vm-shell vm lint fmt bench bench-ab clean-vm demo rootfs fuzz install

all: build

build:
	cargo build --release -p isola

# Unit tests on the host (no root, no cgroup needed), then the root
# integration tests inside the cgroup v2 VM.
test: unit vm-test

unit:
	scripts/kube-deps.sh
	cargo test --workspace --exclude isola-tests

# T=name runs only tests whose name contains it.
vm-test: vm-deps
	scripts/vm-test.sh $(T)

# qemu, the VM's kernel and the tools its tests use, from Debian's packages.
vm-deps:
	scripts/vm-deps.sh

# The demo stack (specs/demo-stack.json) and two one-off sandboxes, in the VM.
demo: vm-deps rootfs
	cargo build -p isola
	scripts/vm.sh -- scripts/demo.sh

# A minimal busybox root filesystem for specs/busybox-rootfs.json.
rootfs: specs/rootfs/bin/busybox

specs/rootfs/bin/busybox:
	mkdir -p specs/rootfs/bin specs/rootfs/proc specs/rootfs/dev specs/rootfs/tmp specs/rootfs/etc
	cp /bin/busybox specs/rootfs/bin/busybox
	echo 'isola-demo' > specs/rootfs/etc/hostname

vm-shell:
	scripts/vm.sh --shell

# make vm CMD='cat /sys/fs/cgroup/cgroup.controllers'
vm:
	scripts/vm.sh -- '$(CMD)'

# isola beside runc, crun, bubblewrap and unshare: host setting (no cgroup)
# and VM setting (cgroup v2), one table in bench/results.md.
# Under TCG a sandbox costs ~50x more than on the host: fewer runs there,
# and 3 GiB so that 1000 sandboxes fit.
BENCH_ARGS ?=
BENCH_VM_ARGS ?= --n 60 --seq 120
bench:
	cargo build --release -p isola
	scripts/bench-deps.sh
	mkdir -p bench
	python3 scripts/bench.py host $(BENCH_ARGS) --json bench/host.json > /dev/null
	ISOLA_VM_TIMEOUT=3600 ISOLA_VM_MEM=3072 scripts/vm.sh -- python3 scripts/bench.py vm $(BENCH_VM_ARGS) | tee bench/vm.log | sed -n 's/^BENCH-JSON: //p' > bench/vm.json
	python3 scripts/bench.py report bench/host.json bench/vm.json > bench/results.md
	cat bench/results.md

# Two builds of isola side by side, alternating runs (A B A B …): time to
# all running, status latency and RSS at 100 and 1000 services, idle
# wakeups. For a change to the supervisor, A is the commit it started from:
#   make bench-ab A=/path/to/old/isola B=target/x86_64-unknown-linux-gnu/release/isola
# Both paths must be visible in the VM (under the repository or /work, not /tmp).
AB_ROUNDS ?= 3
bench-ab:
	python3 scripts/bench_ab.py host $(A) $(B) --rounds $(AB_ROUNDS)
	ISOLA_VM_TIMEOUT=3600 ISOLA_VM_MEM=3072 scripts/vm.sh -- python3 scripts/bench_ab.py vm $(A) $(B) --rounds $(AB_ROUNDS)

# Garbage in at scale: mutated stack files, control requests and notify
# datagrams (crates/supervisor/src/garbage_tests.rs), FUZZ_CASES per input
# and seed, three seeds, bounded to FUZZ_SECONDS each; the seccomp
# generator against its oracle on 20,000 random profiles; then
# coverage-guided fuzzing (cargo-fuzz, libFuzzer, nightly) of the spec,
# stack-file, control-request and notify parsers, FUZZ_TARGET_SECONDS each,
# seeded with specs/.
FUZZ_CASES ?= 100000
FUZZ_SECONDS ?= 300
FUZZ_TARGET_SECONDS ?= 60
FUZZ_TARGETS ?= spec stack control notify
fuzz:
	for seed in 1 2 3; do \
		ISOLA_FUZZ_SEED=$$seed ISOLA_FUZZ_CASES=$(FUZZ_CASES) timeout $(FUZZ_SECONDS) \
			cargo test --release -q -p isola-supervisor --lib garbage -- --nocapture || exit 1; \
	done
	ISOLA_SECCOMP_PROFILES=20000 cargo test --release -q -p isola-runtime --lib oracle
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
	for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t; \
		(cd fuzz && cargo +nightly fuzz run $$t corpus/$$t ../specs -- \
			-max_total_time=$(FUZZ_TARGET_SECONDS) -max_len=65536 -print_final_stats=1) || exit 1; \
	done

# The binary, its man pages and shell completions under PREFIX.
PREFIX ?= /usr/local
BIN := target/x86_64-unknown-linux-gnu/release/isola
install:
	cargo build --release -p isola
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/isola
	# The OCI runtime's unambiguous name (docs/oci.md): always runc's CLI.
	ln -sf isola $(DESTDIR)$(PREFIX)/bin/isola-runtime
	mkdir -p $(DESTDIR)$(PREFIX)/share/man/man1
	$(BIN) manpages $(DESTDIR)$(PREFIX)/share/man/man1
	mkdir -p $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	$(BIN) completions bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/isola
	$(BIN) completions zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_isola
	$(BIN) completions fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/isola.fish

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean-vm:
	rm -rf .cache/vm
