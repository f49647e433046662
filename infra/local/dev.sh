#!/usr/bin/env bash
# The local lmaas stack (`make dev`): the S3+SQS emulator, the bucket and jobs queue, the sample
# models in S3, and every function under `cargo lambda watch` with the API's real paths.
# Stops everything it started on Ctrl-C / SIGTERM (or when --watch-parent PID exits).
#
# Batch uploads work end to end: the bucket notifies an ingest queue (S3 -> SQS), a local event
# source mapping invokes the ingest function with it, and one worker daemon runs the jobs.
#
# Settings (env): LMAAS_DEV_PORT (9000), LMAAS_EMULATOR_PORT (5000), LMAAS_METRICS_ADDR
#                 (127.0.0.1:9102, the daemon's /metrics), LMAAS_DEV_ENV_FILE (.lmaas/dev.env),
#                 LMAAS_STATE_DIR (.lmaas/dev)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
watch_parent=""   # --watch-parent PID: stop when that process exits (tests, benches)
while [ $# -gt 0 ]; do
  case "$1" in
    --watch-parent) watch_parent="$2"; shift 2 ;;
    *) echo "usage: dev.sh [--watch-parent PID]" >&2; exit 2 ;;
  esac
done

port="${LMAAS_DEV_PORT:-9000}"
emulator_port="${LMAAS_EMULATOR_PORT:-5000}"
env_file="${LMAAS_DEV_ENV_FILE:-$root/.lmaas/dev.env}"
state="${LMAAS_STATE_DIR:-$root/.lmaas/dev}"
venv="$root/.lmaas/venv"
bucket="lmaas-local"
log() { echo "[dev] $*" >&2; }

infra/local/setup.sh
infra/local/samples.sh
export PATH="$venv/bin:$PATH"

