#!/usr/bin/env bash
# Builds the sample models into .lmaas/samples/{mlp,dtypes,minilm,smollm2} with the committed
# scripts (deterministic, so the committed fixtures stay valid). Skips models that are already built.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
python="$root/.lmaas/venv/bin/python"
out="$root/.lmaas/samples"
for model in mlp dtypes minilm smollm2; do
  if [ ! -f "$out/$model/model.onnx" ]; then
    echo "[samples] building $model" >&2
    mkdir -p "$out/$model"
    "$python" "$root/samples/models/make_$model.py" "$out/$model.tmp" >&2
    rm -rf "$out/$model" && mv "$out/$model.tmp" "$out/$model"
  fi
done
# The embeddings task config (lmaas.json) that sentence-transformers uses for MiniLM: mean pooling,
# normalized, 256 tokens.
cp "$root/samples/models/minilm.lmaas.json" "$out/minilm/lmaas.json"
