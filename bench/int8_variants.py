"""Two int8 methods measured against the default, not shipped: static activation ranges and
SmoothQuant-style scale migration (issue 12's comparison; `bench/quant_eval.py` runs them).

Scope: each is an `inbedder.quantize.core.Int8Method` (the plug-in the gate searches over), built
on the per-token rewriter (`quantize/pertoken.py`), so the weights are int8 per output channel and
the word table / tied head are what the default makes; only the activations of the weight MatMuls
differ. Both take their ranges from the calibration part's graph inputs (`calibration_feeds`: each
pair alone), never from the held-out part.

static     one activation scale per MatMul input, max |x| over every calibration token / 127 (a
           GELU output: max(x + shift) / 255, as the default's shift), a constant: one
           QuantizeLinear per input instead of the default's six per-row nodes, and batch-
           independent by construction; an outlier above the calibration range saturates.
smooth     SmoothQuant (Xiao et al. 2022): per input channel j of each weight MatMul (and fused
           QKV projection), s_j = max|x_j|^a / max|W_j|^(1-a) (a = ALPHA) from the calibration
           tokens; x / s before the per-token quantization (an explicit Mul: the LayerNorm output it
           would fold into also feeds the residual), W rows times s. Then the default per-token int8.
The static method plugs its rewriter into `pertoken.quantize_model_int8_invariant(rewriter=)`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from inbedder.onnxfile import save_graph
from inbedder.quantize.core import Int8Method, Int8Setting
from inbedder.quantize.pertoken import (
    GELU_OPS,
    GELU_SHIFT,
    MS_DOMAIN,
    _Rewriter,
    quantize_model_int8_invariant,
)

ALPHA = 0.5


def _targets(model: onnx.ModelProto, kept: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Weight MatMuls and fused Attentions the per-token rewriter converts: name -> (input, weight)."""
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.name in kept or not n.input or n.input[0] in inits:
            continue
        if (n.op_type == "MatMul" and n.domain in ("", "ai.onnx") and n.input[1] in inits) or (
            n.op_type == "Attention" and n.domain == MS_DOMAIN
        ):
            out[n.name] = (n.input[0], n.input[1])
    return out


def channel_peaks(
    src: Path, tensors: Sequence[str], feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Per tensor, max |x| per last-axis channel over every token of the calibration calls (K,),
    from an fp32 session of `src` that also outputs those tensors."""
    model = onnx.load(src)
    have = {o.name for o in model.graph.output}
    for t in dict.fromkeys(tensors):
        if t not in have:
            model.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = list(dict.fromkeys(tensors))
    peaks: dict[str, np.ndarray] = {}
    inputs = {i.name for i in sess.get_inputs()}
    for f in feeds:
        got = sess.run(names, {k: v for k, v in f.items() if k in inputs})
        for name, x in zip(names, got, strict=True):
            m = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)  # (K,): each call is one pair, unpadded
            peaks[name] = m if name not in peaks else np.maximum(peaks[name], m)
    return peaks


class _StaticRewriter(_Rewriter):
    """The per-token rewriter with each MatMul input quantized by one constant scale."""

    def __init__(
        self, model: onnx.ModelProto, reduce_range: bool, u8_weights: bool, peaks: Mapping[str, np.ndarray]
    ):
        super().__init__(model, reduce_range, u8_weights)
        self.peaks = peaks

    def row_quantized(self, x: str, shifted: bool) -> tuple[list[onnx.NodeProto], str, str, str]:
        if x in self.rows or x not in self.peaks:
            return super().row_quantized(x, shifted)
        p = f"{x}.static"
        if shifted:  # x + shift >= 0 over 0..255, as the default
            scale = max(float(self.peaks[x].max()) + GELU_SHIFT, 1e-30) / 255.0
            nodes = [helper.make_node("Add", [x, "pt.shift"], [f"{p}.pos"], name=f"{p}/shift")]
            src, zp = f"{p}.pos", "pt.zp0"
        else:
            scale = max(float(self.peaks[x].max()), 1e-30) / 127.0
            nodes, src, zp = [], x, "pt.zp"
        s = self._const(f"{p}.scale", np.array(scale, np.float32))
        nodes.append(helper.make_node("QuantizeLinear", [src, s, zp], [f"{p}.q"], name=f"{p}/q"))
        self.rows[x] = (f"{p}.q", s, zp)
        return nodes, f"{p}.q", s, zp


def _static(
    src: Path, dst: Path, setting: Int8Setting, calibration_feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, int]:
    model = onnx.load(src)
    peaks = channel_peaks(src, [x for x, _ in _targets(model, setting.kept).values()], calibration_feeds)
    quantize_model_int8_invariant(
        model,
        reduce_range=setting.reduce_range,
        u8_weights=setting.u8_weights,
        exclude=setting.kept,
        rewriter=lambda m, reduce_range, u8_weights: _StaticRewriter(m, reduce_range, u8_weights, peaks),
    )
    save_graph(model, dst)
    return dict(Counter(n.op_type for n in model.graph.node))


def _smooth(
    src: Path, dst: Path, setting: Int8Setting, calibration_feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, int]:
    model = onnx.load(src)
    targets = _targets(model, setting.kept)
    peaks = channel_peaks(src, [x for x, _ in targets.values()], calibration_feeds)
    inits = {t.name: t for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    for name, (x, w_name) in targets.items():
        if producer.get(x) in GELU_OPS:
            continue  # the default's shift over 0..255 handles GELU outputs; no outliers there
        w = numpy_helper.to_array(inits[w_name]).astype(np.float64)  # (K, N)
        a = np.maximum(peaks[x].astype(np.float64), 1e-8)
        b = np.maximum(np.abs(w).max(axis=1), 1e-8)
        s = a**ALPHA / b ** (1 - ALPHA)  # (K,)
        scaled = numpy_helper.from_array((w * s[:, None]).astype(np.float32), f"{w_name}.smooth.{name}")
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{name}.smooth.inv")
        model.graph.initializer.extend([scaled, inv])
        node = by_name[name]
        node.input[0], node.input[1] = f"{name}.smoothed", scaled.name
        at = list(model.graph.node).index(node)  # the Mul just before its reader: still sorted
        model.graph.node.insert(
            at, helper.make_node("Mul", [x, inv.name], [f"{name}.smoothed"], name=f"{name}/smooth")
        )
    # the unscaled weights are dropped with the other unused initializers
    quantize_model_int8_invariant(
        model, reduce_range=setting.reduce_range, u8_weights=setting.u8_weights, exclude=setting.kept
    )
    save_graph(model, dst)
    return dict(Counter(n.op_type for n in model.graph.node))


STATIC = Int8Method(
    name="bench.int8_variants.static (per-token rewriter, constant activation scales)",
    weights="int8 per output channel, symmetric",
    activations="uint8, one constant scale per MatMul input (calibration max / 127)",
    convert=_static,
    needs_calibration_feeds=True,
    per_token=True,
)
SMOOTH = Int8Method(
    name=f"bench.int8_variants.smooth (SmoothQuant alpha {ALPHA}, then per-token)",
    weights="int8 per output channel, symmetric, rows times the smoothing scales",
    activations="uint8 per token, after x / s (SmoothQuant)",
    convert=_smooth,
    needs_calibration_feeds=True,
    per_token=True,
)
