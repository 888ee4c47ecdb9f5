"""bench/fused_quant.py's custom operators (issue 17's measurement of fusing per-token int8's
activation passes): built as the bench builds them, for this CPU's widest vector path, for AVX2
and for the compiler's default (scalar loops), their graphs must give outputs bit-identical to the per-token
graph's on rows that test the edges (zeros, outliers, a width not a multiple of the vectors), and
the rewrites must remove the stock nodes they claim to."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inbedder.quantize.pertoken import quantize_model_int8_invariant

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
fused_quant = pytest.importorskip("fused_quant")

_ORT = os.environ.get("ONNXRUNTIME_ROOT")  # where fused_quant.build looks first
HEADERS = (Path(_ORT) if _ORT else ROOT / ".cache" / "onnxruntime") / "include" / "onnxruntime_cxx_api.h"
pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None or not HEADERS.exists(),
    reason="needs g++ and onnxruntime's headers (scripts/install.sh)",
)
K, N = 40, 72  # 40: one 32-wide vector step and a scalar tail


def _layer(rng: np.random.Generator):
    """x -> LayerNorm -> MatMul + b -> Gelu -> MatMul + b -> + residual, and a bias-free MatMul:
    the shapes of a transformer layer's FFN with the per-token graph's three kinds of epilogue."""
    w1 = rng.normal(size=(K, N)).astype(np.float32) * 0.3
    w2 = rng.normal(size=(N, K)).astype(np.float32) * 0.3
    w3 = rng.normal(size=(K, 24)).astype(np.float32) * 0.3
    inits = {
        "g": np.ones(K, np.float32),
        "beta": np.zeros(K, np.float32),
        "w1": w1,
        "b1": rng.normal(size=N).astype(np.float32),
        "w2": w2,
        "b2": rng.normal(size=K).astype(np.float32),
        "w3": w3,
    }
    ms = "com.microsoft"
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "beta"], ["h"], axis=-1, name="ln"),
        helper.make_node("MatMul", ["h", "w1"], ["u0"], name="up"),
        helper.make_node("Add", ["b1", "u0"], ["u"], name="up_bias"),
        helper.make_node("Gelu", ["u"], ["a"], domain=ms, name="gelu"),
        helper.make_node("MatMul", ["a", "w2"], ["d0"], name="down"),
        helper.make_node("Add", ["d0", "b2"], ["d"], name="down_bias"),
        helper.make_node("Add", ["d", "x"], ["y"], name="residual"),
        helper.make_node("MatMul", ["h", "w3"], ["z"], name="side"),
    ]
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", K])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", K]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", "S", 24]),
        ],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    quantize_model_int8_invariant(model, reduce_range=False)
    return model


def _inputs(rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(3, 7, K)).astype(np.float32)
    x[0, 0] = 0.0  # LayerNorm keeps it zero: the floor scale
    x[1, 2, 5] = 300.0  # an outlier: the rest of its row rounds to few levels
    x[2, 4, ::2] = 1e-8  # half the row tiny: values on rounding ties are more likely
    return x


def _run(model, x: np.ndarray, lib: Path | None) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    if lib is not None:
        opts.register_custom_ops_library(str(lib))
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


X86 = platform.machine().lower() in {"x86_64", "amd64"}
MARCHES = [
    pytest.param("native", id="march-native"),  # AVX-512 where the CPU has it
    pytest.param("haswell", id="march-avx2", marks=pytest.mark.skipif(not X86, reason="x86 only")),
    pytest.param("", id="march-default"),  # no AVX: the scalar loops
]


@pytest.fixture(scope="module", params=MARCHES)
def library(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fused_quant.build(tmp_path_factory.mktemp("fused"), march=request.param)


@pytest.mark.parametrize("variant", list(fused_quant.VARIANTS))
def test_fused_graphs_are_bit_identical_to_the_per_token_graph(library: Path, variant: str):
    rng = np.random.default_rng(0)
    stock = _layer(rng)
    fused = _layer(np.random.default_rng(0))
    counts = [p(fused) for p in fused_quant.VARIANTS[variant]]
    ops = Counter(n.op_type for n in fused.graph.node)
    assert counts[0] == 2 and ops["RowQuantize"] == 2  # the LayerNorm output (shared), the GELU output
    assert not {"Abs", "ReduceMax", "Reciprocal", "QuantizeLinear"} & set(ops)
    if variant == "quant+scale":
        assert counts[1] == 3 and ops["RowScale"] == 3
        assert ops["Add"] == 0  # both bias Adds and the residual went into RowScale
    for seed in range(3):
        x = _inputs(np.random.default_rng(seed))
        want, got = _run(stock, x, None), _run(fused, x, library)
        for w, g in zip(want, got, strict=True):
            assert w.dtype == g.dtype and w.shape == g.shape
            np.testing.assert_array_equal(g, w)


def test_quantization_rewrite_refuses_a_foreign_rowq_group():
    model = _layer(np.random.default_rng(0))
    victim = next(n for n in model.graph.node if n.name.endswith(".rowq/inv"))
    victim.name = victim.name.replace("/inv", "/other")
    with pytest.raises(ValueError, match="not pertoken's row quantization"):
        fused_quant.fuse_quantization(model)
