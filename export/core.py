"""`export_bundle`: a Hugging Face checkpoint (hub id or local directory) -> a validated bundle.

Scope: the one build every family goes through (the family's load, its graphs traced, the
tokenizer saved, its manifest), validation against the family's PyTorch reference through the
runtime, and writing the bundle atomically with checksums and figures. Families plug in by
declaring an `ExportFamily` (family.py); nothing here names one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from inbedder.errors import InputError
from inbedder.onnxfile import CPU_SLOW_FUSIONS
from inbedder.runtime import Embedder
from inbedder.runtime.bundle import PRECISIONS, Manifest, Precision, move_files, staging, write_bundle
from inbedder.runtime.pipeline import pipeline_class

from .family import ExportFamily, resolve
from .specs import Recipe
from .trace import trace_to_onnx, versions
from .validate import EMBEDDING_ATOL, validate

DEFAULT_OPSET = 17


def detect_recipe(source: str, revision: str | None = None) -> Recipe:
    """The recipe for a checkpoint: a known hub id's, else the default of the family it fits."""
    return resolve(source, None, revision)[0]


def build(family: ExportFamily, work: Path, *, max_length: int | None, opset: int) -> tuple[Manifest, int]:
    """Load, trace every graph and save the tokenizer into `work`; the manifest (no checksums
    yet) and the token limit."""
    family.load()
    limit = family.max_length(max_length)
    specs = {}
    for g in family.graphs(limit):
        spec = trace_to_onnx(g.module, g.args, work / g.file, g.inputs, g.outputs, g.axes, opset)
        specs[g.role] = dataclasses.replace(
            spec, fusion=g.fusion, cpu_disabled_optimizers=tuple(CPU_SLOW_FUSIONS)
        )
    family.tokenizer.backend_tokenizer.save(str(work / "tokenizer.json"))
    manifest = family.manifest(specs, limit)
    return dataclasses.replace(manifest, exporter=versions(opset)), limit


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
    precision: Precision = "fp32",
    decode_steps: int | None = None,
) -> Manifest:
    """Export `model` to a bundle at `out_dir` and return its manifest.

    Raises `ExportValidationError` (nothing written) when the exported bundle disagrees with the
    PyTorch reference beyond `atol`. `precision` other than fp32 quantizes the validated fp32
    export through the quantize stage. `decode_steps` (masked LMs) is stored as the bundle's
    default number of unmasking passes.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    spec, family_cls = resolve(model, recipe, revision)
    family = family_cls(model, spec, revision)
    # Per-bundle defaults of the runtime's per-call options (names checked now, values on the
    # staged bundle).
    defaults = {"decode_steps": decode_steps} if decode_steps is not None else {}
    accepted = pipeline_class(family.name).options
    for name in set(defaults) - set(accepted):
        raise InputError(f"{name} does not apply to {family.name!r} bundles (accepted: {sorted(accepted)})")
    # Everything is built beside the target (fp32, then the quantized bundle from it) and the
    # final bundle replaces the target in one step: an interrupted or failed run leaves the
    # previous bundle as it was, and nothing new that loads.
    with staging(out, "export") as work:
        manifest, limit = build(family, work, max_length=max_length, opset=opset)
        # A scratch manifest lets the runtime run the scratch directory for validation (with the
        # reference's own defaults: the per-bundle defaults are stored after).
        staged = write_bundle(work / "staged", manifest, lambda d: move_files(work, d))
        figures = validate(work / "staged", lambda t, i: family.reference(t, i, limit), atol=atol)
        if defaults:
            Embedder(work / "staged", verify=False).pipeline.resolve_options(defaults)
        options = {**staged.options, **defaults}
        final = dataclasses.replace(staged, validation=figures.as_json(), options=options, files={})
        if precision == "fp32":
            return write_bundle(out, final, lambda d: move_files(work / "staged", d), overwrite=overwrite)
        from inbedder.quantize import quantize_bundle

        fp32 = work / "fp32"
        write_bundle(fp32, final, lambda d: move_files(work / "staged", d))
        return quantize_bundle(fp32, out, precision=precision, overwrite=overwrite)
