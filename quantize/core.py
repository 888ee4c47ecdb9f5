"""`quantize_bundle`: an fp32 bundle -> an int8 (CPU) or fp16 (CUDA) bundle, behind a fidelity gate.

Scope: converting every graph of the bundle (`convert.py`), staging the new bundle, running the
gate against the source (`gate.py`) and writing the result atomically, or refusing with the
figures. Nothing here depends on the model family beyond what the manifest says: which fusions
fit each graph, and what the graphs are fed (the runtime pipeline's own `graph_feeds`).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from inbedder.errors import InputError
from inbedder.onnxfile import data_name
from inbedder.runtime import Embedder, cuda_available
from inbedder.runtime.bundle import Manifest, bundle_root, load_manifest, move_files, staging, write_bundle
from inbedder.runtime.samples import calibration_pairs
from inbedder.runtime.session import Device

from .convert import FP16_FP32_OPS, INT8_OP_TYPES, convert_fp16, fuse, overflowing_nodes, quantize_int8
from .gate import DEFAULT_MIN_COSINE, GateFigures, QuantizationRefused, compare
from .isa import cpu_features
from .pertoken import quantize_int8_invariant
from .sensitivity import rank_end_to_end, rank_matmuls

PRECISIONS: tuple[Literal["int8", "fp16"], ...] = ("int8", "fp16")
# int8 methods (switch point): "per-token" (`pertoken.py`: per-token activation scales, per-channel
# weights; results independent of the batch) or "dynamic" (onnxruntime's `quantize_dynamic`: one
# activation scale per batch, so a vector depends on its neighbours).
INT8_METHODS = ("per-token", "dynamic")
DEFAULT_INT8_METHOD = "per-token"
MAX_FP32_FRACTION = 1 / 3  # int8 fallback keeps at most this share of weight MatMuls in fp32
RANKING_TEXTS = 12  # calibration texts used to rank MatMuls by int8 error
RANKING_CANDIDATES = 16  # MatMuls (largest local error) whose end-to-end effect is measured
# onnxruntime's quantizer and fusions hold and serialize the whole graph as one protobuf.
MAX_QUANTIZE_BYTES = (1 << 31) - (1 << 24)


def quantize_bundle(
    src: str | Path,
    out: str | Path,
    *,
    precision: Literal["int8", "fp16"] = "int8",
    calibration: Sequence[tuple[str, str]] | None = None,
    min_cosine: float = DEFAULT_MIN_COSINE,
    reduce_range: bool | None = None,
    per_channel: bool = False,
    fallback: bool = True,
    overwrite: bool = False,
    int8_method: str = DEFAULT_INT8_METHOD,
) -> Manifest:
    """Write a `precision` copy of the fp32 bundle `src` to `out` (which may be `src` itself with
    `overwrite=True`) if its embeddings stay within `min_cosine` of the source's on the
    calibration (text, instruction) pairs; otherwise raise `QuantizationRefused`.

    `reduce_range=None` chooses by CPU: 7-bit weights on x86 without VNNI, where u8 x s8
    multiply-adds can saturate; full range elsewhere. The choice is recorded in the manifest.
    With `fallback` (int8), settings that fail the gate give way to more faithful ones (see
    `_int8_with_fallback`); every attempt's figure is recorded.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if int8_method not in INT8_METHODS:
        raise InputError(f"int8_method must be one of {INT8_METHODS}, got {int8_method!r}")
    if not 0.0 < min_cosine <= 1.0:
        raise InputError(f"min_cosine must be in (0, 1], got {min_cosine}")
    manifest = load_manifest(src)
    root: Path = bundle_root(src)  # the current version's files
    out = Path(out)
    if manifest.precision != "fp32":
        raise InputError(f"{src}: quantize from an fp32 bundle (this one is {manifest.precision})")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    for g in manifest.graphs.values():
        size = sum(int(manifest.files[f]["bytes"]) for f in g.files)
        if size > MAX_QUANTIZE_BYTES:
            raise InputError(
                f"{src}: graph {g.file} holds {size / 2**30:.1f} GiB; graphs past 2 GiB (protobuf's "
                "limit) cannot be quantized by this version yet"
            )
    pairs = list(calibration) if calibration is not None else calibration_pairs()
    label = "built-in" if calibration is None else "user"
    reference = Embedder(src)  # loaded now: `out` may replace `src`

    device: Device = "cuda" if precision == "fp16" and cuda_available() else "cpu"

    def stage_and_gate(record: dict[str, Any], graphs_dir: Path) -> tuple[Manifest, GateFigures]:
        """Stage a bundle from the converted graphs and measure it against the source."""
        record["source_validation"] = dict(manifest.validation)
        graphs = {
            role: dataclasses.replace(g, data=_data_file(graphs_dir, g.file))
            for role, g in manifest.graphs.items()
        }
        staged_manifest = dataclasses.replace(
            manifest,
            graphs=graphs,
            precision=precision,
            options={**manifest.options, "quantization": record},
            validation={},
            files={},
        )
        stage = work / "staged"
        shutil.rmtree(stage, ignore_errors=True)  # an earlier attempt's
        staged = write_bundle(
            stage, staged_manifest, lambda d: _copy_graphs(graphs_dir, d, root, manifest, staged_manifest)
        )
        candidate = Embedder(stage, device=device, verify=False)
        return staged, compare(reference, candidate, pairs, bound=min_cosine, calibration=label)

    with staging(out, "quantize") as work:
        if precision == "int8":
            staged, figures = _int8_with_fallback(
                root,
                manifest,
                work,
                reference,
                pairs,
                reduce_range,
                per_channel,
                fallback,
                stage_and_gate,
                int8_method,
            )
        else:
            staged, figures = stage_and_gate(_to_fp16(root, manifest, work, reference, pairs), work)
        if not figures.passed:
            attempts = staged.options["quantization"].get("attempts")
            raise QuantizationRefused(
                f"{precision} bundle refused: {figures.summary()}; worst text {figures.worst_text!r}"
                + (f"; earlier attempts: {attempts}" if attempts else "")
            )
        final = dataclasses.replace(staged, validation=figures.as_json(), files={})
        return write_bundle(out, final, lambda d: move_files(work / "staged", d), overwrite=overwrite)


