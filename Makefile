# lmaas: `make dev` runs the whole product locally; `make test` runs every test. Both install
# what they need first (pinned, into git-ignored .lmaas/), so they work on a fresh machine.
.PHONY: dev test setup bench build lint fmt

setup:
	infra/local/setup.sh
	infra/local/samples.sh

dev:
	infra/local/dev.sh

test: setup
	cargo build --workspace --all-targets
	cargo test --workspace

bench: setup
	infra/local/bench.sh

build:
	cargo build --workspace --release

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all
