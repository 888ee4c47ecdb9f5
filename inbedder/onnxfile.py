"""How a bundle stores an ONNX graph: the structure in `<graph>.onnx`, the weights in one
`<graph>.onnx.data` beside it, every large tensor at an offset aligned for memory mapping.

Scope: writing a `ModelProto` in that layout (export and quantize both save through here), the name
of the data file, and which tensors a node reads (its subgraphs' outer reads included). Why this
layout: onnxruntime memory-maps external initializers whose offsets are aligned (CPU sessions),
instead of parsing them out of a protobuf and copying them, so a session holds about one copy of
the weights (peak RSS) and opens several times faster; and protobuf cannot hold a graph past 2 GiB
at all. Needs `onnx` (export or quantize extra), never at runtime: onnxruntime reads the pair
itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data

# 64 KiB: Windows' allocation granularity and a multiple of every page size (4 KiB on x86 Linux,
# 16 KiB on Apple silicon), so mapped offsets are valid everywhere.
ALIGNMENT = 1 << 16
ALIGN_MIN_BYTES = 1 << 20  # smaller tensors are read, not mapped: packed, not padded
EXTERNAL_MIN_BYTES = 1024  # smaller tensors (scalars, shapes) stay inside the graph
_ROW_BLOCK = "inbedder:rows "  # `row_block`'s mark: "inbedder:rows <first row>:<table>"

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
    `data_name(path.name)`, each one past `ALIGN_MIN_BYTES` at an `ALIGNMENT` offset. A weight
    stored twice (a tied embedding and LM head) is stored once (`tie_transposed`; identical
    tensors share one offset of the data file; a `row_block` is a range inside its table).

    Returns the data file's name, or None when no tensor is that large (nothing written beside the
    graph). `model`'s tensors are left external (their bytes moved to the file): reload the file
    to use them again.
    """
    path = Path(path)
    data = path.parent / data_name(path.name)
    data.unlink(missing_ok=True)  # never append to a stale file
    tie_transposed(model)
    tensors = initializers(model.graph)
    tensors = [t for t in tensors if t.HasField("raw_data") and len(t.raw_data) >= EXTERNAL_MIN_BYTES]
    views = _row_blocks(tensors)  # {block's name: (its table, byte offset in the table)}
    tensors = [t for t in tensors if t.name not in views] + [t for t in tensors if t.name in views]
    if tensors:
        written: dict[tuple[int, bytes], int] = {}  # (dtype, digest) -> offset
        at: dict[str, int] = {}  # name -> offset
        with open(data, "wb") as f:
            for t in tensors:
                size = len(t.raw_data)
                if t.name in views:  # rows of a table written above: read from inside it
                    base, start = views[t.name]
                    set_external_data(t, data.name, at[base] + start, size)
                    t.ClearField("raw_data")
                    t.data_location = onnx.TensorProto.EXTERNAL
                    continue
                key = (t.data_type, hashlib.sha256(t.raw_data).digest())
                if key in written:  # the same bytes again: read from the same place
                    offset = written[key]
                else:
                    if size >= ALIGN_MIN_BYTES:
                        f.write(b"\0" * (-f.tell() % ALIGNMENT))
                    offset = written[key] = f.tell()
                    f.write(t.raw_data)
                at[t.name] = offset
                set_external_data(t, data.name, offset, size)
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
    onnx.save_model(model, str(path))
    return data.name if tensors else None


def row_block(block: onnx.TensorProto, table: str, first_row: int) -> None:
    """Mark `block` as rows `first_row`.. of the 2-D initializer `table` (same dtype and row width),
    so that `save_graph` stores it as that range of the table's bytes, not a second copy. The mark
    (the tensor's doc_string) stays in the saved graph, so later passes that reload and save it
    keep the sharing; `save_graph` checks the bytes and stores a block that is not what it says as
    a tensor of its own."""
    block.doc_string = f"{_ROW_BLOCK}{first_row}:{table}"