pids=() names=()   # what each started process is, for the watchdog below
cleanup() {
  trap - EXIT INT TERM
  log "stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for() { # url, seconds, what
  local deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    # --max-time: a server that accepts and never answers must not stall the start.
    curl -s -o /dev/null --max-time 2 "$1" && return 0
    sleep 0.1
  done
  log "$3 did not come up at $1"; return 1
}
port_busy() { (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for p in "$port" "$emulator_port"; do
  if port_busy "$p"; then log "port $p is in use (another make dev?); stop it or set LMAAS_DEV_PORT / LMAAS_EMULATOR_PORT"; exit 1; fi
done

mkdir -p "$state"
log "starting the S3+SQS emulator (moto) on 127.0.0.1:$emulator_port"
moto_server -H 127.0.0.1 -p "$emulator_port" > "$state/emulator.log" 2>&1 &
pids+=($!) names+=("the emulator (see $state/emulator.log)")
wait_for "http://127.0.0.1:$emulator_port/moto-api/" 30 "the emulator"

export AWS_ENDPOINT_URL="http://127.0.0.1:$emulator_port" AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=lmaas-local AWS_SECRET_ACCESS_KEY=lmaas-local
{ read -r queue_url; read -r ingest_queue_url; } < <("$venv/bin/python" infra/local/bootstrap.py \
  --bucket "$bucket" --queue lmaas-jobs --ingest-queue lmaas-ingest)

log "building the functions and the CLI"
cargo build --workspace --bins >&2
int4=".lmaas/samples/smollm2-int4"
if [ ! -f "$int4/model.onnx" ]; then
  log "quantizing smollm2 to int4 with lmaas quantize (once, about 2 minutes; kept in $int4)"
  rm -rf "$int4.tmp" && mkdir -p "$int4.tmp"
  cp .lmaas/samples/smollm2/tokenizer.json .lmaas/samples/smollm2/lmaas.json "$int4.tmp/"
  ORT_DYLIB_PATH="$root/.lmaas/ort/libonnxruntime.so.1.31.1" target/debug/lmaas quantize \
    .lmaas/samples/smollm2/model.onnx "$int4.tmp/model.onnx" --scheme int4 > "$state/smollm2-int4.report.json"
  rm -rf "$int4" && mv "$int4.tmp" "$int4"
fi
log "creating the dev admin API key and JWT signing keys"
token="$(target/debug/lmaas --bucket "$bucket" keys create --tenant dev --principal dev-admin --scopes admin)"
jwks="$("$venv/bin/python" infra/local/dev_keys.py "$state/jwt")"

# Plain KEY=value lines: both `source` and dotenv parsers read them (the JWKS is single-quoted).
mkdir -p "$(dirname "$env_file")"
cat > "$env_file.tmp" <<ENV
LMAAS_URL=http://127.0.0.1:$port
LMAAS_TOKEN=$token
AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL
AWS_REGION=$AWS_REGION
AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
LMAAS_BUCKET=$bucket
LMAAS_JOBS_QUEUE_URL=$queue_url
LMAAS_INGEST_QUEUE_URL=$ingest_queue_url
LMAAS_METRICS_ADDR=${LMAAS_METRICS_ADDR:-127.0.0.1:9102}
LMAAS_JOB_RETRY_BASE_SECONDS=2
LMAAS_JOB_RETRY_MAX_SECONDS=30
LMAAS_JWKS='$jwks'
LMAAS_JWT_ISSUER=lmaas-dev
LMAAS_JWT_AUDIENCE=lmaas
LMAAS_DEV_JWT_KEYS_DIR=$state/jwt
LMAAS_MODEL_CACHE_DIR=$state/model-cache
LMAAS_EXECUTION_PROVIDERS=${LMAAS_EXECUTION_PROVIDERS:-cpu}
LMAAS_PRELOAD=mlp,minilm,smollm2:int4
LMAAS_LOG_FORMAT=text
ORT_DYLIB_PATH=$root/.lmaas/ort/libonnxruntime.so.1.31.1
ENV
chmod 600 "$env_file.tmp"
mv "$env_file.tmp" "$env_file"

log "starting cargo lambda watch on 127.0.0.1:$port"
# No --timeout: cargo lambda applies it to every route, the functions' own long poll for their
# next invocation included, so an idle function gets a bare 408 after that long, lambda_runtime
# panics on the missing request id, and the function is gone until the stack restarts.
cargo lambda watch -A 127.0.0.1 -P "$port" --ignore-changes --env-file "$env_file" > "$state/watch.log" 2>&1 &
pids+=($!) names+=("cargo lambda watch (see $state/watch.log)")
wait_for "http://127.0.0.1:$port/v2/health/live" 300 "cargo lambda watch"
log "registering the sample models through the registry API (lmaas push)"
for sample in mlp:tensor dtypes:tensor minilm:embeddings; do
  LMAAS_URL="http://127.0.0.1:$port" LMAAS_TOKEN="$token" \
    target/debug/lmaas push ".lmaas/samples/${sample%%:*}" --model "${sample%%:*}" --version 1 --task "${sample##*:}" >&2
done
# SmolLM2: version 1 is the fp32 graph (the reference), version 2 the int4 one (what to serve).
LMAAS_URL="http://127.0.0.1:$port" LMAAS_TOKEN="$token" \
  target/debug/lmaas push .lmaas/samples/smollm2 --model smollm2 --version 1 --task generation --tag fp32 >&2
LMAAS_URL="http://127.0.0.1:$port" LMAAS_TOKEN="$token" \
  target/debug/lmaas push "$int4" --model smollm2 --version 2 --task generation --tag int4 >&2
log "starting the ingest event source and one worker daemon (metrics on ${LMAAS_METRICS_ADDR:-127.0.0.1:9102})"
"$venv/bin/python" infra/local/event_source.py --queue-url "$ingest_queue_url" --function ingest \
  --invoke-url "http://127.0.0.1:$port" > "$state/event-source.log" 2>&1 &
pids+=($!) names+=("the ingest event source (see $state/event-source.log)")
(set -a; . "$env_file"; set +a; exec target/debug/worker --daemon) > "$state/worker.log" 2>&1 &
pids+=($!) names+=("the worker daemon (see $state/worker.log)")
# Warm both functions so the first real request does not pay their start.
if ! curl -sf -o /dev/null --max-time 300 -X POST -H 'content-type: application/json' \
  -H "authorization: Bearer $token" -d @samples/requests/mlp.json "http://127.0.0.1:$port/v2/models/mlp/infer"; then
  log "warning: the warm-up request to the infer function failed; see $state/watch.log"
fi

cat <<MSG
lmaas dev stack ready on http://127.0.0.1:$port  (env: $env_file, logs: $state/*.log)
  # the dev admin API key is LMAAS_TOKEN in $env_file
  curl -s -X POST http://127.0.0.1:$port/v2/models/mlp/infer -H "authorization: Bearer $token" -H 'content-type: application/json' \\
    -d '{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'
  curl -s -X POST http://127.0.0.1:$port/v2/models/minilm/infer -H "authorization: Bearer $token" -H 'content-type: application/json' \\
    -d @samples/requests/minilm.json
  curl -s http://127.0.0.1:$port/v2/models/minilm -H "authorization: Bearer $token"
  # chat with SmolLM2 (int4), streamed
  curl -sN http://127.0.0.1:$port/v1/chat/completions -H "authorization: Bearer $token" -H 'content-type: application/json' \
    -d '{"model":"smollm2:int4","messages":[{"role":"user","content":"Write a haiku about the sea."}],"stream":true}'
  # batch embeddings from an upload (S3 -> ingest -> worker); results land under results/{job_id}/
  set -a; . $env_file; set +a; target/debug/lmaas jobs upload minilm samples/batch/sentences.jsonl --wait
MSG
# Watchdog: with one part gone, the stack would answer some routes and time out on others (a
# dead worker leaves jobs queued forever); stop all of it, saying which part died and where its
# log is. Until then, run until Ctrl-C or, with --watch-parent, until that process exits.
while [ -z "$watch_parent" ] || kill -0 "$watch_parent" 2>/dev/null; do
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      log "${names[$i]} exited; stopping the stack"
      exit 1
    fi
  done
  sleep 1
done
