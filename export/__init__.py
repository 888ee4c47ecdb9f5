"""inbedder.export: Hugging Face checkpoint -> validated ONNX bundle. Needs `pip install inbedder[export]`."""

try:
    import torch  # noqa: F401 - fail early with the fix, not deep inside a trace
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"inbedder.export needs the export extra ({e.name} is missing): pip install 'inbedder[export]'"
    ) from e

from .core import EXPORTERS, detect_recipe, export_bundle
from .specs import KNOWN_MODELS, RECIPES, Recipe
from .validate import EMBEDDING_ATOL, ExportValidationError

__all__ = [
    "EMBEDDING_ATOL",
    "EXPORTERS",
    "KNOWN_MODELS",
    "RECIPES",
    "ExportValidationError",
    "Recipe",
    "detect_recipe",
    "export_bundle",
]
