"""`export_bundle`: a Hugging Face checkpoint (hub id or local directory) -> a validated bundle.

Scope: choosing the recipe (explicit, known hub id, or detected from the checkpoint), handing the
family's exporter a scratch directory, validating the result against PyTorch, and writing the
bundle atomically with checksums and figures. Families plug in through `EXPORTERS`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from inbedder.runtime.bundle import Manifest, move_files, write_bundle

from .specs import DEFAULT_RECIPE, KNOWN_MODELS, MASKED_LM_ARCHS, RECIPES, Recipe
from .validate import EMBEDDING_ATOL, validate

DEFAULT_OPSET = 17
# family -> module with `build(source, recipe, work, *, max_length, opset, revision)`
EXPORTERS: dict[str, str] = {
    "masked-lm": "inbedder.export.masked",
    "encoder": "inbedder.export.instructor",
    "causal-lm": "inbedder.export.causal",
}


def _read_config(source: str, revision: str | None) -> dict[str, Any]:
    local = Path(source)
    if local.is_dir():
        cfg = local / "config.json"
        return json.loads(cfg.read_text()) if cfg.is_file() else {}
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source, revision=revision).to_dict()


def _has_st_modules(source: str, revision: str | None) -> bool:
    """A sentence-transformers layout (modules.json), as INSTRUCTOR checkpoints have."""
    local = Path(source)
    if local.is_dir():
        return (local / "modules.json").is_file()
    from huggingface_hub import file_exists

    return bool(file_exists(source, "modules.json", revision=revision))


def detect_recipe(source: str, revision: str | None = None) -> Recipe:
    """The recipe for a checkpoint: a known hub id's, else its family's default."""
    if source in KNOWN_MODELS:
        return RECIPES[KNOWN_MODELS[source]]
    cfg = _read_config(source, revision)
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") == "t5" and _has_st_modules(source, revision):
        return RECIPES[DEFAULT_RECIPE["encoder"]]
    if cfg.get("model_type") in MASKED_LM_ARCHS or any(a.endswith("ForMaskedLM") for a in archs):
        return RECIPES[DEFAULT_RECIPE["masked-lm"]]
    if any(a.endswith("ForCausalLM") for a in archs):
        return RECIPES[DEFAULT_RECIPE["causal-lm"]]
    raise ValueError(
        f"cannot tell which recipe fits {source} (model_type={cfg.get('model_type')!r}, "
        f"architectures={archs}); pass recipe= (CLI: --recipe) one of {sorted(RECIPES)}"
    )


def _versions(opset: int) -> dict[str, Any]:
    from importlib.metadata import version

    out: dict[str, Any] = {"opset": opset}
    for pkg in ("inbedder", "torch", "transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = None
    return out


def export_bundle(
    model: str,
    out_dir: str | Path,
    *,
    recipe: str | None = None,
    max_length: int | None = None,
    revision: str | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    atol: float = EMBEDDING_ATOL,
    precision: str = "fp32",
    decode_steps: int | None = None,
) -> Manifest:
    """Export `model` to a bundle at `out_dir` and return its manifest.

    Raises `ExportValidationError` (nothing written) when the exported bundle disagrees with the
    PyTorch reference beyond `atol`. `precision` other than fp32 quantizes the validated fp32
    export through the quantize stage.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {sorted(RECIPES)}")
    spec = RECIPES[recipe] if recipe else detect_recipe(model, revision)
    builder = importlib.import_module(EXPORTERS[spec.family])
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        manifest, reference = builder.build(
            model, spec, work, max_length=max_length, opset=opset, revision=revision
        )
        manifest = dataclasses.replace(manifest, exporter=_versions(opset))
        if decode_steps is not None:
            # Validation runs the reference's single pass; the default for users is stored after.
            if not isinstance(decode_steps, int) or decode_steps < 1:
                raise ValueError(f"decode_steps must be a positive int, got {decode_steps!r}")
            if manifest.family != "masked-lm":
                raise ValueError(f"decode_steps applies to masked-LM bundles, not {manifest.family!r}")
        # A scratch manifest lets the runtime run the scratch directory for validation.
        staged = write_bundle(work / "staged", manifest, lambda d: move_files(work, d))
        figures = validate(work / "staged", reference, atol=atol)
        options = {**staged.options, **({"decode_steps": decode_steps} if decode_steps else {})}
        final = dataclasses.replace(staged, validation=figures.as_json(), options=options, files={})
        written = write_bundle(out, final, lambda d: move_files(work / "staged", d), overwrite=overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if precision != "fp32":
        from inbedder.quantize import quantize_bundle

        written = quantize_bundle(out, out, precision=precision, overwrite=True)
    return written
