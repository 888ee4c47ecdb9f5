"""A full-range int8 bundle (made on a CPU with VNNI) is refused on a CPU whose u8 x s8 kernels
saturate, instead of giving wrong vectors; 7-bit bundles, fp32 and CUDA are not affected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from evalsets import SMALL

from inbedder import DeviceError, Embedder
from inbedder.quantize import quantize_bundle
from inbedder.runtime import cpu
from inbedder.runtime.cpu import CpuFeatures, check_int8_range

AVX2 = CpuFeatures("x86_64", frozenset({"avx", "avx2", "fma"}))  # saturates
VNNI = CpuFeatures("x86_64", frozenset({"avx2", "avx512f", "avx512_vnni"}))
ARM = CpuFeatures("aarch64", frozenset({"asimd", "asimddp"}))


def _fake_cpu(mp: pytest.MonkeyPatch, features: CpuFeatures) -> None:
    """This process's CPU, for the runtime's check and the quantizer's choice of range."""
    from inbedder.quantize import core

    mp.setattr(cpu, "cpu_features", lambda cpuinfo="/proc/cpuinfo": features)
    mp.setattr(core, "cpu_features", lambda cpuinfo="/proc/cpuinfo": features)


def _options(reduce_range: object) -> dict:
    return {"quantization": {"reduce_range": reduce_range, "cpu": "x86_64: avx2, avx512_vnni"}}


def test_the_rule():
    with pytest.raises(DeviceError, match=r"m\.json: this int8 bundle has full-range.*x86_64: avx2\b"):
        check_int8_range(_options(False), "int8", "m.json", AVX2)
    with pytest.raises(DeviceError, match="int4 bundle"):  # int4's kept int8 MatMuls and tied head
        check_int8_range(_options(False), "int4", "m.json", AVX2)
    check_int8_range(_options(True), "int8", "m.json", AVX2)  # 7-bit weights: safe everywhere
    check_int8_range(_options(False), "int8", "m.json", VNNI)
    check_int8_range(_options(False), "int8", "m.json", ARM)
    check_int8_range({}, "int8", "m.json", AVX2)  # no recorded choice: not checked
    check_int8_range(_options(False), "fp32", "m.json", AVX2)
    check_int8_range(_options(False), "fp16", "m.json", AVX2)


