"""Build the `dtypes` sample model: one trivial op per tensor datatype, for V2 codec tests.

Usage: make_dtypes.py OUT_DIR   -> writes OUT_DIR/model.onnx (and checks onnxruntime runs it)

Every input/output is 1-D with the shared dynamic dim "n":
  x_fp16 -> y_fp16 = x * 2      x_fp64 -> y_fp64 = -x      x_int32 -> y_int32 = x + 1
  x_int64 -> y_int64 = x * 3    x_int8 -> y_int8 = -x      x_uint8 -> y_uint8 = x
  x_bool -> y_bool = not x      x_string -> y_string = x
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto as T, helper, numpy_helper

# (suffix, ONNX type, op, constant operand or None, numpy dtype for the self-check)
SPECS = [
    ("fp16", T.FLOAT16, "Mul", np.array(2.0, np.float16), np.float16),
    ("fp64", T.DOUBLE, "Neg", None, np.float64),
    ("int32", T.INT32, "Add", np.array(1, np.int32), np.int32),
    ("int64", T.INT64, "Mul", np.array(3, np.int64), np.int64),
    ("int8", T.INT8, "Neg", None, np.int8),
    ("uint8", T.UINT8, "Identity", None, np.uint8),
    ("bool", T.BOOL, "Not", None, np.bool_),
    ("string", T.STRING, "Identity", None, object),
]


def build() -> onnx.ModelProto:
    nodes, inputs, outputs, inits = [], [], [], []
    for sfx, ty, op, const, _ in SPECS:
        x, y = f"x_{sfx}", f"y_{sfx}"
        args = [x]
        if const is not None:
            inits.append(numpy_helper.from_array(const, f"c_{sfx}"))
            args.append(f"c_{sfx}")
        nodes.append(helper.make_node(op, args, [y], name=f"{op.lower()}_{sfx}"))
        inputs.append(helper.make_tensor_value_info(x, ty, ["n"]))
        outputs.append(helper.make_tensor_value_info(y, ty, ["n"]))
    graph = helper.make_graph(nodes, "dtypes", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="lmaas-samples", ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def check(path: str) -> None:
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {f"x_{s}": np.array(["a", "b"] if dt is object else [1, 0], dtype=dt) for s, _, _, _, dt in SPECS}
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    assert outs["y_fp16"].tolist() == [2.0, 0.0] and outs["y_int64"].tolist() == [3, 0]
    assert outs["y_bool"].tolist() == [False, True] and outs["y_string"].tolist() == ["a", "b"]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    os.makedirs(sys.argv[1], exist_ok=True)
    out = os.path.join(sys.argv[1], "model.onnx")
    onnx.save(build(), out)
    check(out)
