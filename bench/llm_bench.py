"""Text generation: lmaas (the chat function in HTTP mode, SmolLM2 int4) against llama.cpp's
OpenAI-compatible server (llama-cpp-python) on the same GGUF's weights, both with the same threads.

Usage: llm_bench.py --out DIR   (run by `infra/local/bench.sh generate`, with the dev stack's env)

Both servers get the same streamed chat requests (greedy, max_tokens 64, prompts that ask for long
answers) from one client, at 1 and 4 concurrent streams. Per stream: time to first token (request
sent -> first content chunk) and decode speed ((tokens - 1) / (last chunk - first chunk)). Also the
aggregate tokens/s and each server's peak RSS (VmHWM). Writes DIR/generate.txt and DIR/generate.svg.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PROMPTS = [
    "Write a long story about a robot who learns to paint.",
    "Explain in detail how the water cycle works.",
    "Describe a day in the life of a medieval blacksmith.",
    "Write a long letter to a friend about your travels in Japan.",
]
MAX_TOKENS = 64
ROUNDS = 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, token, model, deadline=300):
    started = time.time()
    while time.time() - started < deadline:
        try:
            stream_chat(url, token, model, "Hi", 1)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} never answered")


def stream_chat(url, token, model, prompt, max_tokens):
    """One streamed chat: (ttft seconds, decode seconds after the first token, tokens)."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True}
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json", "authorization": f"Bearer {token}"})
    sent = time.perf_counter()
    first = last = None
    tokens = 0
    with urllib.request.urlopen(request, timeout=300) as response:
        for line in response:
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    tokens += 1  # both servers send one chunk per token
    if first is None:
        raise OSError("no content")
    return first - sent, last - first, tokens


def run(url, token, model, concurrency):
    results, errors = [], []

    def worker(i):
        try:
            for r in range(ROUNDS):
                results.append(stream_chat(url, token, model, PROMPTS[(i + r) % len(PROMPTS)], MAX_TOKENS))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{model} at {url}: {errors[0]!r}")
    ttft = statistics.median(r[0] for r in results) * 1e3
    decode = statistics.median((r[2] - 1) / r[1] for r in results if r[2] > 1 and r[1] > 0)
    total = sum(r[2] for r in results) / wall
    return {"ttft_ms": ttft, "decode_tps": decode, "aggregate_tps": total, "tokens": sum(r[2] for r in results)}


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def svg(rows, path):
    """Decode tokens/s per stream and aggregate, lmaas vs llama.cpp, as grouped bars."""
    groups = [(f"{c} stream{'s' if c > 1 else ''}: {what}", key, c) for c in (1, 4)
              for what, key in (("per stream", "decode_tps"), ("aggregate", "aggregate_tps"))]
    top = max(rows[(n, c)][k] for n in ("lmaas", "llama.cpp") for _, k, c in groups) * 1.15
    width, height, left, bar = 720, 320, 60, 50
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">SmolLM2-135M decode tokens/s (higher is better)</text>']
    for i, (label, key, c) in enumerate(groups):
        x0 = left + i * 160
        for j, (name, color) in enumerate((("lmaas", "#2b6cb0"), ("llama.cpp", "#dd6b20"))):
            value = rows[(name, c)][key]
            h = (height - 80) * value / top
            x = x0 + j * (bar + 6)
            parts.append(f'<rect x="{x}" y="{height - 50 - h:.1f}" width="{bar}" height="{h:.1f}" fill="{color}"/>')
            parts.append(f'<text x="{x + bar / 2}" y="{height - 55 - h:.1f}" text-anchor="middle">{value:.1f}</text>')
        parts.append(f'<text x="{x0 + bar + 3}" y="{height - 32}" text-anchor="middle">{label}</text>')
    parts.append(f'<rect x="{width - 170}" y="30" width="12" height="12" fill="#2b6cb0"/><text x="{width - 152}" y="41">lmaas (int4)</text>')
    parts.append(f'<rect x="{width - 170}" y="48" width="12" height="12" fill="#dd6b20"/><text x="{width - 152}" y="59">llama.cpp (Q4_1)</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--gguf", required=True)
    args = parser.parse_args()
    token = os.environ["LMAAS_TOKEN"]
    env = dict(os.environ, LMAAS_HTTP_ADDR=f"127.0.0.1:{free_port()}", LMAAS_METRICS_ADDR="", RUST_LOG="warn",
               LMAAS_PRELOAD="smollm2:int4")
    lmaas = subprocess.Popen([os.path.join(ROOT, "target/release/chat")], env=env, stdout=subprocess.DEVNULL)
    llama_port = free_port()
    llama = subprocess.Popen([os.path.join(ROOT, ".lmaas/llama-venv/bin/python"), os.path.join(ROOT, "bench/llama/server.py"),
                              "--model", args.gguf, "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
                              "--n_ctx", "2048", "--port", str(llama_port), "--host", "127.0.0.1",
                              # queue concurrent requests (its default cuts the running stream short)
                              "--interrupt_requests", "False"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers = {"lmaas": ("http://" + env["LMAAS_HTTP_ADDR"], token, "smollm2:int4", lmaas),
               "llama.cpp": (f"http://127.0.0.1:{llama_port}", "none", "smollm2", llama)}
    try:
        for url, tok, model, _ in servers.values():
            wait_ready(url, tok, model)
            stream_chat(url, tok, model, PROMPTS[0], MAX_TOKENS)  # warm
        rows = {}
        for concurrency in (1, 4):
            for name in ("lmaas", "llama.cpp"):  # side by side, in one run
                url, tok, model, _ = servers[name]
                rows[(name, concurrency)] = run(url, tok, model, concurrency)
        rss = {name: peak_rss_mb(proc.pid) for name, (_, _, _, proc) in servers.items()}
    finally:
        for _, _, _, proc in servers.values():
            proc.terminate()
    lines = [f"SmolLM2-135M-Instruct, {args.threads} threads, greedy, {MAX_TOKENS} new tokens, {ROUNDS} rounds per stream",
             "lmaas: the chat function in HTTP mode, smollm2:int4 (MatMulNBits, lmaas quantize)",
             "llama.cpp: llama-cpp-python's OpenAI server on the Q4_1 GGUF (AMX buffer type off: see bench/llama/amx.py)",
             "",
             "(llama.cpp's server answers one request at a time: its concurrent streams queue, which shows in TTFT;",
             " lmaas interleaves them step by step, which shows in per-stream speed. Compare aggregates at 4.)",
             "",
             "| streams | server | TTFT p50 ms | decode tok/s per stream | x llama.cpp | aggregate tok/s | x llama.cpp | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for concurrency in (1, 4):
        base = rows[("llama.cpp", concurrency)]
        for name in ("lmaas", "llama.cpp"):
            r = rows[(name, concurrency)]
            lines.append(f"| {concurrency} | {name} | {r['ttft_ms']:.1f} | {r['decode_tps']:.1f} | "
                         f"{r['decode_tps'] / base['decode_tps']:.2f} | {r['aggregate_tps']:.1f} | "
                         f"{r['aggregate_tps'] / base['aggregate_tps']:.2f} | {rss[name]:.0f} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "generate.txt"), "w") as f:
        f.write(table + "\n")
    svg(rows, os.path.join(args.out, "generate.svg"))


if __name__ == "__main__":
    sys.exit(main())
