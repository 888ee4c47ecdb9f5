"""The bundle's graph layout: weights in one data file, large tensors at mmap-aligned offsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from inbedder.onnxfile import ALIGNMENT, data_name, row_block, save_graph


def _model(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    w = rng.standard_normal((256, 1024)).astype(np.float32)  # 1 MiB: aligned
    w2 = rng.standard_normal((1024, 3)).astype(np.float32)  # 12 KiB: packed after it
    b = rng.standard_normal(1024).astype(np.float32)  # 4 KiB
    two = np.array(2.0, dtype=np.float32)  # 4 bytes: stays in the graph
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["hb"]),
        helper.make_node("MatMul", ["hb", "w2"], ["y0"]),
        helper.make_node("Mul", ["y0", "two"], ["y"]),
    ]
    inits = {"b": b, "w": w, "w2": w2, "two": two}  # b first: w must be padded to its offset
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), inits


def test_weights_go_to_one_aligned_file_and_run(tmp_path: Path):
    model, inits = _model(np.random.default_rng(0))
    path = tmp_path / "model.onnx"
    assert save_graph(model, path) == data_name("model.onnx") == "model.onnx.data"
    saved = onnx.load(path, load_external_data=False)
    where = {
        t.name: {e.key: e.value for e in t.external_data}
        for t in saved.graph.initializer
        if t.data_location == TensorProto.EXTERNAL
    }
    assert set(where) == {"b", "w", "w2"}  # the scalar stays inline
    assert int(where["w"]["offset"]) % ALIGNMENT == 0 and int(where["w"]["offset"]) > 0
    assert int(where["w2"]["offset"]) == int(where["w"]["offset"]) + inits["w"].nbytes  # no padding
    size = (tmp_path / "model.onnx.data").stat().st_size
    loaded = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    for name, value in inits.items():
        np.testing.assert_array_equal(loaded[name], value)
    x = np.random.default_rng(1).standard_normal((5, 256)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = ((x @ inits["w"] + inits["b"]) @ inits["w2"]) * 2
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-3)
    # Saving again over the same path rewrites the data file rather than appending to it.
    save_graph(onnx.load(path), path)
    assert (tmp_path / "model.onnx.data").stat().st_size == size


def test_graph_without_large_tensors_has_no_data_file(tmp_path: Path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    c = numpy_helper.from_array(np.ones(2, np.float32), "c")
    graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "g", [x], [y], [c])
    path = tmp_path / "small.onnx"
    assert save_graph(helper.make_model(graph), path) is None
    assert not (tmp_path / "small.onnx.data").exists()


def _tied_model(table: np.ndarray) -> onnx.ModelProto:
    """An embedding lookup and a head tied to it, stored as an exporter's constant folding leaves
    them: the table (V, H) for the Gather, a transposed copy (H, V) for the MatMul, and an
    identical copy (V, H) for a second Gather."""
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"]),  # (B, S, H)
        helper.make_node("MatMul", ["e", "table_t"], ["logits"]),  # (B, S, V)
        helper.make_node("Gather", ["table_copy", "ids"], ["e2"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", table.shape[0]]),
            helper.make_tensor_value_info("e2", TensorProto.FLOAT, ["b", "s", table.shape[1]]),
        ],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.ascontiguousarray(table.T), "table_t"),
            numpy_helper.from_array(table.copy(), "table_copy"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_tied_weight_is_stored_once_and_gives_identical_outputs(tmp_path: Path):
    table = np.random.default_rng(1).standard_normal((2048, 192)).astype(np.float32)  # 1.5 MiB
    ids = np.array([[0, 5, 2047, 17]], dtype=np.int64)
    want = ort.InferenceSession(_tied_model(table).SerializeToString()).run(None, {"ids": ids})

    path = tmp_path / "model.onnx"
    save_graph(_tied_model(table), path)
    data = tmp_path / data_name("model.onnx")
    assert table.nbytes <= data.stat().st_size < table.nbytes + ALIGNMENT  # once, not three times
    stored = onnx.load(path, load_external_data=False)
    assert "table_t" not in {i.name for i in stored.graph.initializer}
    assert [n.op_type for n in stored.graph.node if "table_t" in n.output] == ["Transpose"]
    got = ort.InferenceSession(str(path)).run(None, {"ids": ids})
    for a, b in zip(want, got, strict=True):
        assert np.array_equal(a, b)  # bit for bit: a transpose and a shared offset change no value


def _blocks_model(table: np.ndarray, rows: int, damage: bool = False) -> onnx.ModelProto:
    """A lookup in `table` and a Gemm over each block of `rows` rows of it (marked `row_block`);
    with `damage`, the second block's bytes differ from the table's."""
    v, h = table.shape
    inits = [numpy_helper.from_array(table, "table")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["looked_up"])]
    parts = []
    for k, r0 in enumerate(range(0, v, rows)):
        rows_k = table[r0 : r0 + rows].copy()
        if damage and k == 1:
            rows_k[0, 0] += 1.0
        block = numpy_helper.from_array(rows_k, f"table.rows{k}")
        row_block(block, "table", r0)
        inits.append(block)
        nodes.append(helper.make_node("Gemm", ["x", f"table.rows{k}"], [f"y{k}"], transB=1))
        parts.append(f"y{k}")
    nodes.append(helper.make_node("Concat", parts, ["y"], axis=1))
    graph = helper.make_graph(
        nodes,
        "blocks",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, h]),
        ],
        [
            helper.make_tensor_value_info("looked_up", TensorProto.FLOAT, [None, h]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, v]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _extents(path: Path) -> dict[str, tuple[int, int]]:
    stored = onnx.load(path, load_external_data=False)
    out = {}
    for t in stored.graph.initializer:
        where = {e.key: int(e.value) for e in t.external_data if e.key in ("offset", "length")}
        out[t.name] = (where["offset"], where["offset"] + where["length"])
    return out


def test_row_blocks_are_stored_inside_their_table_and_survive_a_resave(tmp_path: Path):
    rng = np.random.default_rng(2)
    table = rng.standard_normal((1024, 256)).astype(np.float32)  # 1 MiB, rows of 1 KiB
    rows = ALIGNMENT // (256 * 4)  # 64 rows: each block at an aligned offset inside the table
    ids = np.array([0, 63, 64, 1023], dtype=np.int64)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    want = ort.InferenceSession(_blocks_model(table, rows).SerializeToString()).run(
        None, {"ids": ids, "x": x}
    )
    path = tmp_path / "model.onnx"
    save_graph(_blocks_model(table, rows), path)
    data = tmp_path / data_name("model.onnx")
    assert table.nbytes <= data.stat().st_size < table.nbytes + ALIGNMENT  # the table once, no blocks
    ext = _extents(path)
    t0 = ext["table"][0]
    for k in range(1024 // rows):
        b0, b1 = ext[f"table.rows{k}"]
        assert (b0, b1) == (t0 + k * rows * 1024, t0 + (k + 1) * rows * 1024)
        assert b0 % ALIGNMENT == 0
    got = ort.InferenceSession(str(path)).run(None, {"ids": ids, "x": x})
    for a, b in zip(want, got, strict=True):
        assert np.array_equal(a, b)
    # A pass that reloads the graph and saves it again (as quantization does) keeps the sharing.
    save_graph(onnx.load(path), path)
    assert _extents(path) == ext and data.stat().st_size < table.nbytes + ALIGNMENT


def test_a_row_block_whose_bytes_differ_is_stored_on_its_own(tmp_path: Path):
    table = np.random.default_rng(3).standard_normal((1024, 256)).astype(np.float32)
    path = tmp_path / "model.onnx"
    save_graph(_blocks_model(table, 64, damage=True), path)
    ext = _extents(path)
    t0, t1 = ext["table"]
    b0 = ext["table.rows1"][0]
    assert not (t0 <= b0 < t1)  # not read from the table: its own bytes, after it
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    assert stored["table.rows1"][0, 0] == table[64, 0] + 1.0
    assert np.array_equal(stored["table.rows2"], table[128:192])
