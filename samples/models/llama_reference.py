"""Greedy reference answers for the smollm2 sample from llama.cpp (llama-cpp-python) on the same GGUF.

Usage: llama_reference.py SMOLLM2_DIR OUT.json --gguf PATH
  SMOLLM2_DIR is the output of make_smollm2.py (its lmaas.json supplies the chat template).

Two references: `f32`, llama.cpp on the GGUF's tensors dequantized to F32 (what make_smollm2.py
puts in the fp32 ONNX graph, so the two must agree token for token), and `q4_1`, llama.cpp on the
GGUF as shipped (it also quantizes activations to 8 bits inside its Q4_1 matmuls, so near-ties can
go the other way). For each fixed conversation: the prompt rendered with the chat template,
llama.cpp's token ids for it (the check of our tokenizer.json) and its first 32 greedy tokens (fewer
if it ends the answer). Also llama.cpp's perplexity on a fixed text. The result is committed as
samples/fixtures/smollm2_reference.json; the tests compare lmaas against it, so CI need not build
llama.cpp (a 10-minute compile on two cores). Re-run it after changing the converter's inputs.
"""
import argparse
import json
import math
import os
import sys

import jinja2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../bench/llama"))
import amx  # noqa: E402,F401  (llama.cpp without AMX tiles: see bench/llama/amx.py)
from llama_cpp import Llama  # noqa: E402

NEW_TOKENS = 32
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "List three primary colors."}],
    [{"role": "user", "content": "Explain what a neural network is in one sentence."}],
    [{"role": "user", "content": "What is 12 plus 30?"}],
    [{"role": "user", "content": "Translate 'good morning' into Spanish."}],
    [{"role": "user", "content": "Tell me a short story about a robot."}],
    [{"role": "user", "content": "Describe how to make a cup of tea."}],
    [{"role": "user", "content": "What are the benefits of regular exercise?"}],
]
PERPLEXITY_TEXT = (
    "The quick brown fox jumps over the lazy dog. Scientists have long studied how animals communicate, "
    "from the songs of whales to the dances of bees. Language, however, remains a uniquely human trait, "
    "allowing us to share ideas across generations and build on the knowledge of those who came before us."
)


def dequantized_copy(path, out):
    """The GGUF with every tensor dequantized to F32 (metadata unchanged but the file type)."""
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(path)
    writer = gguf.GGUFWriter(out, arch=reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = 0 if key == "general.file_type" else field.contents()  # 0 = ALL_F32
        kind = field.types[0]
        writer.add_key_value(key, value, kind, sub_type=field.types[1] if kind == gguf.GGUFValueType.ARRAY else None)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("out")
    parser.add_argument("--gguf", required=True, help="the GGUF make_smollm2.py converted")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    config = json.load(open(os.path.join(args.model_dir, "lmaas.json")))["generation"]
    f32 = args.out + ".f32.gguf"
    dequantized_copy(args.gguf, f32)
    try:
        references = {"f32": reference(f32, config, args.threads), "q4_1": reference(args.gguf, config, args.threads)}
    finally:
        os.remove(f32)
    result = {
        "reference": f"llama.cpp via llama-cpp-python {__import__('llama_cpp').__version__}, greedy, {args.threads} threads",
        "gguf": os.path.basename(args.gguf),
        "new_tokens": NEW_TOKENS,
        "perplexity_text": PERPLEXITY_TEXT,
        **references,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


def reference(gguf_path, config, threads):
    template = jinja2.Environment().from_string(config["chat_template"])
    eos = set(config["eos_token_ids"])
    llm = Llama(model_path=gguf_path, n_ctx=2048, n_threads=threads, logits_all=True, verbose=False, seed=0)
    cases = []
    for messages in CONVERSATIONS:
        prompt = template.render(messages=messages, add_generation_prompt=True, bos_token="")
        tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(tokens)
        generated = []
        for _ in range(NEW_TOKENS):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if token in eos:
                break
            generated.append(token)
            llm.eval([token])
        text = llm.detokenize(generated).decode("utf-8", errors="replace")
        print(f"{messages[-1]['content']!r} -> {text!r}", file=sys.stderr)
        cases.append({"messages": messages, "prompt": prompt, "prompt_tokens": tokens, "tokens": generated, "text": text})
    tokens = llm.tokenize(PERPLEXITY_TEXT.encode(), add_bos=False, special=False)
    llm.reset()
    llm.eval(tokens)
    nll = 0.0
    for i in range(1, len(tokens)):
        row = llm.scores[i - 1].astype(np.float64)
        nll -= row[tokens[i]] - (row.max() + math.log(np.exp(row - row.max()).sum()))
    perplexity = math.exp(nll / (len(tokens) - 1))
    print(f"perplexity {perplexity:.3f} over {len(tokens)} tokens", file=sys.stderr)
    return {"cases": cases, "perplexity": {"tokens": tokens, "value": perplexity}}


if __name__ == "__main__":
    main()
