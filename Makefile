# `make test` is the one test command (CI runs it through .ci/run).
.PHONY: all build test unit vm-test vm-shell vm lint fmt bench clean-vm

all: build

build:
	cargo build --release -p isola

# Unit tests on the host (no root, no cgroup needed), then the root
# integration tests inside the cgroup v2 VM.
test: unit vm-test

unit:
	cargo test --workspace --exclude isola-tests

# T=name runs only tests whose name contains it.
vm-test:
	scripts/vm-test.sh $(T)

vm-shell:
	scripts/vm.sh --shell

# make vm CMD='cat /sys/fs/cgroup/cgroup.controllers'
vm:
	scripts/vm.sh -- '$(CMD)'

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean-vm:
	rm -rf .cache/vm
