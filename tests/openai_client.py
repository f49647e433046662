"""The official `openai` Python client against lmaas's OpenAI-compatible routes.

Run by the Rust integration tests (tests/registry.rs) with LMAAS_URL, LMAAS_TOKEN and
LMAAS_SAMPLES set. Embeddings must equal a reference computed here, independently, with Python
ONNX Runtime and `tokenizers` on the same model files (sentence-transformers' recipe: pad to the
longest input, truncate at 256, mean pooling with the attention mask, L2 normalization).
Exits non-zero with a message on the first mismatch.
"""
import os
import sys

import numpy as np
import onnxruntime as ort
import openai
from tokenizers import Tokenizer

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse.",
             "The new movie is awesome.", "lmaas " * 400]


def reference(model_dir: str, texts: list) -> np.ndarray:
    tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=256)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest of the batch
    encodings = tokenizer.encode_batch(texts)
    feeds = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
             "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
             "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}
    session = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), providers=["CPUExecutionProvider"])
    states = session.run(["last_hidden_state"], feeds)[0]
    mask = feeds["attention_mask"][..., None].astype(np.float32)
    pooled = (states * mask).sum(axis=1) / mask.sum(axis=1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def check(condition: bool, message: str) -> None:
    if not condition:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    # A timeout and the client's own retries, as a user runs it: cargo lambda's emulator now and
    # then loses an invocation (the function never sees it), which would otherwise hang 10 minutes.
    client = openai.OpenAI(base_url=os.environ["LMAAS_URL"] + "/v1", api_key=os.environ["LMAAS_TOKEN"], max_retries=2,
                           timeout=60)
    expected = reference(os.path.join(os.environ["LMAAS_SAMPLES"], "minilm"), SENTENCES)

    # The client asks for base64 by default and decodes it; also ask for floats explicitly.
    for encoding in [openai.NOT_GIVEN, "float"]:
        response = client.embeddings.create(model="minilm", input=SENTENCES, encoding_format=encoding)
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        diff = float(np.abs(got - expected).max())
        check(got.shape == expected.shape, f"shape {got.shape} vs {expected.shape}")
        check(diff <= 1e-5, f"max abs diff {diff} ({encoding})")
        check([d.index for d in response.data] == list(range(len(SENTENCES))), "indexes")
        check(response.usage.prompt_tokens > 256 and response.usage.total_tokens == response.usage.prompt_tokens, f"usage {response.usage}")

    def cos(a, b):
        return float(np.dot(a, b))
    food, bread, horse = got[0], got[1], got[2]
    check(abs(cos(food, bread) - 0.755) < 0.01, f"cos(food, bread) = {cos(food, bread)}")
    check(abs(cos(food, horse) - 0.247) < 0.01, f"cos(food, horse) = {cos(food, horse)}")

    single = client.embeddings.create(model="minilm:1", input="A man is eating food.")
    check(abs(float(np.dot(single.data[0].embedding, expected[0])) - 1) < 1e-5, "a single string input, by version tag")

    tokens = client.embeddings.create(model="minilm", input=[[101, 1037, 2158, 102]])
    check(len(tokens.data[0].embedding) == 384 and tokens.usage.prompt_tokens == 4, "token-id input")

    ids = [m.id for m in client.models.list()]
    check("minilm" in ids and "mlp" in ids, f"models.list() = {ids}")

    for call, status in [(lambda: client.embeddings.create(model="no-such-model", input="x"), 404),
                         (lambda: client.embeddings.create(model="mlp", input="x"), 400),
                         (lambda: client.embeddings.create(model="minilm", input="x", dimensions=128), 400),
                         (lambda: client.embeddings.create(model="minilm", input=[[999999]]), 400)]:
        try:
            call()
            check(False, f"expected HTTP {status}")
        except openai.APIStatusError as e:
            check(e.status_code == status, f"status {e.status_code}, expected {status}: {e}")
            check(isinstance(e.body, dict) and e.body.get("message"), f"OpenAI error body: {e.body}")
    print("openai client: all checks passed")


if __name__ == "__main__":
    main()