def _count(path: Path, op_type: str) -> int:
    import onnx

    return sum(n.op_type == op_type for n in onnx.load(path, load_external_data=False).graph.node)


def _int8_with_fallback(
    src: Path,
    manifest: Manifest,
    work: Path,
    reference: Embedder,
    pairs: Sequence[tuple[str, str]],
    reduce_range: bool | None,
    per_channel: bool,
    fallback: bool,
    stage_and_gate: Any,
    method: str = DEFAULT_INT8_METHOD,
) -> tuple[Manifest, GateFigures]:
    """Try int8 settings from fastest to most faithful until the gate passes: per-tensor weights,
    per-channel weights, then per-channel with the MatMuls that lose most to int8 (measured by
    `sensitivity.rank_matmuls`) kept in fp32, up to `MAX_FP32_FRACTION` of them."""
    isa = cpu_features()
    chosen = isa.default_reduce_range() if reduce_range is None else bool(reduce_range)
    fused_dir = work / "fused"
    fused_dir.mkdir()
    fusion: dict[str, Any] = {}
    for role, graph in manifest.graphs.items():
        fused, stats = fuse(src / graph.file, fused_dir / graph.file, graph, manifest.source)
        fusion[role] = {"fused": fused, "fusions": stats}
    if method == "per-token":
        per_channel = True  # per-token activations always go with per-channel weights
    ladder: list[tuple[bool, int]] = [(per_channel, 0)]
    if fallback and not per_channel:
        ladder.append((True, 0))
    ranking: dict[str, list[tuple[str, float]]] = {}
    weight_matmuls = 0
    tried: list[dict[str, Any]] = []
    step = 0
    staged, figures = None, None
    while step < len(ladder):
        pc, n_keep = ladder[step]
        out_dir = work / f"try{step}"
        out_dir.mkdir()
        record: dict[str, Any] = (
            {
                "method": "per-token (inbedder.quantize.pertoken)",
                "weights": "int8, symmetric, per output channel",
                "activations": "uint8 around 128, one scale per token (batch-independent)",
                "op_types": ["MatMul", "Attention"],
            }
            if method == "per-token"
            else {
                "method": "onnxruntime.quantization.quantize_dynamic",
                "weights": "int8 (QInt8), " + ("per-channel" if pc else "per-tensor"),
                "activations": "uint8, dynamic per call",
                "op_types": list(INT8_OP_TYPES),
                "matmul_const_b_only": True,
            }
        )
        record.update(
            {
                "reduce_range": chosen,
                "reduce_range_source": "auto" if reduce_range is None else "user",
                "cpu": isa.summary,
                "graphs": {},
            }
        )
        for role, graph in manifest.graphs.items():
            keep = [name for name, _ in ranking.get(role, [])[:n_keep]]
            if method == "per-token":
                ops = quantize_int8_invariant(
                    fused_dir / graph.file, out_dir / graph.file, reduce_range=chosen, exclude=keep
                )
            else:
                ops = quantize_int8(
                    fused_dir / graph.file,
                    out_dir / graph.file,
                    reduce_range=chosen,
                    per_channel=pc,
                    exclude=keep,
                )
            record["graphs"][role] = {**fusion[role], "ops": ops, "kept_fp32_nodes": keep}
        record["attempts"] = list(tried)
        staged, figures = stage_and_gate(record, out_dir)
        tried.append({"per_channel": pc, "kept_fp32": n_keep, "min_cosine": round(figures.min_cosine, 6)})
        shutil.rmtree(out_dir)
        if figures.passed or not fallback:
            break
        if step == len(ladder) - 1 and not ranking:
            # Rank once, on the fused fp32 graphs: the MatMuls with the largest local int8
            # error are candidates; their end-to-end effect orders them.
            recorded = reference.pipeline.graph_feeds(pairs[:RANKING_TEXTS])
            for role, graph in manifest.graphs.items():
                feeds = recorded.get(role)
                if feeds:
                    local = rank_matmuls(fused_dir / graph.file, feeds, per_channel=True, reduce_range=chosen)
                    weight_matmuls = max(
                        weight_matmuls, len(local) + _count(fused_dir / graph.file, "Attention")
                    )
                    ranking[role] = rank_end_to_end(
                        fused_dir / graph.file,
                        feeds,
                        [name for name, _ in local[:RANKING_CANDIDATES]],
                        work,
                        per_channel=True,
                        reduce_range=chosen,
                        per_token=method == "per-token",
                    )
            for n in range(1, int(weight_matmuls * MAX_FP32_FRACTION) + 1):
                ladder.append((True, n))
        step += 1
    assert staged is not None and figures is not None
    return staged, figures


