#!/usr/bin/env bash
# `make layers` / `make package`: the ONNX Runtime Lambda layers (both architectures, from the
# PyPI wheels) and `sam build` of every function with cargo-lambda (offline; needs zig, installed
# here from PyPI (0.13.0, 411 MB, only for this), and the Rust target of the architecture).
#
# Usage: package.sh layers | package [arm64|x86_64]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
infra_venv="$root/.lmaas/infra-venv"
"$root/infra/aws/tools.sh"
case "${1:-package}" in
  layers)
    for arch in aarch64 x86_64; do
      PYTHON="$infra_venv/bin/python" infra/aws/install_runtime.sh --variant cpu --arch "$arch" \
        --dest ".lmaas/layers/onnxruntime-$arch/lib"
    done ;;
  package)
    "$0" layers
    architecture="${2:-arm64}"
    [ "$architecture" = arm64 ] && rustup target add aarch64-unknown-linux-gnu
    # cargo lambda build (sam build's rust-cargolambda) links for Lambda's glibc with zig.
    "$infra_venv/bin/python" -c "import ziglang" 2>/dev/null \
      || "$infra_venv/bin/pip" install --quiet --disable-pip-version-check "ziglang==0.13.0"
    export PATH="$infra_venv/bin:$root/.lmaas/venv/bin:$PATH"
    AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" SAM_CLI_TELEMETRY=0 \
      sam build --template-file infra/aws/template.yaml --build-dir .lmaas/sam-build \
      --parameter-overrides "Architecture=$architecture" ;;
  *) echo "usage: package.sh layers | package [arm64|x86_64]" >&2; exit 2 ;;
esac
