#!/usr/bin/env bash
# Installs ONNX Runtime's shared library (and, for the GPU variant, its CUDA provider with the
# CUDA 13 / cuDNN 9 libraries) from PyPI wheels into one folder. The one way lmaas gets ONNX
# Runtime: local setup (cpu), the Lambda layers (cpu, per architecture) and the worker image (gpu).
#
# Usage: install_runtime.sh --variant cpu|gpu --arch x86_64|aarch64 --dest DIR
#   PYTHON (default python3) runs pip; only wheels are used, nothing is compiled.
set -euo pipefail
variant=cpu; arch="$(uname -m)"; dest=""
while [ $# -gt 0 ]; do
  case "$1" in
    --variant) variant="$2"; shift 2 ;;
    --arch) arch="$2"; shift 2 ;;
    --dest) dest="$2"; shift 2 ;;
    *) echo "usage: install_runtime.sh --variant cpu|gpu --arch x86_64|aarch64 --dest DIR" >&2; exit 2 ;;
  esac
done
[ -n "$dest" ] || { echo "--dest is required" >&2; exit 2; }
version="1.31.1"
python="${PYTHON:-python3}"
case "$variant" in
  cpu) package="onnxruntime==$version" ;;
  # The [cuda,cudnn] extras name the CUDA 13 and cuDNN 9 wheels this build was made with.
  gpu) package="onnxruntime-gpu[cuda,cudnn]==$version" ;;
  *) echo "unknown variant $variant" >&2; exit 2 ;;
esac
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014; do platforms+=(--platform "${tag}_$arch"); done
deps=(--no-deps); [ "$variant" = gpu ] && deps=()

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: "${deps[@]}" \
  "${platforms[@]}" --python-version 3.11 --implementation cp -d "$tmp" "$package"
mkdir -p "$dest"
"$python" - "$tmp" "$dest" "$version" <<'PY'
import pathlib, shutil, sys, zipfile
wheels, dest, version = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
wanted = 0
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            base = name.rsplit("/", 1)[-1]
            ort = name.startswith("onnxruntime/capi/") and base.startswith(("libonnxruntime.so", "libonnxruntime_providers_"))
            cuda = name.startswith("nvidia/") and "/lib/" in name and ".so" in base
            if ort or cuda:
                with z.open(name) as src, open(dest / (base + ".tmp"), "wb") as out:
                    shutil.copyfileobj(src, out)
                (dest / (base + ".tmp")).rename(dest / base)
                wanted += 1
if not (dest / f"libonnxruntime.so.{version}").exists():
    sys.exit(f"libonnxruntime.so.{version} was not in the wheels")
print(f"{wanted} libraries in {dest}")
PY
