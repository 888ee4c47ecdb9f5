"""The token-embedding table in int8 with one scale per row, and a tied LM head that shares it.

Scope: one fused fp32 graph in, the same graph with its word-embedding table stored as int8 out,
before any int8 method converts the MatMuls. The table is the 2-D float initializer a `Gather`
reads with a graph input (the token ids) as indices. Each row r is quantized symmetrically,
q[r] = round(T[r] / s[r]), s[r] = max|T[r]| / qmax; the lookup gathers the int8 rows and their
scales and multiplies (dequantized on lookup: only the looked-up rows are ever float).

A head tied to the table (a MatMul whose weight is `Transpose(T)`, as the exporter stores a tied
weight, or an initializer equal to T^T) becomes x -> uint8 (one scale per call, or per token) ->
one QGemm per block of rows of q, `transB` (the block as stored, so onnxruntime never makes a
transposed copy of the table), the blocks' logits concatenated, times the activation scale and s.
Each block is a view of the table's bytes in the data file (`onnxfile.row_block`): one int8 table
in the file for both. Why blocks: onnxruntime pre-packs every GEMM weight at session start; a
`Transpose(q)` head made it first fold the transpose into a whole second table, held until every
weight was packed (+45 MB peak RSS and ~0.2 s of session start for roberta-large, measured in the
README); a block's packing needs only that block.
With `reduce_range` (x86 without VNNI, where u8 x s8 pair sums can saturate) a shared table keeps
8 bits and the head quantizes its per-token activations to 7 bits instead (`pertoken.py`'s
`seven_bit`), so that the lookup the encoder reads stays as precise as elsewhere; a head quantized
per call (one DynamicQuantizeLinear over 0..255) has no such choice, and its table is 7-bit.

onnxruntime's embedding fusion (EmbedLayerNormalization) takes a float table, so graphs quantized
here are fused without it (`convert.fuse(..., keep_embedding_gather=True)`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inbedder.onnxfile import ALIGNMENT, row_block

from .pertoken import MS_DOMAIN, _Rewriter

# A tied head reads the table in blocks of about this many bytes (`_head`): onnxruntime pre-packs
# each block for its GEMM at session start, so the largest copy made while a session starts is one
# block, where one transposed table (a 51 MB copy for roberta-large) was.
HEAD_BLOCK_BYTES = 4 << 20


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            out.setdefault(name, []).append(n)
    return out


def find_tables(model: onnx.ModelProto) -> list[str]:
    """Names of the 2-D float initializers that a Gather indexes with a graph input."""
    inits = {i.name: i for i in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    found = []
    for n in model.graph.node:
        if n.op_type != "Gather" or n.input[0] not in inits or n.input[1] not in inputs:
            continue
        t = inits[n.input[0]]
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if len(t.dims) == 2 and t.data_type == TensorProto.FLOAT and axis == 0 and t.name not in found:
            found.append(t.name)
    return found


def quantize_tables(model: onnx.ModelProto, *, reduce_range: bool, per_token: bool = False) -> dict[str, Any]:
    """Quantize every token-embedding table of `model` in place; returns what was done (for the
    manifest): per table its shape, bits and the tied heads that now share it. A tied head's
    activations are quantized per call (one scale per tensor), or with `per_token` one scale per
    token (`pertoken.py`'s construction: the head's logits do not depend on the batch)."""
    graph = model.graph
    record: dict[str, Any] = {}
    for name in find_tables(model):
        inits = {i.name: i for i in graph.initializer}
        producers = {o: n for n in graph.node for o in n.output}
        table = numpy_helper.to_array(inits[name]).astype(np.float32)  # (V, H)
        users = _consumers(graph).get(name, [])
        gathers = [n for n in users if n.op_type == "Gather"]
        heads = _tied_heads(graph, name, table, users, inits, producers)
        qmax = 63.0 if (reduce_range and heads and not per_token) else 127.0
        scale = np.maximum(np.abs(table).max(axis=1), 1e-30) / qmax  # (V,)
        q = np.clip(np.round(table / scale[:, None]), -qmax, qmax).astype(np.int8)  # (V, H)
        qname, sname = f"{name}_int8", f"{name}_row_scale"
        new_inits = [
            numpy_helper.from_array(q, qname),
            numpy_helper.from_array(scale.astype(np.float32), sname),
        ]
        new_nodes: list[onnx.NodeProto] = []
        for g in gathers:
            ids, out, b = g.input[1], g.output[0], g.name or g.output[0]
            new_nodes += [
                _node("Gather", [qname, ids], f"{b}_q", axis=0),  # (B, S, H) int8
                _node("Cast", [f"{b}_q"], f"{b}_qf", to=TensorProto.FLOAT),
                _node("Gather", [sname, ids], f"{b}_s", axis=0),  # (B, S)
                _node("Unsqueeze", [f"{b}_s", f"{name}_last_axis"], f"{b}_s1"),  # (B, S, 1)
                _node("Mul", [f"{b}_qf", f"{b}_s1"], out, name=f"{b}_dequant"),  # (B, S, H)
            ]
            graph.node.remove(g)
        new_inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{name}_last_axis"))
        if heads:
            new_inits += _head_blocks(name, q, scale, qname, sname)
        for mm in heads:
            x, out, b = mm.input[0], mm.output[0], mm.name or mm.output[0]
            if per_token:
                rows = _Rewriter(model, reduce_range=False)
                nodes, xq, xs, zp = rows.row_quantized(x, shifted=False, seven_bit=reduce_range)
                new_nodes += [
                    *nodes,
                    *_head(name, b, xq, "pt.one", zp, f"{b}_q8", table.shape),
                    _node("Mul", [f"{b}_q8", xs], out, name=f"{b}_token_scale"),  # (..., V)
                ]
                new_inits += [i for i in rows.new_inits if i.name not in {t.name for t in new_inits}]
            else:
                dql = helper.make_node(
                    "DynamicQuantizeLinear", [x], [f"{b}_xq", f"{b}_xs", f"{b}_xz"], name=f"{b}_dql"
                )  # uint8 (..., H), its scale and zero point (one each for the whole tensor)
                new_nodes += [dql, *_head(name, b, f"{b}_xq", f"{b}_xs", f"{b}_xz", out, table.shape)]
            graph.node.remove(mm)
        graph.node.extend(new_nodes)
        graph.initializer.extend(new_inits)
        _drop_unused(graph)
        record[name] = {
            "shape": list(table.shape),
            "bits": 7 if qmax == 63.0 else 8,
            "head_activation_bits": (7 if reduce_range else 8) if heads and per_token else None,
            "scales": "per row (symmetric)",
            "tied_heads": [mm.name for mm in heads],
            "head_block_rows": _block_rows(*table.shape) if heads else None,
        }
    _toposort(graph)
    return record


def _block_rows(rows: int, width: int) -> int:
    """Rows of the table per block of a tied head: about `HEAD_BLOCK_BYTES` of int8, a whole
    number of `ALIGNMENT`s (so that each block's offset in the data file can be mapped)."""
    step = ALIGNMENT // math.gcd(ALIGNMENT, width)  # the fewest rows filling whole ALIGNMENTs
    return min(rows, step * max(1, round(HEAD_BLOCK_BYTES / (step * width))))


def _head_blocks(
    name: str, q: np.ndarray, scale: np.ndarray, qname: str, sname: str
) -> list[onnx.TensorProto]:
    """The int8 table (V, H) as blocks of rows for the tied heads' QGemms: each block a view of
    the table's bytes in the data file (`onnxfile.row_block`: stored once), with its rows' scales
    and zero points; and the constants a head's reshapes take."""
    rows = _block_rows(*q.shape)
    inits: list[onnx.TensorProto] = []
    for k, r0 in enumerate(range(0, q.shape[0], rows)):
        r1 = min(q.shape[0], r0 + rows)
        block = numpy_helper.from_array(q[r0:r1], f"{qname}.rows{k}")  # (R, H)
        row_block(block, qname, r0)
        inits += [
            block,
            numpy_helper.from_array(scale[r0:r1].astype(np.float32), f"{sname}.rows{k}"),  # (R,)
            numpy_helper.from_array(np.zeros(r1 - r0, np.int8), f"{name}_zero.rows{k}"),  # (R,)
        ]
    inits += [
        numpy_helper.from_array(np.array([-1, q.shape[1]], np.int64), f"{name}_flat"),
        numpy_helper.from_array(np.array([0], np.int64), f"{name}_start"),
        numpy_helper.from_array(np.array([-1], np.int64), f"{name}_end"),
        numpy_helper.from_array(np.array([q.shape[0]], np.int64), f"{name}_vocab"),
    ]
    return inits


def _head(
    name: str, b: str, xq: str, xs: str, xz: str, out: str, shape: tuple[int, ...]
) -> list[onnx.NodeProto]:
    """`out` (..., V) = the uint8 activations `xq` (..., H) (scale `xs`, zero point `xz`: scalars)
    times the int8 table transposed, dequantized by the table's row scales: one QGemm per block of
    rows (`transB`: the block as stored, no transposed copy of the table at any time), the blocks'
    logits concatenated."""
    v = shape[0]
    rows = _block_rows(*shape)
    qname, sname = f"{name}_int8", f"{name}_row_scale"
    nodes = [
        _node("Reshape", [xq, f"{name}_flat"], f"{b}_xq2"),  # (N, H)
        _node("Shape", [xq], f"{b}_shape"),
        _node("Slice", [f"{b}_shape", f"{name}_start", f"{name}_end"], f"{b}_lead"),  # (...)
        _node("Concat", [f"{b}_lead", f"{name}_vocab"], f"{b}_out_shape", axis=0),  # (..., V)
    ]
    parts = []
    for k in range(-(-v // rows)):
        part = f"{b}_logits.rows{k}"  # (N, R)
        nodes.append(
            helper.make_node(
                "QGemm",
                [f"{b}_xq2", xs, xz, f"{qname}.rows{k}", f"{sname}.rows{k}", f"{name}_zero.rows{k}"],
                [part],
                name=f"{part}_qgemm",
                domain=MS_DOMAIN,
                transB=1,
            )
        )
        parts.append(part)
    nodes += [
        _node("Concat", parts, f"{b}_logits", axis=1),  # (N, V)
        _node("Reshape", [f"{b}_logits", f"{b}_out_shape"], out),  # (..., V)
    ]
    return nodes


def _tied_heads(
    graph: onnx.GraphProto,
    name: str,
    table: np.ndarray,
    users: list[onnx.NodeProto],
    inits: dict[str, onnx.TensorProto],
    producers: dict[str, onnx.NodeProto],
) -> list[onnx.NodeProto]:
    """MatMuls whose weight is the table transposed: through a Transpose of it, or a copy."""
    transposed = {
        n.output[0]
        for n in users
        if n.op_type == "Transpose" and [a.ints for a in n.attribute if a.name == "perm"] in ([[1, 0]], [])
    }
    heads = []
    for n in graph.node:
        if n.op_type != "MatMul":
            continue
        b = n.input[1]
        if b in transposed:
            heads.append(n)
        elif b in inits and list(inits[b].dims) == [table.shape[1], table.shape[0]]:
            w = numpy_helper.to_array(inits[b])
            if w.dtype == np.float32 and np.array_equal(w, table.T):
                heads.append(n)
    return heads


def _node(op: str, inputs: list[str], output: str, name: str | None = None, **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], name=name or f"{output}_node", **attrs)


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nobody reads, then initializers nobody reads."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def _toposort(graph: onnx.GraphProto) -> None:
    """Order nodes so that each comes after the producers of its inputs."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or an input nobody produces")
        done = {id(n) for n in ready}
        for n in ready:
            ordered.append(n)
            known.update(n.output)
        pending = [n for n in pending if id(n) not in done]
    del graph.node[:]
    graph.node.extend(ordered)
