"""`quantize_bundle`: an fp32 bundle -> an int8 or int4 (CPU) or fp16 (CUDA) bundle, behind a fidelity gate.

Scope: converting every graph of the bundle (`convert.py`), staging the new bundle, running the
gate against the source (`gate.py`) and writing the result atomically, or refusing with the
figures. Nothing here depends on the model family beyond what the manifest says: which fusions
fit each graph, and what the graphs are fed (the runtime pipeline's own `graph_feeds`).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnx

from inbedder.errors import InputError
from inbedder.onnxfile import data_name, save_graph
from inbedder.runtime import Embedder, cuda_available
from inbedder.runtime.bundle import Manifest, bundle_root, load_manifest, move_files, staging, write_bundle
from inbedder.runtime.samples import calibration_pairs, heldout_pairs
from inbedder.runtime.session import Device, row_ops_library

from .convert import FP16_FP32_OPS, INT8_OP_TYPES, convert_fp16, fuse, overflowing_nodes, quantize_int8
from .embedding import quantize_tables
from .gate import (
    DEFAULT_MIN_COSINES,
    GateFigures,
    PartFigures,
    QuantizationRefused,
    best_attempt,
    choose_attempt,
    measure,
    reference_outputs,
)
from .int4 import ACCURACY_LEVEL, BLOCK_SIZE, SYMMETRIC, quantize_int4, simulate_activations, simulate_weights
from .isa import cpu_features
from .on_request import add_on_request
from .pertoken import quantize_int8_invariant
from .row_ops import add_row_ops
from .sensitivity import rank_end_to_end, rank_matmuls

QuantPrecision = Literal["int8", "int4", "fp16"]
PRECISIONS: tuple[QuantPrecision, ...] = ("int8", "int4", "fp16")
MAX_KEPT_FRACTION = 1 / 3  # the fallback keeps at most this share of weight MatMuls at higher precision
RANKING_TEXTS = 12  # calibration texts (spread over the part) used to rank MatMuls by their error
RANKING_CANDIDATES = 16  # MatMuls (largest local error) whose end-to-end effect is measured
# Settings are chosen on calibration with half the bound's headroom (0.995 for a 0.99 bound): the
# held-out part is three times larger, so its minimum is lower than calibration's.
SELECTION_HEADROOM = 0.5
# onnxruntime's quantizer and fusions hold and serialize the whole graph as one protobuf.
MAX_QUANTIZE_BYTES = (1 << 31) - (1 << 24)

Pairs = Sequence[tuple[str, str]]
Feeds = Mapping[str, Sequence[Mapping[str, np.ndarray]]]


@dataclass(frozen=True)
class Int8Setting:
    """One point of the search: weight scales per channel or per tensor (int8), the weight
    MatMuls kept at the method's `kept_as` precision (fused-graph node names), 7-bit int8
    weights or full range, and full-range weights stored as uint8 (`pertoken.py`: exact where
    u8 x s8 kernels saturate; `reduce_range` then does not apply)."""

    per_channel: bool
    kept: tuple[str, ...]
    reduce_range: bool
    u8_weights: bool = False


class Int8Convert(Protocol):
    """Converts one fused fp32 graph file `src` into a quantized graph file `dst` (bundle layout:
    `inbedder.onnxfile.save_graph`) at `setting`; returns the op counts of the result.
    `calibration_feeds` are the graph's inputs on the calibration part (what a static method
    takes its activation ranges from; empty unless the method asks for them)."""

    def __call__(
        self,
        src: Path,
        dst: Path,
        setting: Int8Setting,
        calibration_feeds: Sequence[Mapping[str, np.ndarray]],
    ) -> dict[str, int]: ...


class Probe(Protocol):
    """Converts only `node` of the fused fp32 graph `src` (the rest stays fp32) into `dst`: the
    sensitivity ranking's measurement of that node's end-to-end effect."""

    def __call__(self, src: Path, dst: Path, node: str, reduce_range: bool) -> object: ...


@dataclass(frozen=True)
class Int8Method:
    """A conversion the gate searches over (int8's, or int4's): what it is called in the
    manifest, how it converts, and whether it wants the calibration part's graph inputs."""

    name: str
    weights: str  # recorded, e.g. "int8 (QInt8), symmetric"
    activations: str  # recorded, e.g. "uint8, dynamic per call"
    convert: Int8Convert
    needs_calibration_feeds: bool = False
    # Activations quantized per token (a vector does not depend on its batch): weights are then
    # per channel only, and a tied LM head over the int8 table is quantized per token too.
    per_token: bool = False
    # What the fallback keeps the MatMuls this method hurts most at ("fp32"; int4: "int8").
    kept_as: str = "fp32"
    # Sensitivity ranking of this method: the local error's weight and activation rounding
    # (None: int8's, `sensitivity.py`) and the one-node conversion (None: int8's, by `per_token`).
    weight_rounding: Callable[[np.ndarray], np.ndarray] | None = None
    activation_rounding: Callable[[np.ndarray], np.ndarray] | None = None
    probe: Probe | None = None
    # Recorded in the manifest beside the method (e.g. int4's block size).
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    weight_bits: int = 8


