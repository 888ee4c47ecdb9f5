"""Graph conversions: onnxruntime's transformer fusions, int8 dynamic quantization, fp16.

Scope: one fp32 ONNX file in, one converted file out, using onnxruntime's own tools
(`onnxruntime.transformers.optimizer`, `onnxruntime.quantization.quantize_dynamic`,
`onnxruntime.transformers.float16`), each written in the bundle layout
(`inbedder.onnxfile`). Which fusion set applies is the graph's `fusion` in the manifest (the
exporting family's declaration; None: no fusions), and which fusions a CPU graph leaves out is its
`cpu_disabled_optimizers` (`inbedder.onnxfile.CPU_SLOW_FUSIONS`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from inbedder.onnxfile import CPU_SLOW_FUSIONS, save_graph
from inbedder.runtime.bundle import GraphSpec

# int8: weight MatMuls (incl. the LM head projection at the slots), the QKV projection of fused
# Attention. Activation x activation MatMuls stay fp32 (MatMulConstBOnly): on AVX2 their per-call
# quantization costs more than it saves. The token-embedding table (and a head tied to it) is
# quantized before, per row, by `embedding.quantize_tables`; other Gathers (positions) stay fp32.
INT8_OP_TYPES = ("MatMul", "Attention")
# fp16: onnxruntime's default block list plus the log-softmax over the vocabulary at the slots (a
# sum of 50k exponentials). Fused norms and attention accumulate in fp32 inside their kernels.
FP16_FP32_OPS = ("LogSoftmax",)
FP16_MAX = 65504.0


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def fuse(
    src: Path,
    dst: Path,
    graph: GraphSpec,
    source: Mapping[str, Any],
    *,
    use_gpu: bool = False,
    keep_embedding_gather: bool = False,
) -> tuple[bool, dict[str, int]]:
    """Apply onnxruntime's transformer fusions of the graph's `fusion` model type (none if None);
    for the CPU, without those the graph's `cpu_disabled_optimizers` name. `keep_embedding_gather`
    leaves out the embedding fusion (EmbedLayerNormalization reads a float table; int8 quantizes
    the table). Returns (fused?, the fused-operator statistics)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    kind = graph.fusion
    if kind is None:
        save_graph(onnx.load(src), dst)
        return False, {}
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    options = FusionOptions(kind)
    if keep_embedding_gather:
        options.enable_embed_layer_norm = False
    for optimizer in () if use_gpu else graph.cpu_disabled_optimizers:
        for flag in CPU_SLOW_FUSIONS.get(optimizer, ()):
            setattr(options, flag, False)
    opt = optimize_model(
        str(src),
        model_type=kind,
        num_heads=int(source.get("num_attention_heads", 0)),
        hidden_size=int(source.get("hidden_size", 0)),
        optimization_options=options,
        opt_level=0,  # python fusions only: the saved graph stays portable across CPUs and EPs
        use_gpu=use_gpu,
    )
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    opt.save_model_to_file(str(dst))  # sorts the graph and declares the contrib-op domain
    save_graph(onnx.load(dst), dst)  # the bundle layout: weights in an aligned data file
    return True, stats


def quantize_int8(
    src: Path,
    dst: Path,
    *,
    reduce_range: bool,
    u8_weights: bool = False,
    per_channel: bool = False,
    exclude: Iterable[str] = (),
    only: Iterable[str] = (),
) -> dict[str, int]:
    """Dynamic int8 quantization of the weights (activations quantized per call); nodes named in
    `exclude` stay fp32; a non-empty `only` quantizes just those nodes. `u8_weights`: full-range
    uint8 weights (QUInt8, asymmetric), whose u8 x u8 kernels cannot saturate; `reduce_range`
    then does not apply."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger("root").setLevel(logging.ERROR)  # its pre-processing advice is not for us
    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=list(INT8_OP_TYPES),
        per_channel=per_channel,
        reduce_range=reduce_range and not u8_weights,
        weight_type=QuantType.QUInt8 if u8_weights else QuantType.QInt8,
        nodes_to_exclude=list(exclude),
        nodes_to_quantize=list(only),
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    model = onnx.load(dst)
    save_graph(model, dst)  # the bundle layout: weights in an aligned data file
    return _op_counts(model)


def overflowing_nodes(
    model_path: Path, feeds: Iterable[Mapping[str, np.ndarray]], limit: float = FP16_MAX / 2
) -> list[str]:
    """Nodes whose fp32 outputs leave the fp16 range (with a 2x margin) on the given inputs.

    Every float intermediate is exposed as a graph output and the fp32 graph is run on CPU: a
    direct measurement of which layers would overflow, rather than a guess from the architecture.
    """
    import onnxruntime as ort
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(model_path)
    # onnxruntime's shape inference knows its contrib ops (fused graphs); onnx's does not.
    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    floats = {
        vi.name for vi in inferred.graph.value_info if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    producer = {out: n.name for n in model.graph.node for out in n.output}
    existing = {o.name for o in model.graph.output}
    names = sorted(floats - existing)
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    bad: set[str] = set()
    for feed in feeds:
        for name, value in zip(names, sess.run(names, dict(feed)), strict=True):
            if value.size and float(np.abs(value).max()) > limit:
                bad.add(producer[name])
    return sorted(bad)


def convert_fp16(src: Path, dst: Path, keep_fp32_nodes: Iterable[str]) -> dict[str, int]:
    """fp16 weights and compute, inputs/outputs as declared, overflowing nodes and norms in fp32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(src))
    # OnnxModel's converter inserts the Casts around blocked nodes (the bare function leaves a
    # blocked MatMul with an fp16 input).
    model.convert_float_to_float16(
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_FP32_OPS],
        node_block_list=list(keep_fp32_nodes),
    )
    save_graph(model.model, dst)
    return _op_counts(model.model)
