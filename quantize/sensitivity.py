"""Which weight MatMuls lose most to int8 (or int4): a local error on calibration activations.

Scope: run the fp32 graph once per calibration input with every weight MatMul's input exposed,
simulate onnxruntime's dynamic quantization of that one product in numpy (activations: uint8,
asymmetric, one scale per tensor; weights: int8, symmetric, per tensor or per output column; or
the rounding a method passes, e.g. int4's blocks) and rank nodes by relative error
||x W - Q(x) Q(W)||^2 / ||x W||^2. The quantizer keeps the worst ones at higher precision only
when the whole-bundle gate fails, and records which.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def _quant_act(x: np.ndarray) -> np.ndarray:
    """DynamicQuantizeLinear: uint8, range always containing 0, one scale."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zero = np.clip(np.round(-lo / scale), 0, 255)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def _quant_weight(w: np.ndarray, per_channel: bool, reduce_range: bool) -> np.ndarray:
    qmax = 63.0 if reduce_range else 127.0
    amax = np.abs(w).max(axis=0, keepdims=True) if per_channel else np.abs(w).max()
    scale = np.maximum(amax, 1e-12) / qmax
    return np.clip(np.round(w / scale), -qmax, qmax) * scale


def rank_matmuls(
    model_path: Path,
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    per_channel: bool,
    reduce_range: bool,
    weight_rounding: Callable[[np.ndarray], np.ndarray] | None = None,
    activation_rounding: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[tuple[str, float]]:
    """(node name, relative error) for every MatMul with a constant 2-D weight, worst first.
    `weight_rounding` (K, N) -> (K, N) and `activation_rounding` (tokens, K) -> (tokens, K)
    replace int8's simulation (another method's, e.g. int4's blocks; `activation_rounding` None
    then means fp32 activations)."""
    import onnxruntime as ort

    model = onnx.load(model_path)
    inits = {i.name: i for i in model.graph.initializer}
    nodes = [
        n
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2
    ]
    weights = {n.name: numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in nodes}
    act: Callable[[np.ndarray], np.ndarray]
    if weight_rounding is None:
        qweights = {k: _quant_weight(w, per_channel, reduce_range) for k, w in weights.items()}
        act = _quant_act
    else:
        qweights = {k: weight_rounding(w) for k, w in weights.items()}
        act = activation_rounding or (lambda x: x)
    inputs = sorted({n.input[0] for n in nodes})
    known = {o.name for o in model.graph.output}
    for name in inputs:
        if name not in known:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    num = dict.fromkeys(weights, 0.0)
    den = dict.fromkeys(weights, 0.0)
    for feed in feeds:
        acts = dict(zip(inputs, sess.run(inputs, dict(feed)), strict=True))
        for n in nodes:
            x = acts[n.input[0]].reshape(-1, weights[n.name].shape[0])  # (tokens, K)
            y = x @ weights[n.name]  # (tokens, N)
            yq = act(x) @ qweights[n.name]
            num[n.name] += float(((yq - y) ** 2).sum())
            den[n.name] += float((y**2).sum())
    errors = [(k, num[k] / max(den[k], 1e-30)) for k in weights]
    return sorted(errors, key=lambda kv: -kv[1])


def rank_end_to_end(
    model_path: Path,
    feeds: Sequence[Mapping[str, np.ndarray]],
    candidates: Iterable[str],
    work: Path,
    *,
    per_channel: bool,
    reduce_range: bool,
    u8_weights: bool = False,
    per_token: bool = False,
    probe: Callable[[Path, Path, str, bool], object] | None = None,
) -> list[tuple[str, float]]:
    """(node, 1 - min cosine of the graph's float outputs) with only that node in int8, worst
    first. Local error misses how early layers' errors grow downstream; this measures it, at one
    quantization per candidate (so callers pass a short list), with the method the bundle uses
    (`probe(src, dst, node, reduce_range)` when given, e.g. int4's; else `per_token`:
    `pertoken.quantize_int8_invariant`, else `quantize_dynamic`; with `u8_weights`' uint8
    weights where the quantizing CPU's u8 x s8 kernels would saturate at full range)."""
    import onnxruntime as ort

    from .convert import quantize_int8
    from .pertoken import quantize_int8_invariant

    base = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in base.get_outputs() if o.type == "tensor(float)"]
    want = [base.run(names, dict(f)) for f in feeds]
    scores = []
    for node in candidates:
        path = work / "probe" / "probe.onnx"
        path.parent.mkdir(exist_ok=True)
        if probe is not None:
            probe(model_path, path, node, reduce_range)
        elif per_token:
            quantize_int8_invariant(
                model_path, path, reduce_range=reduce_range, u8_weights=u8_weights, only=[node]
            )
        else:
            quantize_int8(
                model_path, path, reduce_range=reduce_range, u8_weights=u8_weights, per_channel=per_channel,
                only=[node],
            )  # fmt: skip
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        worst = 1.0
        for f, ref in zip(feeds, want, strict=True):
            for a, b in zip(ref, sess.run(names, dict(f)), strict=True):
                a, b = a.ravel(), b.ravel()
                cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
                worst = min(worst, cos)
        scores.append((node, 1.0 - worst))
        shutil.rmtree(path.parent)
    return sorted(scores, key=lambda kv: -kv[1])