def _dynamic(
    src: Path, dst: Path, setting: Int8Setting, calibration_feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, int]:
    return quantize_int8(
        src,
        dst,
        reduce_range=setting.reduce_range,
        u8_weights=setting.u8_weights,
        per_channel=setting.per_channel,
        exclude=setting.kept,
    )


DYNAMIC_INT8 = Int8Method(
    name="onnxruntime.quantization.quantize_dynamic",
    weights="int8 (QInt8), symmetric",
    activations="uint8, dynamic per call (one scale per tensor)",
    convert=_dynamic,
)


def _per_token(
    src: Path, dst: Path, setting: Int8Setting, calibration_feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, int]:
    return quantize_int8_invariant(
        src, dst, reduce_range=setting.reduce_range, u8_weights=setting.u8_weights, exclude=setting.kept
    )


PER_TOKEN_INT8 = Int8Method(
    name="per-token (inbedder.quantize.pertoken)",
    weights="int8, symmetric",
    activations="uint8 around 128, one scale per token (batch-independent)",
    convert=_per_token,
    per_token=True,
)
# `quantize_bundle(int8_method=)` / `inbedder quantize --int8-method` by name.
INT8_METHODS: dict[str, Int8Method] = {"per-token": PER_TOKEN_INT8, "dynamic": DYNAMIC_INT8}
DEFAULT_INT8_METHOD = "per-token"


def int4_method(
    block_size: int = BLOCK_SIZE, symmetric: bool = SYMMETRIC, accuracy_level: int = ACCURACY_LEVEL
) -> Int8Method:
    """int4 weights (`int4.py`: onnxruntime's MatMulNBits), the fallback keeping MatMuls at
    per-token int8; the word-embedding table and a tied head int8 per row as in per-token int8."""

    def convert(
        src: Path, dst: Path, setting: Int8Setting, calibration_feeds: Sequence[Mapping[str, np.ndarray]]
    ) -> dict[str, int]:
        return quantize_int4(
            src, dst, reduce_range=setting.reduce_range, u8_weights=setting.u8_weights,
            keep_int8=setting.kept, block_size=block_size, symmetric=symmetric,
            accuracy_level=accuracy_level,
        )  # fmt: skip

    def probe(src: Path, dst: Path, node: str, reduce_range: bool) -> object:
        return quantize_int4(
            src, dst, reduce_range=reduce_range, only=[node], block_size=block_size, symmetric=symmetric,
            accuracy_level=accuracy_level,
        )  # fmt: skip

    acts = (
        "int8 per row and block of K inside MatMulNBits (batch-independent)"
        if accuracy_level == 4
        else "fp32 (weights dequantized in the kernel)"
    )
    return Int8Method(
        name="onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer (round to nearest)",
        weights=f"int4 (MatMulNBits), {'symmetric' if symmetric else 'asymmetric'}, one scale per "
        f"{block_size} rows of K",
        activations=acts,
        convert=convert,
        per_token=True,
        kept_as="int8",
        weight_rounding=lambda w: simulate_weights(w, block_size, symmetric),
        activation_rounding=(lambda x: simulate_activations(x, block_size)) if accuracy_level == 4 else None,
        probe=probe,
        settings={
            "bits": 4,
            "block_size": block_size,
            "symmetric": symmetric,
            "accuracy_level": accuracy_level,
        },
        weight_bits=4,
    )


