"""inbedder: instruction-following text embeddings, exported to ONNX and run on the device.

`from inbedder import Embedder` needs only onnxruntime, tokenizers and numpy; `inbedder.export`
(and the CLI's `export`) needs the `export` extra (torch, transformers, onnx).
"""

from importlib.metadata import PackageNotFoundError, version

from inbedder.runtime import BundleError, Embedder, Manifest, load_manifest

try:
    __version__ = version("inbedder")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = ["BundleError", "Embedder", "Manifest", "__version__", "load_manifest"]
