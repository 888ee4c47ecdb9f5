"""Per-token int8: weights int8 per output channel, activations int8 with one scale per token.

Scope: one fused fp32 ONNX file in (after `convert.fuse`), one int8 file out, rewritten with
standard ONNX ops plus onnxruntime's contrib ops (MatMulIntegerToFloat, MultiHeadAttention), so
that the Python and the native runtime run it with a stock onnxruntime.

Why not `quantize_dynamic`: it takes one activation scale over the whole padded batch, so a
text's vector depends on its neighbours (and on its own padding). Here every weight MatMul
`Y = X W + b` becomes

    s    = max(|X|, over the last axis) / 127          # (B, S, 1): one scale per token
    Xq   = QuantizeLinear(X * (1 / s), 1, 128)          # (B, S, K) uint8, symmetric around 128
    Y    = MatMulIntegerToFloat(Xq, Wq, s, w_scale, 128) + b    # (B, S, N) fp32

with `Wq` int8 per output column (`w_scale`: (N,)). A token's scale depends on that token only,
so results do not depend on batch size, neighbours or padding, and an outlier token costs
precision only in its own row. uint8 x int8 is the pair MLAS has VNNI / AVX2 kernels for.
Where u8 x s8 multiply-adds can saturate (x86 without VNNI: AVX2's `vpmaddubsw` sums pairs into
16 bits, and 2 * 255 * 127 > 32767), `reduce_range` keeps weights to 7 bits (fastest), or
`u8_weights` stores the same 8-bit weights as uint8 around 128 (`Wq + 128`, B zero point 128):
MLAS's u8 x u8 kernels widen to 16 bits before multiplying, so they are exact at full range
(about 1.3x the u8 x s8 time on an AVX2 Zen 3, measured in the README).

A fused `Attention` (QKV projection + attention core in one op, whose int8 form `QAttention`
quantizes per batch) is split into the quantized QKV projection and a
`MultiHeadAttention` core in fp32; one that `MultiHeadAttention` cannot express (causal, past
state, rotary, unequal Q/K/V sizes) stays fp32.

A GELU output (>= -0.17) is shifted to >= 0 and quantized over 0..255 (zero point 0) instead of
the half of a symmetric range its positive values would get; the shift comes out in the bias.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inbedder.onnxfile import save_graph

MS_DOMAIN = "com.microsoft"
ZERO_POINT = 128  # uint8 activations are symmetric around 128: the zero point is a scalar
# `u8_weights`: int8 weights q in -127..127 are stored as q + 128 (1..255), B zero point 128.
WEIGHT_ZERO_POINT = 128
# GELU's minimum is -0.16997 (at x = -0.7518; the tanh form's is within 1e-3 of it): a GELU output
# plus this is >= 0, so it is quantized over all 256 levels instead of the 128 a symmetric range
# leaves to positive values. The constant shift times the weights' column sums goes into the bias.
GELU_SHIFT = 0.17
GELU_OPS = {"Gelu", "FastGelu", "BiasGelu", "QuickGelu"}
MIN_SCALE = 1e-30  # an all-zero row gets a tiny scale instead of a division by zero
# Attention attributes MultiHeadAttention carries the same way; any other one (unidirectional,
# qkv_hidden_sizes, rotary, past_present_share_buffer, ...) keeps that Attention fp32.
_MHA_ATTRS = {"num_heads", "scale", "mask_filter_value"}


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


class _Rewriter:
    def __init__(self, model: onnx.ModelProto, reduce_range: bool, u8_weights: bool = False) -> None:
        self.model = model
        self.graph = model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.u8_weights = u8_weights  # full 8-bit range, stored as uint8: reduce_range does not apply
        self.qmax = 63.0 if reduce_range and not u8_weights else 127.0
        self.opset = _opset(model)
        self.rows: dict[str, tuple[str, str, str]] = {}  # input -> (xq, scale, zero point)
        self.producer = {o: n.op_type for n in self.graph.node for o in n.output}
        self.new_inits: list[TensorProto] = []
        self.graph_outputs = {o.name for o in self.graph.output}
        self._const("pt.zp", np.array(ZERO_POINT, np.uint8))
        self._const("pt.one", np.array(1.0, np.float32))
        self._const("pt.zp0", np.array(0, np.uint8))
        self._const("pt.inv_127", np.array(1.0 / 127.0, np.float32))  # activations: full 8 bits
        self._const("pt.inv_255", np.array(1.0 / 255.0, np.float32))
        self._const("pt.inv_63", np.array(1.0 / 63.0, np.float32))  # 7-bit activations
        self._const("pt.zp64", np.array(64, np.uint8))
        self._const("pt.shift", np.array(GELU_SHIFT, np.float32))
        self._const("pt.min_scale", np.array(MIN_SCALE, np.float32))
        self._const("pt.axes", np.array([-1], np.int64))
        if u8_weights:
            self._const("pt.w_zp", np.array(WEIGHT_ZERO_POINT, np.uint8))

    def _const(self, name: str, value: np.ndarray) -> str:
        if name not in self.inits:  # an earlier pass (`embedding.py`'s tied head) made it
            self.new_inits.append(numpy_helper.from_array(value, name))
        return name

    def weight_vector(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def weight(self, name: str) -> np.ndarray | None:
        """A constant fp32 matrix (K, N), or None."""
        t = self.inits.get(name)
        if t is None or t.data_type != TensorProto.FLOAT or len(t.dims) != 2:
            return None
        return numpy_helper.to_array(t)

    def row_quantized(
        self, x: str, shifted: bool, seven_bit: bool = False
    ) -> tuple[list[onnx.NodeProto], str, str, str]:
        """Nodes quantizing `x` (..., K) to uint8 with one scale per row (shared by every MatMul
        reading `x`): symmetric around 128, or, for a GELU output (`shifted`), `x + GELU_SHIFT`
        (>= 0) over the full 0..255; `seven_bit`: symmetric around 64 within 1..127 (what a full-
        range int8 weight can meet without a saturating pair sum: 2 * 127 * 127 <= 32767).
        Returns (nodes, uint8 tensor, scale (..., 1), zero point)."""
        shifted = shifted and not seven_bit  # 7-bit rows are symmetric: a GELU output too
        key, p = (f"{x}/7", f"{x}.rowq7") if seven_bit else (x, f"{x}.rowq")
        levels, zp = (
            ("pt.inv_63", "pt.zp64")
            if seven_bit
            else ("pt.inv_255", "pt.zp0")
            if shifted
            else ("pt.inv_127", "pt.zp")
        )
        if key in self.rows:
            return [], *self.rows[key]
        if f"{p}.q" in self.producer:  # quantized by an earlier pass: shared, not made twice
            self.rows[key] = (f"{p}.q", f"{p}.scale", zp)
            return [], *self.rows[key]
        nodes: list[onnx.NodeProto] = []
        if shifted:
            nodes.append(helper.make_node("Add", [x, "pt.shift"], [f"{p}.pos"], name=f"{p}/shift"))
            src = peak = f"{p}.pos"  # already >= 0
        else:
            src, peak = x, f"{p}.abs"
            nodes.append(helper.make_node("Abs", [src], [peak], name=f"{p}/abs"))
        if self.opset >= 18:
            red = helper.make_node(
                "ReduceMax", [peak, "pt.axes"], [f"{p}.amax"], name=f"{p}/amax", keepdims=1
            )
        else:
            red = helper.make_node(
                "ReduceMax", [peak], [f"{p}.amax"], name=f"{p}/amax", axes=[-1], keepdims=1
            )
        nodes += [
            red,  # (..., 1)
            helper.make_node("Mul", [f"{p}.amax", levels], [f"{p}.s0"], name=f"{p}/scale"),
            helper.make_node("Max", [f"{p}.s0", "pt.min_scale"], [f"{p}.scale"], name=f"{p}/floor"),
            helper.make_node("Reciprocal", [f"{p}.scale"], [f"{p}.inv"], name=f"{p}/inv"),
            helper.make_node("Mul", [src, f"{p}.inv"], [f"{p}.norm"], name=f"{p}/norm"),  # within the levels
            helper.make_node("QuantizeLinear", [f"{p}.norm", "pt.one", zp], [f"{p}.q"], name=f"{p}/q"),
        ]
        self.rows[key] = (f"{p}.q", f"{p}.scale", zp)
        return nodes, f"{p}.q", f"{p}.scale", zp

    def int8_matmul(
        self, name: str, x: str, w: np.ndarray, out: str
    ) -> tuple[list[onnx.NodeProto], np.ndarray | None]:
        """`out = x @ w` with per-token activations and per-channel int8 weights (uint8 around 128
        with `u8_weights`: the same values, another kernel); for a GELU
        input also the constant (N,) the shift added (`-GELU_SHIFT * colsum(W)`), which the
        caller subtracts in the bias. No bias input here: with a per-row `a_scale`, onnxruntime's
        MatMulIntegerToFloat multiplies its bias by that scale too (seen in 1.32)."""
        amax = np.abs(w).max(axis=0)  # (N,)
        scale = np.where(amax > 0, amax / self.qmax, 1.0).astype(np.float32)
        wq = np.clip(np.rint(w / scale), -self.qmax, self.qmax).astype(np.int8)  # (K, N)
        if self.u8_weights:
            stored = (wq.astype(np.int16) + WEIGHT_ZERO_POINT).astype(np.uint8)  # (K, N) 1..255
            wname = self._const(f"{name}.w_uint8", stored)
            w_zp = ["pt.w_zp"]
        else:
            wname, w_zp = self._const(f"{name}.w_int8", wq), []
        sname = self._const(f"{name}.w_scale", scale)
        shifted = self.producer.get(x) in GELU_OPS
        nodes, xq, xs, zp = self.row_quantized(x, shifted)
        nodes.append(
            helper.make_node(
                "MatMulIntegerToFloat",
                [xq, wname, xs, sname, zp, *w_zp],
                [out],
                name=f"{name}/int8",
                domain=MS_DOMAIN,
            )
        )
        # (x + c) Wq = x Wq + c colsum(Wq): the colsum of the dequantized weights the GEMM uses.
        correction = -GELU_SHIFT * (wq.astype(np.float64) * scale).sum(axis=0) if shifted else None
        return nodes, correction


def quantize_int8_invariant(
    src: Path,
    dst: Path,
    *,
    reduce_range: bool,
    u8_weights: bool = False,
    exclude: Iterable[str] = (),
    only: Iterable[str] = (),
) -> dict[str, int]:
    """Per-token int8 (module docstring) of every MatMul with a constant fp32 weight and of every
    fused Attention's QKV projection; nodes named in `exclude` stay fp32, a non-empty `only`
    quantizes just those nodes. Returns the written graph's operator counts."""
    model = onnx.load(src)
    quantize_model_int8_invariant(
        model, reduce_range=reduce_range, u8_weights=u8_weights, exclude=exclude, only=only
    )
    save_graph(model, dst)  # the bundle layout: weights in an aligned data file
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def quantize_model_int8_invariant(
    model: onnx.ModelProto,
    *,
    reduce_range: bool,
    u8_weights: bool = False,
    exclude: Iterable[str] = (),
    only: Iterable[str] = (),
    rewriter: Callable[[onnx.ModelProto, bool, bool], _Rewriter] = _Rewriter,
) -> None:
    """`quantize_int8_invariant` on a loaded model, in place (int4's fallback keeps its most
    sensitive MatMuls at per-token int8 with this). `rewriter(model, reduce_range, u8_weights)`
    makes the rewriter: a subclass may quantize the activations otherwise (bench/int8_variants.py)."""
    rw = rewriter(model, reduce_range, u8_weights)
    skip, keep_only = set(exclude), set(only)
    out: list[onnx.NodeProto] = []
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    corrections: dict[str, np.ndarray] = {}  # MatMul output -> constant to add (GELU shift)
    for n in model.graph.node:
        wanted = n.name not in skip and (not keep_only or n.name in keep_only)
        if n.op_type == "MatMul" and n.domain in ("", "ai.onnx") and wanted:
            w = rw.weight(n.input[1])
            if w is not None and n.input[0] not in rw.inits:
                nodes, correction = rw.int8_matmul(n.name, n.input[0], w, n.output[0])
                if correction is not None:
                    corrections[n.output[0]] = correction
                out += nodes
                continue
        if n.op_type == "Attention" and n.domain == MS_DOMAIN and wanted:
            converted = _attention(rw, n)
            if converted is not None:
                out += converted
                continue
        out.append(n)
    for result, correction in corrections.items():
        out = _add_constant(rw, out, users.get(result, []), result, correction)
    model.graph.ClearField("node")
    model.graph.node.extend(out)
    model.graph.initializer.extend(rw.new_inits)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    _drop_unused_initializers(model)


