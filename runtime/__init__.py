"""The inbedder runtime: load a bundle and embed texts with onnxruntime, tokenizers and numpy only."""

from inbedder.errors import BundleError

from .bundle import Manifest, load_manifest
from .embedder import Embedder
from .session import cuda_available

__all__ = ["BundleError", "Embedder", "Manifest", "cuda_available", "load_manifest"]