def _row_blocks(tensors: list[onnx.TensorProto]) -> dict[str, tuple[str, int]]:
    """The marked row blocks (`row_block`) whose bytes are their table's rows: name -> (table,
    byte offset inside it)."""
    by_name = {t.name: t for t in tensors}
    raw: dict[str, bytes] = {}  # a table's bytes, read once (each .raw_data access copies them)
    out: dict[str, tuple[str, int]] = {}
    for t in tensors:
        if not t.doc_string.startswith(_ROW_BLOCK):
            continue
        row, _, table = t.doc_string.removeprefix(_ROW_BLOCK).partition(":")
        base = by_name.get(table)
        if base is None or base.doc_string.startswith(_ROW_BLOCK) or not row.isdigit():
            continue
        if base.data_type != t.data_type or len(base.dims) != 2 or list(t.dims[1:]) != list(base.dims[1:]):
            continue
        data = raw.setdefault(table, base.raw_data)
        block = t.raw_data
        start = int(row) * len(data) // max(base.dims[0], 1)  # bytes per row x first row
        if data[start : start + len(block)] == block:
            out[t.name] = (table, start)
    return out


def tie_transposed(model: onnx.ModelProto) -> list[str]:
    """Replace every 2-D initializer (past `EXTERNAL_MIN_BYTES`) that is another one transposed
    (an LM head tied to the embedding table, which the exporter's constant folding stores as a
    transposed copy) by a Transpose node of that other one, so that the bytes are in the file
    once. onnxruntime folds the Transpose when a session starts (the same memory as before; half
    the file). Returns the names replaced."""
    graph = model.graph
    graph_inputs = {i.name for i in graph.input}
    big = [
        t
        for t in graph.initializer
        if len(t.dims) == 2 and t.HasField("raw_data") and len(t.raw_data) >= EXTERNAL_MIN_BYTES
        and t.name not in graph_inputs
    ]  # fmt: skip
    by_shape: dict[tuple[int, int, int], list[onnx.TensorProto]] = {}
    for t in big:
        by_shape.setdefault((t.data_type, t.dims[0], t.dims[1]), []).append(t)
    replaced: list[str] = []
    kept: set[str] = set()
    for t in big:
        if t.name in replaced:
            continue
        for u in by_shape.get((t.data_type, t.dims[1], t.dims[0]), []):
            if u.name == t.name or u.name in replaced or u.name in kept or t.dims[0] == t.dims[1]:
                continue
            a, b = numpy_helper.to_array(t), numpy_helper.to_array(u)
            if np.array_equal(np.ascontiguousarray(a.T), b):
                node = onnx.helper.make_node(
                    "Transpose", [t.name], [u.name], name=f"{u.name}_tied", perm=[1, 0]
                )
                graph.node.insert(0, node)
                graph.initializer.remove(u)
                replaced.append(u.name)
                kept.add(t.name)
    return replaced


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs `node` holds as attributes (an If's two branches, a Loop's body)."""
    return [g for a in node.attribute for g in ([a.g] if a.HasField("g") else list(a.graphs))]


def initializers(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Initializers of `graph` and of its subgraphs (tensor attributes stay inline, as onnx's own
    external-data writer leaves them by default)."""
    return [*graph.initializer, *(t for n in graph.node for g in subgraphs(n) for t in initializers(g))]


def reads(node: onnx.NodeProto) -> set[str]:
    """The tensors `node` reads, those its subgraphs (an If's branches) read from outside included."""
    names = {i for i in node.input if i}
    for g in subgraphs(node):
        inner = {o for n in g.node for o in n.output} | {t.name for t in g.initializer}
        names |= set().union(*(reads(n) for n in g.node)) - inner
    return names


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor a node of `graph` reads (`reads`)."""
    return set().union(*(reads(n) for n in graph.node))
