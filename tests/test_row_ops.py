"""inbedder's row operators (native/runtime/src/row_ops.cpp) and the row-ops graphs that use them
(quantize/row_ops.py): bit-identical to the per-token int8 graph on rows that test the edges
(zeros, outliers, widths that are not a multiple of the vectors), on every instruction-set path
the kernels have; quantize writes a row-ops graph only when it is bit-identical; both runtimes
run it and give the stock graph's vectors and answers bit for bit.

About 60 s on a 2-core machine (the native build when it is not there yet, a tiny int8 bundle).
"""

from __future__ import annotations

import json
import platform
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from evalsets import SMALL
from onnx import TensorProto, helper, numpy_helper
from test_session_cache import _opened

from inbedder import Embedder, InputError, QuantizationRefused
from inbedder.cli import main
from inbedder.quantize import quantize_bundle
from inbedder.quantize import row_ops as row_ops_mod
from inbedder.quantize.pertoken import quantize_model_int8_invariant
from inbedder.runtime.bundle import BundleError, load_manifest
from native import CApi, build_native

K, N = 40, 72  # 40: one 32-wide vector step and a scalar tail; 72: a 64-wide step and a tail
TEXTS = ["I love cats!", "", "The flight from Paris was delayed by four hours.", "ok " * 200]
INSTRUCTION = "What is the emotion?"


@pytest.fixture(scope="module")
def build() -> Path:
    return build_native()


@pytest.fixture(scope="module")
def library(build: Path) -> Path:
    return build / "native" / "runtime" / "libinbedder_row_ops.so"


HEADS = 4  # attention over K = 40: heads of 10, narrower than any vector step


def _layer(rng: np.random.Generator):
    """x -> LayerNorm -> MatMul + b -> Gelu -> MatMul + b -> + residual, a bias-free MatMul and a
    self-attention with a key padding mask: a transformer layer with the per-token graph's four
    kinds of epilogue (the attention's: its QKV projection, Split, MultiHeadAttention)."""
    inits = {
        "wqkv": rng.normal(size=(K, 3 * K)).astype(np.float32) * 0.3,
        "bqkv": rng.normal(size=3 * K).astype(np.float32),
        "g": np.ones(K, np.float32),
        "beta": np.zeros(K, np.float32),
        "w1": rng.normal(size=(K, N)).astype(np.float32) * 0.3,
        "b1": rng.normal(size=N).astype(np.float32),
        "w2": rng.normal(size=(N, K)).astype(np.float32) * 0.3,
        "b2": rng.normal(size=K).astype(np.float32),
        "w3": rng.normal(size=(K, 24)).astype(np.float32) * 0.3,
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
        helper.make_node(
            "Attention", ["h", "wqkv", "bqkv", "mask"], ["att"], domain=ms, num_heads=HEADS, name="attention"
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "layer",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", K]),
            helper.make_tensor_value_info("mask", TensorProto.INT32, ["B", "S"]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", K]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", "S", 24]),
            helper.make_tensor_value_info("att", TensorProto.FLOAT, ["B", "S", K]),
        ],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)])
    quantize_model_int8_invariant(model, reduce_range=False)
    return model


def _inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    x = rng.normal(size=(3, 7, K)).astype(np.float32)
    x[0, 0] = 0.0  # LayerNorm keeps it zero: the floor scale
    x[1, 2, 5] = 300.0  # an outlier: the rest of its row rounds to few levels
    x[2, 4, ::2] = 1e-8  # half the row tiny: values on rounding ties are more likely
    mask = np.ones((3, 7), np.int32)
    mask[1, 5:] = 0  # padded keys
    return {"x": x, "mask": mask}


def _run(model, feed: dict[str, np.ndarray], lib: Path | None) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    if lib is not None:
        opts.register_custom_ops_library(str(lib))
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


X86 = platform.machine().lower() in {"x86_64", "amd64"}
ISAS = [
    pytest.param(None, id="widest"),  # AVX-512 where the CPU has it
    pytest.param("avx2", id="avx2", marks=pytest.mark.skipif(not X86, reason="x86 only")),
    pytest.param("scalar", id="scalar"),
]


