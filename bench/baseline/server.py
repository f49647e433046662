"""BASELINE - not lmaas. The embeddings service a user would otherwise write: Python ONNX Runtime
behind FastAPI/uvicorn, serving OpenAI's POST /v1/embeddings for the same MiniLM model file.

It exists only so `make bench` can compare lmaas's long-running HTTP mode with it side by side.
It is written to be fair, not slow: one session created at start with lmaas's session options
(intra-op threads = the machine's cores, idle threads spinning 100 us before they sleep), the
Rust `tokenizers` tokenizer, numpy pooling, padding to the longest input, a sync endpoint
(FastAPI runs it on its thread pool).

Run: BASELINE_MODEL_DIR=.lmaas/samples/minilm uvicorn server:app --app-dir bench/baseline
"""
import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel
from tokenizers import Tokenizer

MODEL_DIR = os.environ["BASELINE_MODEL_DIR"]

options = ort.SessionOptions()
options.intra_op_num_threads = os.cpu_count() or 1
options.inter_op_num_threads = 1
options.add_session_config_entry("session.intra_op.allow_spinning", "1")
options.add_session_config_entry("session.intra_op.spin_duration_us", "100")
session = ort.InferenceSession(os.path.join(MODEL_DIR, "model.onnx"), options, providers=["CPUExecutionProvider"])
tokenizer = Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))
tokenizer.enable_truncation(128)
tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

app = FastAPI()


class EmbeddingsRequest(BaseModel):
    model: str
    input: str | list[str]


@app.get("/health")
def health() -> dict:
    return {"ready": True}


@app.post("/v1/embeddings")
def embeddings(request: EmbeddingsRequest) -> dict:
    texts = [request.input] if isinstance(request.input, str) else request.input
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    states = session.run(["last_hidden_state"], {
        "input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    weights = mask[..., None].astype(np.float32)
    pooled = (states * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    tokens = int(mask.sum())
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(pooled)],
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
