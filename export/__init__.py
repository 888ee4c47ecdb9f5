"""inbedder.export: Hugging Face checkpoint -> validated ONNX bundle. Needs `pip install inbedder[export]`."""

try:
    import torch  # noqa: F401 - fail early with the fix, not deep inside a trace
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"inbedder.export needs the export extra ({e.name} is missing): pip install 'inbedder[export]'"
    ) from e

from inbedder.errors import ExportValidationError

from .core import detect_recipe, export_bundle
from .family import ExportFamily, families, known_models, recipes, register
from .specs import Recipe
from .validate import EMBEDDING_ATOL

__all__ = [
    "EMBEDDING_ATOL",
    "ExportFamily",
    "ExportValidationError",
    "Recipe",
    "detect_recipe",
    "export_bundle",
    "families",
    "known_models",
    "recipes",
    "register",
]
