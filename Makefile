# lmaas: `make dev` runs the whole product locally; `make test` runs every test. Both install
# what they need first (pinned, into git-ignored .lmaas/), so they work on a fresh machine.
.PHONY: dev test setup bench build lint fmt infra-check layers package

setup:
	infra/local/setup.sh
	infra/local/samples.sh

dev:
	infra/local/dev.sh

test:
	infra/local/setup.sh --test-tools
	infra/local/samples.sh
	cargo build --workspace --all-targets
	cargo test --workspace
	$(MAKE) infra-check

bench: setup
	infra/local/bench.sh

build:
	cargo build --workspace --release

lint: infra-check
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	.lmaas/infra-venv/bin/cfn-lint infra/aws/template.yaml
	AWS_DEFAULT_REGION=us-east-1 SAM_CLI_TELEMETRY=0 .lmaas/infra-venv/bin/sam validate --lint --template-file infra/aws/template.yaml

# The template against the code: one route table, least-privilege IAM (infra/aws/check.py).
infra-check:
	infra/aws/tools.sh
	.lmaas/infra-venv/bin/python infra/aws/check.py

# ONNX Runtime Lambda layers for both architectures, from the PyPI wheels.
layers:
	infra/aws/package.sh layers

# sam build of every function (cargo lambda, arm64 by default: make package ARCH=x86_64).
package:
	infra/aws/package.sh package $(or $(ARCH),arm64)

fmt:
	cargo fmt --all