def _add_constant(
    rw: _Rewriter, nodes: list[onnx.NodeProto], users: list[onnx.NodeProto], result: str, value: np.ndarray
) -> list[onnx.NodeProto]:
    """Add the constant `value` (N,) to tensor `result`: into the bias of its only consumer
    `Add(result, bias)` when there is one (a new initializer: the old one may be shared), else
    with a new Add after its producer."""
    if len(users) == 1 and users[0].op_type == "Add" and result not in rw.graph_outputs:
        add = users[0]
        other = 1 if add.input[0] == result else 0
        bias = rw.inits.get(add.input[other])
        if bias is not None and bias.data_type == TensorProto.FLOAT and list(bias.dims) == [value.size]:
            new = rw._const(
                f"{add.name}.bias_shifted", (numpy_helper.to_array(bias) + value).astype(np.float32)
            )
            add.input[other] = new
            return nodes
    raw = f"{result}.unshifted"
    out: list[onnx.NodeProto] = []
    for n in nodes:
        if result in n.output:
            n.output[list(n.output).index(result)] = raw
            out.append(n)
            const = rw._const(f"{result}.shift_correction", value.astype(np.float32))
            out.append(helper.make_node("Add", [raw, const], [result], name=f"{result}/shift_correction"))
        else:
            out.append(n)
    return out


