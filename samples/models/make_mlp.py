"""Build the `mlp` sample model: a tiny deterministic FP32 MLP for lmaas tests.

Usage: make_mlp.py OUT_DIR   -> writes OUT_DIR/model.onnx

Graph: input FLOAT [batch, 4] -> Gemm(4->8) -> Relu -> Gemm(8->3) -> output FLOAT [batch, 3].
Weights come from numpy default_rng(seed=7), so the file is byte-for-byte reproducible.
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(seed=7)
    w1 = rng.standard_normal((8, 4)).astype(np.float32)  # [out, in], used with transB=1
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((3, 8)).astype(np.float32)
    b2 = rng.standard_normal(3).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["h_relu"]),
        helper.make_node("Gemm", ["h_relu", "w2", "b2"], ["output"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="lmaas-samples", ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    os.makedirs(sys.argv[1], exist_ok=True)
    onnx.save(build(), os.path.join(sys.argv[1], "model.onnx"))
