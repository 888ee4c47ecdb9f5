"""How a bundle stores an ONNX graph: the structure in `<graph>.onnx`, the weights in one
`<graph>.onnx.data` beside it, every large tensor at an offset aligned for memory mapping.

Scope: writing a `ModelProto` in that layout (export and quantize both save through here) and the
name of the data file. Why this layout: onnxruntime memory-maps external initializers whose offsets
are aligned (CPU sessions), instead of parsing them out of a protobuf and copying them, so a
session holds about one copy of the weights (peak RSS) and opens several times faster; and
protobuf cannot hold a graph past 2 GiB at all. Needs `onnx` (export or quantize extra), never at
runtime: onnxruntime reads the pair itself.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx.external_data_helper import set_external_data

# 64 KiB: Windows' allocation granularity and a multiple of every page size (4 KiB on x86 Linux,
# 16 KiB on Apple silicon), so mapped offsets are valid everywhere.
ALIGNMENT = 1 << 16
ALIGN_MIN_BYTES = 1 << 20  # smaller tensors are read, not mapped: packed, not padded
EXTERNAL_MIN_BYTES = 1024  # smaller tensors (scalars, shapes) stay inside the graph

# onnxruntime fusions whose CPU kernels are slower than the ops they replace (onnxruntime 1.32,
# 2 threads: SkipLayerNormalization (8, 64, 1024) 1.23 ms vs Add + LayerNormalization 0.15 ms;
# BiasGelu (8, 64, 4096) 1.62 ms vs Gelu with the bias folded into the int8 MatMul 0.55 ms;
# bench/ops.py). Each session-time optimizer (what a graph's `cpu_disabled_optimizers` in the
# manifest lists, so every CPU session of it leaves them out) -> the flags of
# `onnxruntime.transformers.FusionOptions` that make the same fusion offline (what quantize turns
# off when it fuses a graph for the CPU). CUDA keeps them.
CPU_SLOW_FUSIONS: dict[str, tuple[str, ...]] = {
    "SkipLayerNormFusion": ("enable_skip_layer_norm", "enable_bias_skip_layer_norm"),
    "BiasGeluFusion": ("enable_bias_gelu",),
}


def data_name(graph_file: str) -> str:
    """The weights file that belongs to graph file `graph_file`."""
    return graph_file + ".data"


def save_graph(model: onnx.ModelProto, path: Path) -> str | None:
    """Write `model` to `path` with its tensors of at least `EXTERNAL_MIN_BYTES` in
    `data_name(path.name)`, each one past `ALIGN_MIN_BYTES` at an `ALIGNMENT` offset.

    Returns the data file's name, or None when no tensor is that large (nothing written beside the
    graph). `model`'s tensors are left external (their bytes moved to the file): reload the file
    to use them again.
    """
    path = Path(path)
    data = path.parent / data_name(path.name)
    data.unlink(missing_ok=True)  # never append to a stale file
    tensors = [t for t in _tensors(model) if t.HasField("raw_data") and len(t.raw_data) >= EXTERNAL_MIN_BYTES]
    if tensors:
        with open(data, "wb") as f:
            for t in tensors:
                size = len(t.raw_data)
                if size >= ALIGN_MIN_BYTES:
                    f.write(b"\0" * (-f.tell() % ALIGNMENT))
                offset = f.tell()
                f.write(t.raw_data)
                set_external_data(t, data.name, offset, size)
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
    onnx.save_model(model, str(path))
    return data.name if tensors else None


def _tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Initializers of the graph and of its subgraphs (tensor attributes stay inline, as onnx's own
    external-data writer leaves them by default)."""
    out: list[onnx.TensorProto] = []

    def visit(graph: onnx.GraphProto) -> None:
        out.extend(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    visit(g)

    visit(model.graph)
    return out