INT4 = int4_method()


def quantize_bundle(
    src: str | Path,
    out: str | Path,
    *,
    precision: QuantPrecision = "int8",
    calibration: Pairs | None = None,
    heldout: Pairs | None = None,
    min_cosine: float | None = None,
    reduce_range: bool | None = None,
    per_channel: bool = False,
    fallback: bool = True,
    overwrite: bool = False,
    int8_method: str | Int8Method = DEFAULT_INT8_METHOD,
    int4: Int8Method = INT4,
    row_ops: str | Path | None = None,
    answers_on_request: bool = False,
) -> Manifest:
    """Write a `precision` copy of the fp32 bundle `src` to `out` (which may be `src` itself with
    `overwrite=True`) if its embeddings stay within `min_cosine` of the source's on the held-out
    (text, instruction) pairs; otherwise raise `QuantizationRefused`. `min_cosine=None` takes the
    precision's default (`gate.DEFAULT_MIN_COSINES`: 0.99 for int8 and fp16, int4's own there).

    `calibration` (default: the built-in calibration part, `runtime.samples.calibration_pairs`)
    chooses the settings; `heldout` (default: the built-in held-out part) is only measured, and
    the bound applies to it. Both parts' figures go into the manifest's `validation`.

    `reduce_range=None` chooses by CPU: 7-bit weights on x86 without VNNI, where u8 x s8
    multiply-adds can saturate; full range elsewhere. The choice is recorded in the manifest.
    With 7-bit weights (chosen or asked for) the fallback's later attempts store full-range
    weights as uint8 instead (`u8_weights`: exact on every CPU, slower GEMMs).
    With `fallback` (int8, int4), settings give way to more faithful ones until one reaches the
    selection bound on calibration (see `_ladder_search`); every attempt is recorded, the accepted
    one marked. `int8_method` is the conversion searched over, an `Int8Method` or the name of one
    in `INT8_METHODS` (default "per-token": activations quantized per token, so a vector does not
    depend on its batch; "dynamic": onnxruntime's `quantize_dynamic`, one scale per batch).
    `precision="int4"` searches `int4` (default `INT4`: `int4_method()`) the same way, its fallback
    keeping the most sensitive MatMuls at per-token int8.

    `answers_on_request`: every graph of the accepted bundle whose family names outputs only
    answers need (`Pipeline.on_request`: a masked LM's LM head) gets those nodes behind an If on
    the input `want_answers` (quantize/on_request.py), checked bit-identical on the same passes; a
    call that wants only vectors then skips them. Off by default: onnxruntime 1.32 creates such a
    session with a transient extra copy of the branch's weights (~50 MB of peak RSS for
    roberta-large).

    `row_ops` (per-token int8 only): the path of inbedder's operator library
    (libinbedder_row_ops.so, built with the native runtime). The accepted bundle then also gets
    each graph's row-ops form (quantize/row_ops.py: the per-token passes fused, the same weights
    file), written only if its outputs are bit-identical to the stock graph's on every graph pass
    of the calibration and held-out texts (else `QuantizationRefused`).
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if isinstance(int8_method, str):
        if int8_method not in INT8_METHODS:
            raise InputError(f"int8_method must be one of {tuple(INT8_METHODS)}, got {int8_method!r}")
        int8_method = INT8_METHODS[int8_method]
    lib = row_ops_library(row_ops)
    if not isinstance(answers_on_request, bool):
        raise InputError(f"answers_on_request must be True or False, got {answers_on_request!r}")
    if lib is not None and (precision != "int8" or not int8_method.per_token):
        raise InputError(
            f"row_ops needs per-token int8 (precision 'int8', int8_method 'per-token'), got "
            f"precision {precision!r}, int8_method {int8_method.name!r}"
        )
    if min_cosine is None:
        min_cosine = DEFAULT_MIN_COSINES[precision]
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
    cal_pairs = list(calibration) if calibration is not None else calibration_pairs()
    held_pairs = list(heldout) if heldout is not None else heldout_pairs()
    sources = {
        "calibration": "built-in" if calibration is None else "user",
        "held-out": "built-in" if heldout is None else "user",
    }
    reference = Embedder(src)  # loaded now: `out` may replace `src`
    ref_cal = reference_outputs(reference, cal_pairs, "calibration")
    select_bound = 1.0 - (1.0 - min_cosine) * SELECTION_HEADROOM
    device: Device = "cuda" if precision == "fp16" and cuda_available() else "cpu"

    def stage(record: dict[str, Any], graphs_dir: Path, name: str) -> tuple[Manifest, PartFigures]:
        """Stage a bundle from the converted graphs in work/name; its calibration figures."""
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
        stage_dir = work / name
        shutil.rmtree(stage_dir, ignore_errors=True)
        staged = write_bundle(
            stage_dir, staged_manifest, lambda d: _copy_graphs(graphs_dir, d, root, manifest, staged_manifest)
        )
        candidate = Embedder(stage_dir, device=device, verify=False)
        return staged, measure(ref_cal, candidate, "calibration", sources["calibration"], min_cosine)

    with staging(out, "quantize") as work:
        if precision in ("int8", "int4"):
            name, staged, cal = _ladder_search(
                root, manifest, work, reference, cal_pairs, reduce_range, per_channel, fallback,
                select_bound, int8_method if precision == "int8" else int4, stage,
            )  # fmt: skip
        else:
            name = "staged"
            staged, cal = stage(_to_fp16(root, manifest, work, reference, cal_pairs), work, name)
        # Measured once, on the accepted setting only: the held-out part never chooses.
        ref_held = reference_outputs(reference, held_pairs, "held-out")
        candidate = Embedder(work / name, device=device, verify=False)
        held = measure(ref_held, candidate, "held-out", sources["held-out"], min_cosine)
        del candidate
        figures = GateFigures(calibration=cal, heldout=held, bound=min_cosine)
        record = dict(staged.options["quantization"])
        record["selection_bound"] = select_bound
        if not figures.passed:
            attempts = record.get("attempts")
            raise QuantizationRefused(
                f"{precision} bundle refused: {figures.summary()}; worst held-out text {held.worst_text!r}"
                + (f"; attempts: {attempts}" if attempts else "")
            )
        # Only for a bundle the gate accepted: both keep its outputs bit for bit.
        pairs = [*cal_pairs, *held_pairs]
        calls = None  # the stock graphs' passes, once one check has run them
        if answers_on_request:
            graphs, gated, calls = add_on_request(work / name, staged, pairs)
            if gated["graphs"]:
                record["on_request"] = gated
                staged = dataclasses.replace(staged, graphs=graphs)
        if lib is not None:
            graphs, record["row_ops"] = add_row_ops(work / name, staged, lib, pairs, calls or None)
            staged = dataclasses.replace(staged, graphs=graphs)
        final = dataclasses.replace(
            staged,
            options={**staged.options, "quantization": record},
            validation=figures.as_json(),
            files={},
        )
        return write_bundle(out, final, lambda d: move_files(work / name, d), overwrite=overwrite)


def _count(path: Path, op_type: str) -> int:
    import onnx

    return sum(n.op_type == op_type for n in onnx.load(path, load_external_data=False).graph.node)


def _spread(pairs: Pairs, k: int) -> list[tuple[str, str]]:
    """k pairs spread over the whole part (its categories come in runs)."""
    step = max(1, len(pairs) // k)
    return list(pairs[::step][:k])


def _ladder_search(
    src: Path,
    manifest: Manifest,
    work: Path,
    reference: Embedder,
    pairs: Pairs,
    reduce_range: bool | None,
    per_channel: bool,
    fallback: bool,
    select_bound: float,
    method: Int8Method,
    stage: Callable[[dict[str, Any], Path, str], tuple[Manifest, PartFigures]],
) -> tuple[str, Manifest, PartFigures]:
    """Try settings of `method` from fastest to most faithful, measuring each on calibration:
    per-tensor weights, per-channel weights (int8 methods that have the choice), with 7-bit
    weights (`reduce_range`) then full-range uint8 ones (int8 methods), then with the weight
    MatMuls of largest end-to-end effect (`sensitivity.rank_end_to_end`) kept at
    `method.kept_as` (int8: fp32; int4: per-token int8, uint8 where weights are 7-bit), one more
    each step, up to `MAX_KEPT_FRACTION` of them. Accept the first attempt reaching `select_bound`
    (`gate.choose_attempt`); if none does, the best one (`gate.best_attempt`): never a setting
    worse than an earlier one. Returns the accepted attempt's staging directory name, manifest
    (its record lists every attempt, the accepted one marked) and calibration figures."""
    isa = cpu_features()
    chosen = isa.default_reduce_range() if reduce_range is None else bool(reduce_range)
    fused_dir = work / "fused"
    fused_dir.mkdir()
    fusion: dict[str, Any] = {}
    for role, graph in manifest.graphs.items():
        path = fused_dir / graph.file
        fused, stats = fuse(src / graph.file, path, graph, manifest.source, keep_embedding_gather=True)
        model = onnx.load(path)
        tables = quantize_tables(model, reduce_range=chosen, per_token=method.per_token)
        save_graph(model, path)
        fusion[role] = {"fused": fused, "fusions": stats, "embedding_tables": tables}
    feeds: Feeds = reference.pipeline.graph_feeds(pairs) if method.needs_calibration_feeds else {}
    per_channel = per_channel or method.per_token
    kept_key = f"kept_{method.kept_as}"  # "kept_fp32" (int8), "kept_int8" (int4)
    # (per-channel, MatMuls kept, uint8 weights). Where 7-bit weights were chosen (the CPU's
    # u8 x s8 kernels saturate, or the bundle must run on any x86 CPU), full-range uint8 weights
    # come next: about 1.3x the GEMM time of 7-bit ones on AVX2, where keeping a MatMul fp32
    # costs more and grows the bundle. Every later attempt keeps them.
    ladder: list[tuple[bool, int, bool]] = [(per_channel, 0, False)]
    if fallback and not per_channel:
        ladder.append((True, 0, False))
    if fallback and chosen and method.weight_bits == 8:
        ladder.append((True, 0, True))
    ranking: dict[str, list[tuple[str, float]]] = {}
    weight_matmuls = 0
    tried: list[dict[str, Any]] = []
    results: list[tuple[Manifest, PartFigures]] = []
    best: int | None = None  # the attempt kept on disk as the fallback choice
    accepted: int | None = None
    step = 0
    while step < len(ladder):
        pc, n_keep, u8 = ladder[step]
        out_dir = work / f"try{step}"
        out_dir.mkdir()
        granularity = "" if method.weight_bits != 8 else ", " + ("per-channel" if pc else "per-tensor")
        if u8:  # int4: the kept int8 MatMuls'
            granularity += (
                ", " if method.weight_bits == 8 else "; kept int8 ones "
            ) + "stored as uint8 (u8 x u8)"
        record: dict[str, Any] = {
            "method": method.name,
            **method.settings,
            "weights": method.weights + granularity,
            "activations": method.activations,
            "op_types": list(INT8_OP_TYPES),
            "matmul_const_b_only": True,
            "reduce_range": chosen,
            "reduce_range_source": "auto" if reduce_range is None else "user",
            "u8_weights": u8,
            "cpu": isa.summary,
            "graphs": {},
        }
        keep_all: list[str] = []
        for role, graph in manifest.graphs.items():
            keep = [name for name, _ in ranking.get(role, [])[:n_keep]]
            keep_all += keep
            setting = Int8Setting(per_channel=pc, kept=tuple(keep), reduce_range=chosen, u8_weights=u8)
            ops = method.convert(fused_dir / graph.file, out_dir / graph.file, setting, feeds.get(role, ()))
            record["graphs"][role] = {**fusion[role], "ops": ops, f"{kept_key}_nodes": keep}
        staged, cal = stage(record, out_dir, f"staged{step}")
        shutil.rmtree(out_dir)
        results.append((staged, cal))
        tried.append(
            {
                "attempt": step,
                **({"per_channel": pc} if method.weight_bits == 8 else {}),
                **({"u8_weights": u8} if chosen else {}),
                kept_key: n_keep,
                f"{kept_key}_nodes": keep_all,
                "calibration_min_cosine": round(cal.min_cosine, 6),
                "calibration_p1_cosine": round(cal.p1_cosine, 6),
                "calibration_mean_cosine": round(cal.mean_cosine, 6),
            }
        )
        mins = [t["calibration_min_cosine"] for t in tried]
        accepted = choose_attempt(mins, select_bound)
        new_best = best_attempt(mins)
        if best is not None and new_best != best:
            shutil.rmtree(work / f"staged{best}")  # superseded by a better attempt
        if new_best != step:
            shutil.rmtree(work / f"staged{step}")  # not better than an earlier one
        best = new_best
        if accepted is not None or not fallback:
            break
        if step == len(ladder) - 1 and not ranking:
            # Rank once, on the fused fp32 graphs: the MatMuls with the largest local error
            # under this method are candidates; their end-to-end effect orders them. At full
            # range: the attempts from here on have full-range weights (uint8 where 7-bit ones
            # were chosen, so that the probes do not saturate either).
            recorded = reference.pipeline.graph_feeds(_spread(pairs, RANKING_TEXTS))
            for role, graph in manifest.graphs.items():
                role_feeds = recorded.get(role)
                if role_feeds:
                    local = rank_matmuls(
                        fused_dir / graph.file, role_feeds, per_channel=True, reduce_range=False,
                        weight_rounding=method.weight_rounding,
                        activation_rounding=method.activation_rounding,
                    )  # fmt: skip
                    weight_matmuls = max(
                        weight_matmuls, len(local) + _count(fused_dir / graph.file, "Attention")
                    )
                    ranking[role] = rank_end_to_end(
                        fused_dir / graph.file,
                        role_feeds,
                        [name for name, _ in local[:RANKING_CANDIDATES]],
                        work,
                        per_channel=True,
                        reduce_range=False,
                        u8_weights=chosen,
                        per_token=method.per_token,
                        probe=method.probe,
                    )
            for n in range(1, int(weight_matmuls * MAX_KEPT_FRACTION) + 1):
                ladder.append((True, n, chosen))
        step += 1
    assert best is not None
    chosen_step = accepted if accepted is not None else best
    for t in tried:
        t["accepted"] = t["attempt"] == chosen_step
    staged, cal = results[chosen_step]
    record = dict(staged.options["quantization"])
    record["attempts"] = tried
    record["accepted_attempt"] = chosen_step
    record["selection"] = (
        "first attempt with calibration min cosine >= selection_bound"
        if accepted is not None
        else "none reached selection_bound: the attempt with the best calibration min cosine"
    )
    staged = dataclasses.replace(staged, options={**staged.options, "quantization": record})
    return f"staged{chosen_step}", staged, cal


def _to_fp16(src: Path, manifest: Manifest, work: Path, reference: Embedder, pairs: Pairs) -> dict[str, Any]:
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