@pytest.mark.parametrize("isa", ISAS)
def test_row_ops_graph_is_bit_identical_to_the_per_token_graph(library: Path, isa, monkeypatch):
    if isa is not None:
        monkeypatch.setenv("INBEDDER_ROW_OPS_ISA", isa)  # read when each kernel is created
    stock = _layer(np.random.default_rng(0))
    fused = _layer(np.random.default_rng(0))
    assert row_ops_mod.rewrite(fused) == {"RowQuantize": 2, "RowScale": 4, "attention": 1}
    ops = Counter(n.op_type for n in fused.graph.node)
    assert ops["RowQuantize"] == 2  # the LayerNorm output (shared by three MatMuls), the GELU output
    assert not {"Abs", "ReduceMax", "Reciprocal", "QuantizeLinear", "Split"} & set(ops)
    assert ops["Add"] == 0  # both bias Adds and the residual went into RowScale
    # the attention's RowScale writes Q, K, V (K, V as (B, N, S, H)) and adds their bias itself
    qkv = next(n for n in fused.graph.node if n.op_type == "RowScale" and len(n.output) == 3)
    attrs = {a.name: list(a.ints) for a in qkv.attribute}
    assert attrs == {"widths": [K, K, K], "heads": [0, HEADS, HEADS]} and len(qkv.input) == 3
    mha = next(n for n in fused.graph.node if n.op_type == "MultiHeadAttention")
    assert list(mha.input[:4]) == [*qkv.output, ""]
    for seed in range(3):
        feed = _inputs(np.random.default_rng(seed))
        want, got = _run(stock, feed, None), _run(fused, feed, library)
        for w, g in zip(want, got, strict=True):
            assert w.dtype == g.dtype and w.shape == g.shape
            np.testing.assert_array_equal(g, w)


def test_an_unknown_isa_cap_fails_the_session(library: Path, monkeypatch):
    """INBEDDER_ROW_OPS_ISA is read when each kernel is created: a value it does not know fails
    the session's creation with the operator's words, not silently the widest path."""
    monkeypatch.setenv("INBEDDER_ROW_OPS_ISA", "avx9")
    fused = _layer(np.random.default_rng(0))
    row_ops_mod.rewrite(fused)
    with pytest.raises(Exception, match="INBEDDER_ROW_OPS_ISA must be 'avx2', 'scalar' or unset, got 'avx9'"):
        _run(fused, _inputs(np.random.default_rng(0)), library)


def test_quantization_rewrite_refuses_a_foreign_rowq_group():
    model = _layer(np.random.default_rng(0))
    victim = next(n for n in model.graph.node if n.name.endswith(".rowq/inv"))
    victim.name = victim.name.replace("/inv", "/other")
    with pytest.raises(ValueError, match="not pertoken's row quantization"):
        row_ops_mod.fuse_quantization(model)


