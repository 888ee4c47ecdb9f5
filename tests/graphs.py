"""Structure checks of quantized graphs that more than one test module makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from inbedder.onnxfile import initializers as all_initializers
from inbedder.onnxfile import subgraphs


def all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes of `graph` and of its subgraphs: a quantized masked-LM graph keeps the nodes only
    its answers need in an If's branch (quantize/on_request.py)."""
    return [m for n in graph.node for m in (n, *(k for g in subgraphs(n) for k in all_nodes(g)))]


def _extent(t: onnx.TensorProto) -> tuple[int, int]:
    where = {e.key: int(e.value) for e in t.external_data if e.key in ("offset", "length")}
    return where["offset"], where["offset"] + where["length"]


def assert_tied_head_blocks(graph_file: Path, *, per_token: bool) -> int:
    """The int8 table's tied head (quantize/embedding.py): the table is read by its Gather only
    (no Transpose, so no transposed copy at session start), and by one QGemm per block of its
    rows, `transB`, each block stored inside the table's bytes, the blocks in order covering the
    table once, with the table's row scales; the activations' scale is per token (applied after
    the blocks' logits) or the DynamicQuantizeLinear's. Returns the number of blocks."""
    bare = onnx.load(graph_file, load_external_data=False)
    full = onnx.load(graph_file)
    inits = {t.name: t for t in all_initializers(bare.graph)}
    values = {t.name: t for t in all_initializers(full.graph)}
    tables = [
        n.input[0]
        for n in all_nodes(bare.graph)
        if n.op_type == "Gather" and n.input[0] in inits and inits[n.input[0]].data_type == TensorProto.INT8
    ]
    assert len(tables) == 1, tables
    table = tables[0]
    users = sorted(n.op_type for n in all_nodes(bare.graph) if table in n.input)
    assert users == ["Gather"], users
    q = numpy_helper.to_array(values[table])  # (V, H)
    scale = numpy_helper.to_array(values[table.removesuffix("_int8") + "_row_scale"])  # (V,)
    qgemms = [n for n in all_nodes(bare.graph) if n.op_type == "QGemm"]
    assert qgemms
    t0, t1 = _extent(inits[table])
    at, row = t0, 0
    producers = {o: n for n in all_nodes(bare.graph) for o in n.output}
    for n in qgemms:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs.get("transB") == 1 and n.domain == "com.microsoft"
        block = inits[n.input[3]]
        assert block.data_type == TensorProto.INT8 and block.dims[1] == q.shape[1]
        b0, b1 = _extent(block)
        assert (b0, b1) == (at, at + block.dims[0] * q.shape[1]), "a block outside its place in the table"
        rows = slice(row, row + block.dims[0])
        np.testing.assert_array_equal(numpy_helper.to_array(values[n.input[3]]), q[rows])
        np.testing.assert_array_equal(numpy_helper.to_array(values[n.input[4]]), scale[rows])
        at, row = b1, row + block.dims[0]
        a_scale = n.input[1]
        if per_token:
            assert numpy_helper.to_array(values[a_scale]) == 1.0  # the token scales come after
        else:
            assert producers[a_scale].op_type == "DynamicQuantizeLinear"
    assert (at, row) == (t1, q.shape[0])  # the blocks cover the table exactly
    return len(qgemms)