def split_attention(model: onnx.ModelProto, exclude: Iterable[str] = ()) -> dict[str, str]:
    """Every fused Attention of `model` (but those named in `exclude`) that MultiHeadAttention can
    express -> fp32 QKV MatMul + Split + MultiHeadAttention, in place, so that a weight-only
    quantizer of MatMuls (int4's MatMulNBits) reaches the QKV projection. Returns
    {Attention name: its QKV MatMul's name}."""
    rw = _Rewriter(model, reduce_range=False)
    skip = set(exclude)
    out: list[onnx.NodeProto] = []
    made: dict[str, str] = {}
    for n in model.graph.node:
        converted = None
        if n.op_type == "Attention" and n.domain == MS_DOMAIN and n.name not in skip:
            converted = _attention(rw, n, fp32_projection=True)
        if converted is None:
            out.append(n)
            continue
        out += converted
        made[n.name] = converted[0].name
    model.graph.ClearField("node")
    model.graph.node.extend(out)
    model.graph.initializer.extend(rw.new_inits)
    return made


def _attention(
    rw: _Rewriter, n: onnx.NodeProto, fp32_projection: bool = False
) -> list[onnx.NodeProto] | None:
    """Fused Attention -> per-token int8 QKV projection (with `fp32_projection`: an fp32 MatMul)
    + Split + MultiHeadAttention (fp32 core); None when MultiHeadAttention cannot express this
    Attention."""
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    if set(attrs) - _MHA_ATTRS or len(n.output) > 1 or rw.opset < 13:  # Split's sizes input: opset 13
        return None
    inputs = list(n.input) + [""] * (6 - len(n.input))
    x, w_name, b_name, mask, past, attn_bias = inputs[:6]
    if past or any(inputs[6:]) or not b_name:
        return None
    w = rw.weight(w_name)
    if w is None or w.shape[1] % 3:
        return None
    hidden = w.shape[1] // 3
    qkv = f"{n.name}.qkv"  # (B, S, 3 * hidden), without the bias (MultiHeadAttention adds it)
    if fp32_projection:
        nodes = [helper.make_node("MatMul", [x, w_name], [qkv], name=f"{n.name}/qkv")]
        correction = None
    else:
        nodes, correction = rw.int8_matmul(n.name, x, w, qkv)
    if correction is not None:  # a GELU feeding attention directly: fold the shift into its bias
        b_name = rw._const(
            f"{n.name}.bias_shifted", (rw.weight_vector(b_name) + correction).astype(np.float32)
        )
    split = rw._const(f"{n.name}.split", np.array([hidden] * 3, np.int64))
    q, k, v = (f"{n.name}.{c}" for c in "qkv")
    nodes.append(helper.make_node("Split", [qkv, split], [q, k, v], name=f"{n.name}/split", axis=-1))
    mha_inputs = [q, k, v, b_name, mask, attn_bias]
    while mha_inputs and not mha_inputs[-1]:
        mha_inputs.pop()
    nodes.append(
        helper.make_node(
            "MultiHeadAttention", mha_inputs, list(n.output), name=f"{n.name}/mha", domain=MS_DOMAIN, **attrs
        )
    )
    return nodes


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for node in model.graph.node for i in node.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    model.graph.ClearField("initializer")
    model.graph.initializer.extend(keep)
