"""ONNX Runtime's own int8 model for the quantize benchmark: what a user gets from
`onnxruntime.quantization.quantize_dynamic` with per-channel weights (its best setting for MiniLM).

Usage: ort_quantize.py IN.onnx OUT.onnx   (run by infra/local/bench.sh with .lmaas/venv)
"""
import sys

from onnxruntime.quantization import QuantType, quantize_dynamic

quantize_dynamic(sys.argv[1], sys.argv[2], per_channel=True, weight_type=QuantType.QInt8)
