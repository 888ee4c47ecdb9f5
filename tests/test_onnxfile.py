"""The bundle's graph layout: weights in one data file, large tensors at mmap-aligned offsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from inbedder.onnxfile import ALIGNMENT, data_name, save_graph


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
