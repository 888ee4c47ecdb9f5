"""inbedder.quantize: int8 (CPU) and fp16 (CUDA) bundles that must pass a fidelity gate.

Needs `onnx` (the `quantize` or `export` extra) besides the runtime.
"""

from inbedder.errors import QuantizationRefused

from .core import PRECISIONS, quantize_bundle
from .gate import DEFAULT_MIN_COSINE, GateFigures
from .isa import cpu_features

__all__ = [
    "DEFAULT_MIN_COSINE",
    "PRECISIONS",
    "GateFigures",
    "QuantizationRefused",
    "cpu_features",
    "quantize_bundle",
]
