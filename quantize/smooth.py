"""Activation smoothing before int8: move per-channel activation outliers into the weights.

Scope: dynamic int8 quantizes each activation tensor with one scale. Transformer FFNs feed their
down-projection with GELU outputs whose few outlier channels are 10-100x the rest, so one scale
leaves the ordinary channels with a handful of levels. SmoothQuant (Xiao et al., 2023) rescales
channel j of the activation by 1/s_j and row j of the weight by s_j, which leaves the product
unchanged in exact arithmetic and balances the two ranges:
    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha).
onnxruntime applies SmoothQuant only in its static (calibrated) flow; this is the dynamic-quant
counterpart: the per-channel maxima come from running the fp32 graph on calibration inputs, and
a `Mul` by 1/s is inserted before each smoothed MatMul (GELU is not linear, so the factor cannot
be folded into the preceding weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# MatMuls whose input comes from these ops get smoothed: the FFN down-projections.
SMOOTH_AFTER = ("BiasGelu", "Gelu", "FastGelu", "QuickGelu")
DEFAULT_ALPHA = 0.5


def _weight_matmuls(model: onnx.ModelProto, after: Sequence[str]) -> list[onnx.NodeProto]:
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.input[1] not in inits or len(inits[n.input[1]].dims) != 2:
            continue
        src = producer.get(n.input[0])
        if src is not None and src.op_type in after:
            out.append(n)
    return out


def channel_maxima(
    model: onnx.ModelProto, tensors: Sequence[str], feeds: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each named tensor, over all feeds (fp32 run on CPU)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in known:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    maxima: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(tensors, sess.run(list(tensors), dict(feed)), strict=True):
            m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)  # (K,)
            maxima[name] = m if name not in maxima else np.maximum(maxima[name], m)
    return maxima


def smooth(
    src: Path,
    dst: Path,
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    alpha: float = DEFAULT_ALPHA,
    after: Sequence[str] = SMOOTH_AFTER,
) -> list[str]:
    """Write `src` with its GELU-fed weight MatMuls smoothed to `dst`; return their names."""
    model = onnx.load(src)
    nodes = _weight_matmuls(model, after)
    if not nodes:
        onnx.save(model, dst)
        return []
    maxima = channel_maxima(model, sorted({n.input[0] for n in nodes}), feeds)
    inits = {i.name: i for i in model.graph.initializer}
    new_nodes: dict[str, onnx.NodeProto] = {}
    for n in nodes:
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)  # (K, N)
        x_max = np.maximum(maxima[n.input[0]], 1e-5)  # (K,)
        w_max = np.maximum(np.abs(w).max(axis=1), 1e-5)  # (K,)
        s = np.clip(x_max**alpha / w_max ** (1 - alpha), 1e-4, 1e4).astype(np.float32)
        # A weight may be shared by several MatMuls: give each smoothed node its own copy.
        w_name, inv_name, scaled = f"{n.name}/smooth_W", f"{n.name}/smooth_inv_s", f"{n.name}/smoothed_A"
        model.graph.initializer.append(numpy_helper.from_array(w * s[:, None], w_name))
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv_name))
        new_nodes[n.name] = onnx.helper.make_node(
            "Mul", [n.input[0], inv_name], [scaled], name=f"{n.name}/smooth"
        )
        n.input[0], n.input[1] = scaled, w_name
    # Insert each Mul right before its MatMul (keeps the graph topologically sorted).
    ordered: list[onnx.NodeProto] = []
    for n in model.graph.node:
        if n.name in new_nodes:
            ordered.append(new_nodes[n.name])
        ordered.append(n)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.save(model, dst)
    return [n.name for n in nodes]
