"""inbedder: instruction-following text embeddings, exported to ONNX and run on the device.

`from inbedder import Embedder` needs only onnxruntime, tokenizers and numpy; `inbedder.export`
(and the CLI's `export`) needs the `export` extra (torch, transformers, onnx), `inbedder.quantize`
the `quantize` extra (onnx).
"""

from inbedder.catalog import list_models
from inbedder.errors import (
    BundleError,
    DeviceError,
    ExportValidationError,
    InbedderError,
    InputError,
    InputTypeError,
    QuantizationRefused,
)
from inbedder.runtime import Embedder, Manifest, load_manifest


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("inbedder")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0.0.0"


__version__ = _version()

__all__ = [
    "BundleError",
    "DeviceError",
    "Embedder",
    "ExportValidationError",
    "InbedderError",
    "InputError",
    "InputTypeError",
    "Manifest",
    "QuantizationRefused",
    "__version__",
    "list_models",
    "load_manifest",
]