@pytest.fixture(scope="module")
def full_range(masked_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-range per-token int8 bundle, as a machine with VNNI makes it."""
    out = tmp_path_factory.mktemp("fr") / "int8"
    with pytest.MonkeyPatch.context() as mp:
        _fake_cpu(mp, VNNI)
        m = quantize_bundle(masked_bundle, out, reduce_range=False, min_cosine=1e-6, **SMALL)
    assert m.options["quantization"]["reduce_range"] is False
    return out


def test_embedder_refuses_it_on_a_saturating_cpu(full_range: Path, monkeypatch):
    _fake_cpu(monkeypatch, AVX2)
    with pytest.raises(DeviceError, match=r"inbedder\.json: this int8 bundle has full-range"):
        Embedder(full_range)
    _fake_cpu(monkeypatch, VNNI)
    v = Embedder(full_range).encode(["hello"], instruction="What?")
    assert v.shape[0] == 1 and np.isfinite(v).all()


def test_cuda_is_not_checked(full_range: Path, monkeypatch):
    """The check is for MLAS's CPU kernels: a CUDA session gets past it (and here fails only for
    want of CUDA)."""
    _fake_cpu(monkeypatch, AVX2)
    from inbedder.runtime import session

    monkeypatch.setattr(session, "cuda_available", lambda: True)
    with pytest.raises(Exception) as e:
        Embedder(full_range, device="cuda")
    assert not isinstance(e.value, DeviceError) or "full-range" not in str(e.value)


def test_native_runtime_applies_the_same_rule(full_range: Path):
    """The C API on this machine's real CPU (no fake: the native probe reads /proc/cpuinfo as
    Python does): refused where the u8 x s8 kernels saturate, the same vectors as Python
    elsewhere."""
    from native import CApi, build_native

    api = CApi(build_native())
    if cpu.cpu_features().default_reduce_range():
        with pytest.raises(RuntimeError, match=r"inbedder\.json: this int8 bundle has full-range") as e:
            api.open(full_range)
        assert cpu.cpu_features().summary in str(e.value)  # the same CPU text as Python's
    else:
        api.close(api.open(full_range))


@pytest.fixture(scope="module")
def outliers_bundle(checkpoints, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inbedder.export import export_bundle

    out = tmp_path_factory.mktemp("outliers") / "fp32"
    export_bundle(str(checkpoints("roberta-mlm-outliers")), out, recipe="masked-answer")
    return out


def test_a_saturating_cpu_falls_back_to_uint8_weights(outliers_bundle: Path, tmp_path: Path, monkeypatch):
    """Where u8 x s8 kernels saturate the search tries 7-bit weights first, then the same
    full-range weights stored as uint8, which u8 x u8 kernels multiply exactly: they measure what
    full-range int8 weights measure on a CPU with VNNI, and the runtime runs them anywhere."""
    from inbedder.quantize.core import SELECTION_HEADROOM
    from native import CApi, build_native

    real_cpu_saturates = cpu.cpu_features().default_reduce_range()
    _fake_cpu(monkeypatch, AVX2)
    seven = quantize_bundle(outliers_bundle, tmp_path / "7", fallback=False, min_cosine=1e-6, **SMALL)
    c7 = seven.validation["calibration"]["min_cosine"]
    # 7-bit steps are twice 8-bit ones, so 7 bits lose ~4x as much (1 - cosine; 3.5x measured on
    # this model): a selection bound halfway from c7 to 1 rejects 7 bits and accepts 8. The
    # held-out part is the calibration part here, so the held-out check cannot be what decides.
    select = (c7 + 1.0) / 2
    build = build_native()  # with the row-ops graph too: bit-identical with uint8 weights
    m = quantize_bundle(
        outliers_bundle, tmp_path / "u8", min_cosine=1.0 - (1.0 - select) / SELECTION_HEADROOM,
        calibration=SMALL["calibration"], heldout=SMALL["calibration"],
        row_ops=build / "native" / "runtime" / "libinbedder_row_ops.so",
    )  # fmt: skip
    q = m.options["quantization"]
    tried = q["attempts"]
    assert [a["u8_weights"] for a in tried[:2]] == [False, True] and q["accepted_attempt"] == 1, tried
    assert tried[0]["calibration_min_cosine"] == pytest.approx(c7, abs=1e-6)
    assert q["reduce_range"] is True and q["u8_weights"] is True and "stored as uint8" in q["weights"]
    assert q["row_ops"]["graphs"]
    import onnx

    g = onnx.load(tmp_path / "u8" / "model.onnx", load_external_data=False).graph
    mms = [n for n in g.node if n.op_type == "MatMulIntegerToFloat"]
    types = {t.name: t.data_type for t in g.initializer}
    assert mms and {types[n.input[1]] for n in mms} == {onnx.TensorProto.UINT8}
    texts = ["hello there", "the cat sat on the mat"]
    got = Embedder(tmp_path / "u8").encode(texts, instruction="What?")  # on the AVX2 CPU: not refused
    if not real_cpu_saturates:
        # Full-range int8 weights, as a VNNI CPU quantizes and runs them (exact only on such a
        # CPU): the same figures and vectors as the uint8 ones.
        _fake_cpu(monkeypatch, VNNI)
        full = quantize_bundle(
            outliers_bundle, tmp_path / "8", reduce_range=False, fallback=False, min_cosine=1e-6, **SMALL
        )
        c8 = full.validation["calibration"]["min_cosine"]
        assert c7 < c8 and tried[1]["calibration_min_cosine"] == pytest.approx(c8, abs=1e-6)
        want = Embedder(tmp_path / "8").encode(texts, instruction="What?")
        np.testing.assert_allclose(got, want, atol=1e-5)
    # The native runtime opens it on this machine's real CPU, whatever it is, with Python's vectors.
    api = CApi(build)
    model = api.open(tmp_path / "u8")
    status, msg, r = api.encode(model, texts, ["What?"] * len(texts))
    assert status == "INBEDDER_OK", msg
    np.testing.assert_allclose(api.embeddings(r), got, atol=1e-5)
    api.free(r)
    api.close(model)


def test_a_tied_head_over_the_8bit_table_takes_7bit_activations(tmp_path: Path):
    """With `reduce_range` the word table keeps 8 bits (the encoder's lookup) and the per-token
    head quantizes its activations within 1..127 around 64 instead, which cannot saturate against
    8-bit rows: its logits are the numpy reference's on every CPU."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from inbedder.quantize.embedding import quantize_tables

    rng = np.random.default_rng(3)
    v, h = 300, 48
    table = rng.normal(size=(v, h)).astype(np.float32)
    table[:, 5] *= 40  # an outlier column: full-range rows
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),
        helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "table_t"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", h])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["B", "S", h]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "S", v])],
        [numpy_helper.from_array(table, "table")],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    record = quantize_tables(model, reduce_range=True, per_token=True)
    assert record["table"]["bits"] == 8 and record["table"]["head_activation_bits"] == 7
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = (rng.normal(size=(2, 3, h)) * rng.uniform(0.1, 30, size=(2, 3, 1))).astype(np.float32)
    ids = rng.integers(0, v, size=(2, 3))
    emb, got = sess.run(None, {"ids": ids, "x": x})

    rs = np.abs(table).max(axis=1) / 127  # (V,) 8-bit rows
    tq = np.clip(np.rint(table / rs[:, None]), -127, 127)
    np.testing.assert_allclose(emb, tq[ids] * rs[ids][..., None], rtol=1e-6)
    s = np.abs(x).max(-1, keepdims=True) / 63  # (B, S, 1) 7-bit activations
    xq = np.clip(np.rint(x * (1 / s)), -63, 63)
    want = (xq @ tq.T) * s * rs
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_the_dynamic_method_stores_uint8_weights_too(masked_bundle: Path, tmp_path: Path):
    """`quantize_dynamic` with `u8_weights`: full-range uint8 weights (QUInt8), `reduce_range`
    ignored; the graph runs and stays close to fp32."""
    import onnx
    import onnxruntime as ort

    from inbedder.quantize.convert import quantize_int8

    src = masked_bundle / "model.onnx"
    quantize_int8(src, tmp_path / "q.onnx", reduce_range=True, u8_weights=True, per_channel=True)
    g = onnx.load(tmp_path / "q.onnx", load_external_data=False).graph
    types = {t.name: t.data_type for t in g.initializer}
    weights = [n.input[1] for n in g.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert weights and {types.get(w) for w in weights} == {onnx.TensorProto.UINT8}
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    (feeds,) = Embedder(masked_bundle).pipeline.graph_feeds([("the cat sat", "What?")]).values()
    for f in feeds:  # each pass of the decode, as the runtime feeds the graph
        for a, b in zip(ref.run(None, dict(f)), got.run(None, dict(f)), strict=True):
            a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
            assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99
