"""Per-token int8 (quantize/pertoken.py): its numerics against numpy, the graph it writes, batch
invariance with extreme neighbours (tiny and real-weight bundles) and held-out fidelity on real
weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from evalsets import TEXTS, alone_vs_batched
from graphs import all_initializers, all_nodes, assert_tied_head_blocks
from onnx import TensorProto, helper, numpy_helper

from inbedder import Embedder, load_manifest
from inbedder.quantize import cpu_features, quantize_bundle
from inbedder.quantize.pertoken import GELU_SHIFT, quantize_int8_invariant

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


# -- numerics on a one-MatMul graph ----------------------------------------------------------------


def _matmul_graph(path: Path, k: int, n: int, gelu: bool, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    w = rng.normal(size=(k, n)).astype(np.float32) * 0.1
    b = rng.normal(size=n).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["h", "w"], ["y0"], name="mm"),
        helper.make_node("Add", ["y0", "b"], ["y"]),
    ]
    if gelu:
        nodes.insert(0, helper.make_node("Gelu", ["x"], ["h"], name="gelu", domain="com.microsoft"))
    else:
        nodes.insert(0, helper.make_node("Identity", ["x"], ["h"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", n])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.save(model, path)
    return w, b


@pytest.mark.parametrize("gelu", [False, True], ids=["symmetric", "gelu-shifted"])
@pytest.mark.parametrize("u8_weights", [False, True], ids=["int8-weights", "uint8-weights"])
def test_rows_match_a_numpy_reference(tmp_path: Path, gelu: bool, u8_weights: bool):
    """Each row: its own scale (max |x| / 127, or for a GELU output max(x + shift) / 255), round
    half to even, int8 per-column weights (7-bit on a CPU that needs it; full range as uint8
    around 128 with `u8_weights`, on every CPU), the bias added unscaled."""
    rng = np.random.default_rng(0)
    k, n = 64, 48
    w, b = _matmul_graph(tmp_path / "f.onnx", k, n, gelu, rng)
    # Full-range int8 weights only where this CPU's u8 x s8 kernels do not saturate (`cpu.py`);
    # uint8 ones take the u8 x u8 kernels, which do not saturate anywhere.
    reduce = cpu_features().default_reduce_range() and not u8_weights
    ops = quantize_int8_invariant(
        tmp_path / "f.onnx", tmp_path / "q.onnx", reduce_range=reduce, u8_weights=u8_weights
    )
    assert ops["MatMulIntegerToFloat"] == 1 and "MatMul" not in ops
    model = onnx.load(tmp_path / "q.onnx")
    mm = next(x for x in model.graph.node if x.op_type == "MatMulIntegerToFloat")
    inits = {t.name: t for t in model.graph.initializer}
    want_type = onnx.TensorProto.UINT8 if u8_weights else onnx.TensorProto.INT8
    assert inits[mm.input[1]].data_type == want_type and len(mm.input) == (6 if u8_weights else 5)
    x = rng.normal(size=(3, 5, k)).astype(np.float32) * rng.uniform(0.01, 20, size=(3, 5, 1)).astype(
        np.float32
    )
    x[1, 2] = 0.0  # an all-zero row
    sess = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})[0]  # (3, 5, n)

    qmax = 63 if reduce else 127
    ws = np.abs(w).max(axis=0) / qmax
    wq = np.clip(np.rint(w / ws), -qmax, qmax)
    if gelu:
        from math import erf, sqrt

        h = x * 0.5 * (1 + np.vectorize(erf)(x / sqrt(2)))
        pos = h + GELU_SHIFT
        s = np.maximum(pos.max(-1, keepdims=True) / 255, 1e-30)
        q = np.clip(np.rint(pos * (1 / s)), 0, 255)
        want = (q @ wq) * s * ws - GELU_SHIFT * (wq * ws).sum(0) + b
    else:
        h = x
        s = np.maximum(np.abs(x).max(-1, keepdims=True) / 127, 1e-30)
        q = np.clip(np.rint(x * (1 / s)), -127, 127)
        want = (q @ wq) * s * ws + b
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-5 * scale
    assert np.abs(got - (h @ w + b)).max() <= 2e-2 * scale  # and close to fp32
    # One row alone gives the same bits as inside the batch.
    for i, j in ((0, 0), (2, 4), (1, 2)):
        assert np.array_equal(sess.run(None, {"x": x[i : i + 1, j : j + 1]})[0][0, 0], got[i, j])


def test_unsupported_attention_stays_fp32(tmp_path: Path):
    """A causal Attention (unidirectional) has no MultiHeadAttention form: it is left as it is."""
    d, heads = 16, 2
    rng = np.random.default_rng(1)
    attn = helper.make_node(
        "Attention",
        ["x", "w", "b"],
        ["y"],
        name="attn",
        domain="com.microsoft",
        num_heads=heads,
        unidirectional=1,
    )
    graph = helper.make_graph(
        [attn],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(rng.normal(size=(d, 3 * d)).astype(np.float32), "w"),
            numpy_helper.from_array(np.zeros(3 * d, np.float32), "b"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.save(model, tmp_path / "a.onnx")
    ops = quantize_int8_invariant(tmp_path / "a.onnx", tmp_path / "q.onnx", reduce_range=False)
    assert ops == {"Attention": 1}


# -- tiny bundle -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pertoken_bundle(masked_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pt") / "int8"
    quantize_bundle(masked_bundle, out)  # the default int8 method
    return out


def test_structure(pertoken_bundle: Path):
    g = onnx.load(pertoken_bundle / "model.onnx")
    ops = [n.op_type for n in all_nodes(g.graph)]
    inits = {i.name: i for i in all_initializers(g.graph)}
    # No operator that quantizes over the whole batch.
    assert not {"QAttention", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulInteger"} & set(ops)
    # Every weight MatMul (2 layers x output, FFN in, FFN out; the LM head's dense) and both QKV
    # projections are int8; the attention cores are MultiHeadAttention; the vocabulary projection
    # is the tied head over the int8 table (below).
    assert ops.count("MatMulIntegerToFloat") == 9 and ops.count("MultiHeadAttention") == 2
    assert "Attention" not in ops
    for n in all_nodes(g.graph):
        if n.op_type == "MatMul":
            assert n.input[1] not in inits, f"{n.name} has a constant fp32 weight"
        if n.op_type == "MatMulIntegerToFloat":
            w, ws = inits[n.input[1]], inits[n.input[3]]
            assert w.data_type == TensorProto.INT8 and list(ws.dims) == [w.dims[1]]  # per channel
            assert n.input[2] not in inits  # the activation scale is computed per token
    assert_tied_head_blocks(pertoken_bundle / "model.onnx", per_token=True)
    q = load_manifest(pertoken_bundle).options["quantization"]
    assert q["method"].startswith("per-token")


def test_tiny_vectors_do_not_depend_on_the_batch(pertoken_bundle: Path):
    assert alone_vs_batched(Embedder(pertoken_bundle), TEXTS) <= 1e-5


def test_dynamic_int8_depends_on_the_batch(masked_bundle: Path, tmp_path: Path):
    """The check above can fail: onnxruntime's dynamic int8 (one scale per batch, the CLI's
    `--int8-method dynamic`) does."""
    from inbedder.cli import main

    assert main(["quantize", str(masked_bundle), str(tmp_path / "dyn"), "--int8-method", "dynamic"]) == 0
    q = load_manifest(tmp_path / "dyn").options["quantization"]
    assert q["method"] == "onnxruntime.quantization.quantize_dynamic"
    assert alone_vs_batched(Embedder(tmp_path / "dyn"), TEXTS) > 1e-4


def test_unknown_method_is_refused(masked_bundle: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="int8_method"):
        quantize_bundle(masked_bundle, tmp_path / "x", int8_method="static")