def test_a_row_ops_graph_with_bad_shapes_fails_with_the_operators_message(library: Path):
    """RowScale given a scale of the wrong shape: onnxruntime reports the operator's own words
    (a status, no exception through onnxruntime's C frames)."""
    nodes = [helper.make_node("RowScale", ["z", "s"], ["y"], domain=row_ops_mod.DOMAIN)]
    graph = helper.make_graph(
        nodes,
        "bad",
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [3, 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(row_ops_mod.DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(str(library))
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    z, s = np.ones((2, 3), np.float32), np.ones((3, 1), np.float32)
    with pytest.raises(Exception, match="RowScale: S must have Z's shape with a last axis of 1"):
        sess.run(None, {"z": z, "s": s})


@pytest.mark.parametrize(
    ("attrs", "outputs", "z_shape", "message"),
    [
        ({"widths": [2, 2]}, 2, [2, 3], "RowScale: widths must add up to Z's last axis"),
        ({"widths": [1, 2]}, 1, [2, 3], r"RowScale: one output per width \(one output without widths\)"),
        ({"widths": [2, 4], "heads": [0, 3]}, 2, [1, 2, 6], "RowScale: heads must be 0 or divide its width"),
        ({"widths": [3, 3], "heads": [0]}, 2, [1, 2, 6], "RowScale: heads needs one entry per width"),
        ({"widths": [3, 3], "heads": [0, 3]}, 2, [2, 6], r"RowScale: heads need a Z of shape \(B, S, N\)"),
        ({"widths": [3, 3], "residual": True}, 2, [2, 6], "RowScale: R cannot be given with widths"),
    ],
)
def test_row_scale_checks_its_split(library: Path, attrs, outputs, z_shape, message):
    """RowScale's `widths` / `heads` (an attention projection's Split) refuse what they cannot
    mean, at session creation or at run time, with the operator's words."""
    names = [f"y{j}" for j in range(outputs)]
    inputs = ["z", "s", "", "z"] if attrs.pop("residual", False) else ["z", "s"]
    nodes = [helper.make_node("RowScale", inputs, names, domain=row_ops_mod.DOMAIN, **attrs)]
    graph = helper.make_graph(
        nodes,
        "split",
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, z_shape),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [*z_shape[:-1], 1]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(row_ops_mod.DOMAIN, 1)]
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(str(library))
    z = np.ones(z_shape, np.float32)
    with pytest.raises(Exception, match=message):
        model = helper.make_model(graph, opset_imports=opsets)
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        sess.run(None, {"z": z, "s": np.ones([*z_shape[:-1], 1], np.float32)})


def test_row_scale_writes_heads_in_attention_layout(library: Path):
    """widths [2, 4] with heads [0, 2] on a (B, S, 6) Z: output 0 is (B, S, 2), output 1 the next
    four columns as (B, 2, S, 2), each z * s + bias; a residual without a bias is z * s + r."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(2, 3, 6)).astype(np.float32)
    s = rng.uniform(0.5, 2, size=(2, 3, 1)).astype(np.float32)
    bias = rng.normal(size=6).astype(np.float32)
    nodes = [
        helper.make_node(
            "RowScale", ["z", "s", "b"], ["q", "k"], domain=row_ops_mod.DOMAIN, widths=[2, 4], heads=[0, 2]
        ),
        helper.make_node("RowScale", ["z", "s", "", "z"], ["r"], domain=row_ops_mod.DOMAIN),  # no bias
    ]
    graph = helper.make_graph(
        nodes,
        "heads",
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3, 6]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 3, 1]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("q", "k", "r")],
        [numpy_helper.from_array(bias, "b")],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(row_ops_mod.DOMAIN, 1)]
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(str(library))
    model = helper.make_model(graph, opset_imports=opsets)
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    q, k, r = sess.run(None, {"z": z, "s": s})
    np.testing.assert_array_equal(r, z * s + z)
    y = z * s + bias  # (B, S, 6)
    np.testing.assert_array_equal(q, y[..., :2])
    np.testing.assert_array_equal(k, y[..., 2:].reshape(2, 3, 2, 2).transpose(0, 2, 1, 3))


# -- bundles with a row-ops graph ---------------------------------------------------------------
@pytest.fixture(scope="module")
def row_bundle(masked_bundle: Path, library: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("row-ops") / "int8"
    quantize_bundle(masked_bundle, out, **SMALL, row_ops=library)
    return out


@pytest.fixture(scope="module")
def stock_result(row_bundle: Path):
    return Embedder(row_bundle).encode(TEXTS, instruction=INSTRUCTION, return_answers=True)


def test_quantize_writes_a_small_row_ops_graph_it_checked(row_bundle: Path):
    m = load_manifest(row_bundle)
    g = m.graphs["encoder"]
    assert g.row_ops == "model.row_ops.onnx" and g.data
    assert g.row_ops in m.files and (row_bundle / g.row_ops).is_file()
    # structure only: the weights it does not hold inline are the stock graph's data file's
    assert m.files[g.row_ops]["bytes"] <= m.files[g.file]["bytes"] * 1.05
    model = onnx.load(str(row_bundle / g.row_ops), load_external_data=False)
    places = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert places == {g.data}
    rec = m.options["quantization"]["row_ops"]
    assert rec["library"] == "libinbedder_row_ops.so"
    made = rec["graphs"]["encoder"]
    assert made["file"] == g.row_ops and made["ops"]["RowQuantize"] > 0 and made["ops"]["RowScale"] > 0
    mhas = [n for n in model.graph.node if n.op_type == "MultiHeadAttention"]
    assert made["ops"]["attention"] == len(mhas) > 0  # every layer's Q, K, V come from a RowScale
    assert all(n.input[3] == "" for n in mhas) and not any(n.op_type == "Split" for n in model.graph.node)
    assert made["bit_identical_passes"] == len(SMALL["calibration"]) + len(SMALL["heldout"])


def test_python_runtime_runs_the_row_ops_graph_bit_identically(
    row_bundle, library, stock_result, monkeypatch
):
    seen = _opened(monkeypatch)
    vecs, answers = Embedder(row_bundle, row_ops=library).encode(
        TEXTS, instruction=INSTRUCTION, return_answers=True
    )
    assert seen == [row_bundle / "model.row_ops.onnx"]
    assert np.array_equal(vecs, stock_result[0]) and answers == stock_result[1]
    seen.clear()
    Embedder(row_bundle)  # without the library: the stock graph
    assert seen == [row_bundle / "model.onnx"]


def test_native_runtime_runs_the_row_ops_graph_bit_identically(build, row_bundle, stock_result, tmp_path):
    from test_native_runtime import run_native

    got = run_native(build, row_bundle, tmp_path / "rows", TEXTS, [INSTRUCTION] * len(TEXTS), True)
    stock = run_native(
        build, row_bundle, tmp_path / "stock", TEXTS, [INSTRUCTION] * len(TEXTS), True, "--no-row-ops"
    )
    for vecs, answers in (got, stock):
        assert np.array_equal(vecs, stock_result[0]) and answers == stock_result[1]


def test_native_open_option_row_ops(build, row_bundle, stock_result):
    api = CApi(build)
    for value in (0, 1):
        model = api.open(row_bundle, row_ops=value)
        try:
            status, msg, result = api.encode(model, TEXTS, [INSTRUCTION] * len(TEXTS))
            assert status == "INBEDDER_OK", msg
            assert np.array_equal(api.embeddings(result), stock_result[0])
            api.free(result)
        finally:
            api.close(model)
    with pytest.raises(RuntimeError) as e:
        api.open(row_bundle, row_ops=2)
    assert str(e.value) == (
        "INBEDDER_ERR_INVALID_ARGUMENT: row_ops must be 1 (the default: a graph's row-ops form when "
        "the bundle has one) or 0 (the stock graph), got 2"
    )


def test_session_cache_keeps_the_row_ops_graph_apart(row_bundle, library, stock_result, tmp_path):
    cache = tmp_path / "cache"
    Embedder(row_bundle, session_cache=cache)
    Embedder(row_bundle, session_cache=cache, row_ops=library)
    entries = sorted(p for p in cache.iterdir() if not p.name.startswith("."))
    assert len(entries) == 2
    keyed = {frozenset(json.loads((e / "entry.json").read_text())["key"]["graph"]) for e in entries}
    assert keyed == {
        frozenset({"model.onnx", "model.onnx.data"}),
        frozenset({"model.row_ops.onnx", "model.onnx.data"}),
    }
    vecs, answers = Embedder(row_bundle, session_cache=cache, row_ops=library).encode(
        TEXTS, instruction=INSTRUCTION, return_answers=True
    )
    assert np.array_equal(vecs, stock_result[0]) and answers == stock_result[1]


def test_quantize_refuses_a_row_ops_graph_that_differs(masked_bundle, library, tmp_path, monkeypatch):
    real = row_ops_mod.rewrite

    def off_by_one_shift(model):  # RowQuantize without the GELU shift: not the stock arithmetic
        counts = real(model)
        for n in model.graph.node:
            if n.op_type == "RowQuantize":
                for a in n.attribute:
                    if a.name == "shifted":
                        a.i = 1 - a.i
        return counts

    monkeypatch.setattr(row_ops_mod, "rewrite", off_by_one_shift)
    out = tmp_path / "int8"
    with pytest.raises(
        QuantizationRefused, match=r"row-ops graph model\.row_ops\.onnx differs from model\.onnx"
    ):
        quantize_bundle(masked_bundle, out, **SMALL, row_ops=library)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging left either


def test_row_ops_arguments_are_checked(masked_bundle, row_bundle, library, tmp_path):
    with pytest.raises(InputError, match="row_ops needs per-token int8"):
        quantize_bundle(masked_bundle, tmp_path / "a", precision="fp16", row_ops=library)
    with pytest.raises(InputError, match="row_ops needs per-token int8"):
        quantize_bundle(masked_bundle, tmp_path / "b", int8_method="dynamic", row_ops=library)
    with pytest.raises(InputError, match="is not a file"):
        quantize_bundle(masked_bundle, tmp_path / "c", row_ops=tmp_path / "missing.so")
    with pytest.raises(InputError, match="row_ops must be a path"):
        Embedder(row_bundle, row_ops=3)  # type: ignore[arg-type]  # the wrong type on purpose
    not_a_library = tmp_path / "x.so"
    not_a_library.write_bytes(b"not an ELF file")
    with pytest.raises(InputError, match=r"x\.so is not an operator library onnxruntime can load"):
        Embedder(row_bundle, row_ops=not_a_library)
    assert not any(p.name in "abc" for p in tmp_path.iterdir())


def test_a_row_ops_graph_without_a_checksum_is_refused_by_both_runtimes(build, row_bundle, tmp_path):
    import shutil

    from test_native_runtime import run_native

    bad = tmp_path / "bad"
    shutil.copytree(row_bundle, bad)
    doc = json.loads((bad / "inbedder.json").read_text())
    del doc["files"]["model.row_ops.onnx"]
    (bad / "inbedder.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"'model\.row_ops\.onnx' is used but has no checksum entry"):
        Embedder(bad)
    code, err = run_native(build, bad, tmp_path / "n", ["x"], ["y"], False)
    assert code != 0 and "'model.row_ops.onnx' is used but has no checksum entry" in err


def test_cli_quantize_row_ops(masked_bundle, library, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["quantize", str(masked_bundle), str(out), "--row-ops", str(library), "--answers-on-request"]
    argv += ["--calibration", str(tmp_path / "cal.jsonl"), "--heldout", str(tmp_path / "held.jsonl")]
    for name, pairs in (("cal", SMALL["calibration"]), ("held", SMALL["heldout"])):
        with open(tmp_path / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for text, instruction in pairs:
                f.write(json.dumps({"text": text, "instruction": instruction}) + "\n")
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "row-ops graphs: model.row_ops.onnx (encoder; " in printed and "bit-identical on" in printed
    assert "answers on request: " in printed and " nodes of encoder behind want_answers (" in printed
    m = load_manifest(out)
    g = m.graphs["encoder"]
    assert g.row_ops == "model.row_ops.onnx" and "want_answers" in g.inputs


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli_embed_row_ops(row_bundle, library, stock_result, tmp_path, capsys, workers):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(t for t in TEXTS if t) + "\n", encoding="utf-8")
    argv = ["embed", "-m", str(row_bundle), "-i", INSTRUCTION, str(src), "--workers", workers]
    assert main([*argv, "-o", str(tmp_path / "rows.npy"), "--row-ops", str(library)]) == 0
    assert main([*argv, "-o", str(tmp_path / "stock.npy")]) == 0
    rows, stock = np.load(tmp_path / "rows.npy"), np.load(tmp_path / "stock.npy")
    assert np.array_equal(rows, stock)
    assert np.array_equal(rows, stock_result[0][[i for i, t in enumerate(TEXTS) if t]])
    bogus = tmp_path / "bogus.so"  # the same vectors either way: a bad library shows it reaches Embedder
    bogus.write_bytes(b"not a library")
    capsys.readouterr()
    assert main([*argv, "-o", str(tmp_path / "bad.npy"), "--row-ops", str(bogus)]) != 0
    assert "bogus.so is not an operator library onnxruntime can load" in capsys.readouterr().err
    assert not (tmp_path / "bad.npy").exists()
