"""inbedder.quantize: int8 and int4 (CPU) and fp16 (CUDA) bundles that must pass a fidelity gate.

Needs the `quantize` extra (`onnx`, `sympy`, `onnx-ir`) besides the runtime.
"""

from inbedder.errors import QuantizationRefused

from .core import PRECISIONS, quantize_bundle
from .gate import DEFAULT_MIN_COSINE, DEFAULT_MIN_COSINES, GateFigures
from .isa import cpu_features

__all__ = [
    "DEFAULT_MIN_COSINE",
    "DEFAULT_MIN_COSINES",
    "PRECISIONS",
    "GateFigures",
    "QuantizationRefused",
    "cpu_features",
    "quantize_bundle",
]