def _to_fp16(
    src: Path, manifest: Manifest, work: Path, reference: Embedder, pairs: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "method": "onnxruntime.transformers.float16.convert_float_to_float16 (keep_io_types)",
        "fp32_op_types": list(FP16_FP32_OPS),
        "graphs": {},
    }
    recorded = reference.pipeline.graph_feeds(pairs)
    for role, graph in manifest.graphs.items():
        fused_path = work / "fp16-fused" / graph.file
        fused_path.parent.mkdir(exist_ok=True)
        fused, stats = fuse(src / graph.file, fused_path, graph, manifest.source, use_gpu=True)
        # Overflow is measured on the fp32 graph, fed what the runtime feeds it on the calibration
        # set (every pass of a decode included).
        keep = overflowing_nodes(fused_path, recorded.get(role, []))
        ops = convert_fp16(fused_path, work / graph.file, keep)
        shutil.rmtree(fused_path.parent)
        record["graphs"][role] = {"fused": fused, "fusions": stats, "ops": ops, "kept_fp32_nodes": keep}
    return record


def _data_file(graphs_dir: Path, graph_file: str) -> str | None:
    """The converted graph's weights file, if its conversion wrote one."""
    name = data_name(graph_file)
    return name if (graphs_dir / name).exists() else None


def _copy_graphs(graphs_dir: Path, dst: Path, src: Path, source: Manifest, staged: Manifest) -> None:
    """The converted graphs (and their data files) from `graphs_dir`, every other file of the source
    bundle from `src`."""
    for name in {f for g in staged.graphs.values() for f in g.files}:
        shutil.copy2(graphs_dir / name, dst / name)
    source_graph_files = {f for g in source.graphs.values() for f in g.files}
    for name in source.files:
        if name not in source_graph_files:
            shutil.copy2(src / name, dst / name)
