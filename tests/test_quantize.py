"""int8 / fp16 bundles: graph structure, the fidelity gate, manifest figures, real-weight fidelity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from evalsets import CAL, HELD, SMALL, TEXTS, alone_vs_batched  # slices of the built-in set: see evalsets.py
from graphs import all_initializers, all_nodes, assert_tied_head_blocks

from inbedder import Embedder, load_manifest
from inbedder.cli import main
from inbedder.quantize import QuantizationRefused, cpu_features, quantize_bundle
from inbedder.runtime.bundle import MANIFEST_NAME
from inbedder.runtime.samples import calibration_pairs, heldout_pairs


@pytest.fixture(scope="module")
def int8_bundle(masked_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """onnxruntime's dynamic int8 (the structure tests below are its; per-token int8, the default,
    has tests/test_quantize_pertoken.py)."""
    out = tmp_path_factory.mktemp("q") / "int8"
    quantize_bundle(masked_bundle, out, precision="int8", int8_method="dynamic", **SMALL)
    return out


def _graph(bundle: Path) -> onnx.ModelProto:
    return onnx.load(bundle / "model.onnx")


def test_int8_structure(int8_bundle: Path, masked_bundle: Path):
    g = _graph(int8_bundle)
    ops = [n.op_type for n in all_nodes(g.graph)]
    inits = {i.name: i for i in all_initializers(g.graph)}
    # Fusions applied before quantization: attention and GELU; residual + layer norm and the FFN
    # bias stay unfused on CPU (CPU_SKIPPED_FUSIONS): embeddings + 2 per layer + the LM head's.
    assert ops.count("QAttention") == 2 and "Attention" not in ops
    assert ops.count("LayerNormalization") == 6 and "Gelu" in ops
    assert "SkipLayerNormalization" not in ops and "BiasGelu" not in ops
    # Every weight MatMul became int8 (output, FFN in/out per layer, the LM head's dense): 2 x 3 + 1
    # = 7; the vocabulary projection at the slots is the tied head over the int8 table (QGemms).
    assert ops.count("MatMulInteger") == 7
    assert_tied_head_blocks(int8_bundle / "model.onnx", per_token=False)
    for n in all_nodes(g.graph):
        if n.op_type == "MatMul":  # what stays fp32 must be activation x activation
            assert n.input[1] not in inits, f"{n.name} has a constant fp32 weight"
        if n.op_type == "MatMulInteger":
            assert inits[n.input[1]].data_type == onnx.TensorProto.INT8
    # The token-embedding table is stored once, as 8-bit rows with one scale each, dequantized
    # after the lookup; the tied LM head reads the same int8 table (in blocks of its rows).
    tables = [
        i
        for i in inits.values()
        if "word_embeddings" in i.name and len(i.dims) == 2 and ".rows" not in i.name
    ]  # the table, not the blocks of its rows the tied head reads (stored inside it)
    assert [(t.data_type, t.name.endswith("_int8")) for t in tables] == [(onnx.TensorProto.INT8, True)]
    scale = inits[tables[0].name.replace("_int8", "_row_scale")]
    assert list(scale.dims) == [tables[0].dims[0]]  # (V,): per row
    users = [n.op_type for n in all_nodes(g.graph) if tables[0].name in n.input]
    assert sorted(users) == ["Gather"]
    q = load_manifest(int8_bundle).options["quantization"]["graphs"]["encoder"]["embedding_tables"]
    assert q[tables[0].name.removesuffix("_int8")]["tied_heads"]

    def graph_bytes(bundle: Path) -> int:
        m = load_manifest(bundle)
        return sum(int(r["bytes"]) for name, r in m.files.items() if name != m.tokenizer_file)

    assert graph_bytes(int8_bundle) < 0.6 * graph_bytes(masked_bundle)


def test_int8_manifest_figures_written_and_reloaded(int8_bundle: Path, masked_bundle: Path):
    m = load_manifest(int8_bundle)
    raw = json.loads((int8_bundle / MANIFEST_NAME).read_text())
    assert m.precision == "int8" == raw["precision"]
    v = m.validation
    assert v["passed"] and v["bound"] == 0.99 and v["gated_on"] == "held-out"
    for part, pairs in (("heldout", HELD), ("calibration", CAL)):
        p = v[part]
        assert p["texts"] == len(pairs) and p["source"] == "user"
        assert p["min_cosine"] <= p["p1_cosine"] <= p["mean_cosine"] <= 1.0 + 1e-6
        assert p["answers_agree"] is not None and 0 <= p["answers_agree"] <= p["texts"]
        assert p["answer_agreement"] == p["answers_agree"] / p["texts"]
    assert v["min_cosine"] == v["heldout"]["min_cosine"] >= 0.99  # the gated figure on top
    q = m.options["quantization"]
    assert q["reduce_range"] == cpu_features().default_reduce_range() and q["reduce_range_source"] == "auto"
    assert q["cpu"] and q["matmul_const_b_only"] is True
    assert q["source_validation"] == load_manifest(masked_bundle).validation
    assert q["graphs"]["encoder"]["fusions"]["Attention"] == 2
    # The accepted attempt is in the attempts list, marked, with its calibration figures.
    accepted = [a for a in q["attempts"] if a["accepted"]]
    assert accepted == [q["attempts"][q["accepted_attempt"]]]
    assert accepted[0]["calibration_min_cosine"] == round(v["calibration"]["min_cosine"], 6)
    assert accepted[0]["calibration_min_cosine"] >= q["selection_bound"] == pytest.approx(0.995)
    # The figures are the runtime's: recompute both parts' minimum cosine.
    for part, pairs in (("heldout", HELD), ("calibration", CAL)):
        a = Embedder(masked_bundle).encode([t for t, _ in pairs], [i for _, i in pairs])
        b = Embedder(int8_bundle).encode([t for t, _ in pairs], [i for _, i in pairs])
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert abs(float(cos.min()) - v[part]["min_cosine"]) < 1e-6
        assert abs(float(np.percentile(cos, 1)) - v[part]["p1_cosine"]) < 1e-6


def test_gate_refuses_a_broken_quantization(masked_bundle: Path, tmp_path: Path, monkeypatch):
    """A quantizer that scrambles the 8-bit token-embedding table is caught; nothing is written.

    (Random tiny models are dominated by their embeddings: corrupting a layer's weights barely
    moves their output, corrupting the table they all read does.)
    """
    from inbedder.quantize import core

    real = core.quantize_int8

    def broken(src: Path, dst: Path, **kw):
        ops = real(src, dst, **kw)
        model = onnx.load(dst)
        table = next(i for i in model.graph.initializer if "word_embeddings" in i.name and len(i.dims) == 2)
        w = onnx.numpy_helper.to_array(table)
        table.CopyFrom(onnx.numpy_helper.from_array(w[::-1].copy(), table.name))  # rows reversed
        onnx.save(model, dst)
        return ops

    monkeypatch.setattr(core, "quantize_int8", broken)
    out = tmp_path / "int8"
    with pytest.raises(
        QuantizationRefused, match=r"int8 bundle refused: held-out \(user, \d+ texts\): min cosine 0\."
    ):
        quantize_bundle(masked_bundle, out, int8_method="dynamic", **SMALL)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _longest(bundle: Path, pairs: list[tuple[str, str]]) -> int:
    """The longest token sequence the runtime feeds the encoder for these pairs."""
    return max(f["input_ids"].shape[1] for f in Embedder(bundle).pipeline.graph_feeds(pairs)["encoder"])


def test_gate_refuses_when_heldout_fails_though_calibration_passes(masked_bundle: Path, tmp_path: Path):
    """A quantizer that breaks only the position embeddings past every calibration sequence:
    calibration (short texts) is untouched and accepts the first attempt; the held-out part (with
    a long text, whose answer slots sit at those positions) refuses it."""
    from inbedder.quantize import core

    calibration = [(t, i) for t, i in CAL if len(t) < 60 and t.isascii()]
    heldout = [*HELD[:4], ("The long story goes on and on. " * 60, "What is the topic?")]
    unseen = slice(_longest(masked_bundle, calibration) + 2, None)  # +2: roberta's position offset
    real = core.DYNAMIC_INT8.convert

    def convert(src: Path, dst: Path, setting, feeds):
        model = onnx.load(src)
        table = next(i for i in model.graph.initializer if "position_embeddings" in i.name)
        w = onnx.numpy_helper.to_array(table).copy()  # (positions, H)
        w[unseen] = np.random.default_rng(0).standard_normal(w[unseen].shape) * np.abs(w).max()
        table.CopyFrom(onnx.numpy_helper.from_array(w, table.name))
        broken = dst.with_name("broken.onnx")
        onnx.save(model, broken)
        return real(broken, dst, setting, feeds)

    method = core.dataclasses.replace(core.DYNAMIC_INT8, convert=convert)
    out = tmp_path / "int8"
    with pytest.raises(QuantizationRefused) as e:
        quantize_bundle(masked_bundle, out, calibration=calibration, heldout=heldout, int8_method=method)
    msg = str(e.value)
    assert "worst held-out text 'The long story" in msg
    cal_min = float(msg.split("calibration (user")[1].split("min cosine ")[1].split(",")[0])
    held_min = float(msg.split("held-out (user")[1].split("min cosine ")[1].split(",")[0])
    assert cal_min >= 0.995 > 0.99 > held_min  # calibration accepted it; held-out did not
    assert "'accepted': True" in msg and msg.count("'attempt':") == 1  # no search past a passing one
    assert not out.exists()


def test_search_never_accepts_a_worse_setting_after_a_better_one(
    masked_bundle: Path, tmp_path: Path, monkeypatch
):
    """With scripted calibration figures that no attempt lifts to the selection bound, the whole
    ladder is walked and the best attempt (the earliest of equals) is the one written, even when
    later ones are worse; with one reaching the bound, the search stops there."""
    from inbedder.quantize import core

    real = core.measure
    script: list[float] = []

    def scripted(reference, candidate, part, source, bound):
        f = real(reference, candidate, part, source, bound)
        if part == "calibration":
            f = core.dataclasses.replace(f, min_cosine=script[len(seen)])
            seen.append(f.min_cosine)
        return f

    monkeypatch.setattr(core, "measure", scripted)
    seen: list[float] = []
    script[:] = [0.990, 0.994, 0.993, 0.994, 0.991, 0.9, 0.9, 0.9, 0.9, 0.9]
    m = quantize_bundle(
        masked_bundle, tmp_path / "a", int8_method="dynamic", **SMALL
    )  # its ladder: per-tensor first
    q = m.options["quantization"]
    assert len(q["attempts"]) == len(seen) >= 4  # walked to the end of the ladder
    assert q["accepted_attempt"] == 1 and [a["accepted"] for a in q["attempts"]].count(True) == 1
    assert q["graphs"]["encoder"]["kept_fp32_nodes"] == [] and "per-channel" in q["weights"]
    assert m.validation["calibration"]["min_cosine"] == 0.994
    assert "best calibration" in q["selection"]

    seen.clear()
    script[:] = [0.990, 0.996, 0.999]
    m = quantize_bundle(masked_bundle, tmp_path / "b", int8_method="dynamic", **SMALL)
    q = m.options["quantization"]
    assert q["accepted_attempt"] == 1 and len(q["attempts"]) == 2 and len(seen) == 2


def test_choose_attempt_rules():
    from inbedder.quantize.gate import best_attempt, choose_attempt

    assert choose_attempt([0.98, 0.99, 0.996, 0.999], 0.995) == 2
    assert choose_attempt([0.98, float("nan")], 0.995) is None
    assert best_attempt([0.98, 0.993, 0.991, 0.993]) == 1  # a later equal is not preferred
    assert best_attempt([float("nan"), 0.5]) == 1
    with pytest.raises(ValueError, match="no attempts"):
        best_attempt([])


def test_gate_bound_is_applied(masked_bundle: Path, tmp_path: Path):
    # Dynamic int8: per-token int8 of this tiny model on one short text can come out within
    # float32 rounding of cosine 1.0, which meets the bound.
    with pytest.raises(QuantizationRefused, match=r"bound 1\.0"):
        quantize_bundle(
            masked_bundle,
            tmp_path / "x",
            min_cosine=1.0,
            calibration=[("x", "q")] * 2,
            heldout=HELD,
            int8_method="dynamic",  # per-token can round to cosine 1.0 on one short text
        )
    with pytest.raises(ValueError, match="min_cosine"):
        quantize_bundle(masked_bundle, tmp_path / "x", min_cosine=1.5)
    with pytest.raises(ValueError, match="precision"):
        quantize_bundle(masked_bundle, tmp_path / "x", precision="int2")


def test_only_fp32_sources(int8_bundle: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="quantize from an fp32 bundle"):
        quantize_bundle(int8_bundle, tmp_path / "again")


@pytest.mark.parametrize(
    ("machine", "flags", "reduce"),
    [
        ("x86_64", "fpu avx avx2 fma", True),  # AVX2 without VNNI: u8 x s8 sums can saturate
        ("x86_64", "avx2 avx512f avx512_vnni", False),
        ("x86_64", "avx2 avx_vnni", False),
        ("aarch64", "fp asimd asimddp", False),
    ],
)
def test_reduce_range_follows_the_isa(tmp_path: Path, monkeypatch, machine: str, flags: str, reduce: bool):
    import platform

    info = tmp_path / "cpuinfo"
    key = "Features" if machine == "aarch64" else "flags"
    info.write_text(f"processor\t: 0\n{key}\t\t: {flags}\n")
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert cpu_features(info).default_reduce_range() is reduce


def test_explicit_reduce_range_is_recorded(masked_bundle: Path, tmp_path: Path):
    m = quantize_bundle(
        masked_bundle, tmp_path / "rr", reduce_range=True, calibration=[("hello", "What?")], heldout=HELD
    )
    q = m.options["quantization"]
    assert q["reduce_range"] is True and q["reduce_range_source"] == "user"
    assert m.validation["calibration"]["source"] == "user" and m.validation["calibration"]["texts"] == 1


def test_fp16_bundle(masked_bundle: Path, tmp_path: Path):
    m = quantize_bundle(masked_bundle, tmp_path / "fp16", precision="fp16", **SMALL)
    g = _graph(tmp_path / "fp16")
    inits = [i for i in g.graph.initializer if len(i.dims) == 2]
    assert inits and all(i.data_type == onnx.TensorProto.FLOAT16 for i in inits if i.dims[0] > 4)
    # Inputs and outputs keep their declared types: the runtime feeds and reads the same arrays.
    outs = {o.name: o.type.tensor_type.elem_type for o in g.graph.output}
    assert outs["slot_states"] == onnx.TensorProto.FLOAT and outs["answer_ids"] == onnx.TensorProto.INT64
    assert m.precision == "fp16" and m.validation["min_cosine"] >= 0.99
    v = Embedder(tmp_path / "fp16").encode(["I love cats!", "x" * 2000], "What?")
    assert np.isfinite(v).all()
    # Nodes whose fp32 outputs leave the fp16 range were measured and kept in fp32.
    assert "kept_fp32_nodes" in m.options["quantization"]["graphs"]["encoder"]


def test_export_with_precision_and_cli_quantize(tiny_roberta_dir: Path, tmp_path: Path, capsys):
    assert main(["export", str(tiny_roberta_dir), str(tmp_path / "b"), "--precision", "int8"]) == 0
    out = capsys.readouterr().out
    # The built-in evaluation set, both parts (the one tiny-model quantize here that runs it all).
    assert "int8 bundle; fidelity vs fp32 (bound 0.99 on held-out min):" in out
    assert "held-out (built-in, 896 texts): min cosine" in out and "calibration (built-in, 305 texts)" in out
    assert "accepted attempt 1 of 1: per-channel weights, 0 MatMuls kept fp32" in out
    assert load_manifest(tmp_path / "b").precision == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary leftovers

    assert main(["export", str(tiny_roberta_dir), str(tmp_path / "f")]) == 0
    cal = tmp_path / "cal.jsonl"
    cal.write_text('{"text": "I love cats", "instruction": "What animal?"}\n{"text": "Paris"}\n')
    held = tmp_path / "held.txt"
    held.write_text("".join(t.replace("\n", " ") + "\n" for t, _ in HELD if t.strip()))
    n_held = sum(1 for t, _ in HELD if t.strip())
    args = ["--calibration", str(cal), "--heldout", str(held)]
    rc = main(["quantize", str(tmp_path / "f"), str(tmp_path / "q"), *args])
    out = capsys.readouterr().out
    assert rc == 0 and "calibration (user, 2 texts)" in out and f"held-out (user, {n_held} texts)" in out
    rc = main(["quantize", str(tmp_path / "f"), str(tmp_path / "q2"), "--min-cosine", "1.0", *args])
    assert rc == 2 and "refused" in capsys.readouterr().err and not (tmp_path / "q2").exists()
    with pytest.raises(SystemExit, match="nope: no such held-out file"):
        main(["quantize", str(tmp_path / "f"), str(tmp_path / "q3"), "--heldout", str(tmp_path / "nope")])
    assert not (tmp_path / "q3").exists()


def _bundle_bytes(bundle: Path) -> int:
    return sum(int(r["bytes"]) for r in load_manifest(bundle).files.values())


@pytest.fixture(scope="module")
def minilm_int8(
    tmp_path_factory: pytest.TempPathFactory, checkpoints, minilm_fp32: Path
) -> tuple[Path, Path, Path]:
    """all-MiniLM-L6-v2's real weights (MLM head seeded, tied to the table): the fp32 export and
    its int8 bundle with every default, the full built-in evaluation set included."""
    int8 = tmp_path_factory.mktemp("minilm-q") / "int8"
    quantize_bundle(minilm_fp32, int8)
    return checkpoints("minilm-mlm"), minilm_fp32, int8


@pytest.mark.slow
def test_int8_fidelity_on_real_weights(minilm_int8: tuple[Path, Path, Path]):
    """The issue's targets on texts the gate never chose with: held-out min cosine >= 0.99 and
    1st percentile >= 0.995, with the default settings; the fp32 bundle stores its tied weight once."""
    ckpt, fp32, int8 = minilm_int8
    m = load_manifest(int8)
    v, q = m.validation, m.options["quantization"]
    h = v["heldout"]
    print(f"MiniLM int8 vs fp32: held-out {h}; calibration {v['calibration']}; attempts {q['attempts']}")
    assert h["source"] == "built-in" and h["texts"] == len(heldout_pairs())
    assert v["calibration"]["texts"] == len(calibration_pairs())
    assert h["min_cosine"] >= 0.99 and h["p1_cosine"] >= 0.995, h
    assert q["attempts"][q["accepted_attempt"]]["accepted"] is True
    # fp32: within 2% of the checkpoint's distinct weights (safetensors stores a tied one once),
    # the tokenizer and the graph included.
    distinct = (ckpt / "model.safetensors").stat().st_size
    assert _bundle_bytes(fp32) <= 1.02 * distinct, (_bundle_bytes(fp32), distinct)
    g = onnx.load(fp32 / "model.onnx", load_external_data=False)
    tables = [i for i in g.graph.initializer if tuple(i.dims) in {(30522, 384), (384, 30522)}]
    assert len(tables) == 1  # the tied embedding / decoder weight, once
    # int8: the table is 8-bit with per-row scales, shared with the head.
    gq = onnx.load(int8 / "model.onnx", load_external_data=False)
    tables = [
        (i.data_type, tuple(i.dims)) for i in gq.graph.initializer if len(i.dims) == 2 and 30522 in i.dims
    ]
    assert tables == [(onnx.TensorProto.INT8, (30522, 384))]  # once: no fp32 table, no separate head
    scales = [i for i in gq.graph.initializer if i.name.endswith("_row_scale")]
    assert [tuple(i.dims) for i in scales if 30522 in i.dims] == [(30522,)]


@pytest.mark.slow
def test_int8_bundle_size_on_real_weights(minilm_int8: tuple[Path, Path, Path]):
    """Also where u8 x s8 kernels saturate: there MiniLM's 7-bit weights miss the bound (0.984 at
    attempt 0) and the search goes on with the 8-bit ones stored as uint8, not by keeping MatMuls
    fp32 (8 of them, 38.9 MB > 0.30 x fp32, before it had that rung)."""
    _, fp32, int8 = minilm_int8
    print(f"MiniLM bundles: int8 {_bundle_bytes(int8)} B, fp32 {_bundle_bytes(fp32)} B")
    assert _bundle_bytes(int8) <= 0.30 * _bundle_bytes(fp32)
    q = load_manifest(int8).options["quantization"]
    kept = q["graphs"]["encoder"]["kept_fp32_nodes"]
    assert len(kept) <= 3  # nearly every weight MatMul is int8
    if cpu_features().default_reduce_range():
        assert q["attempts"][q["accepted_attempt"]]["u8_weights"] is True


@pytest.mark.slow
def test_real_weights_vectors_do_not_depend_on_the_batch(minilm_int8: tuple[Path, Path, Path]):
    """The default (per-token) int8: a vector alone and inside batches of extreme neighbours."""
    texts = [*TEXTS, *(t for t, _ in heldout_pairs()[::150])]
    assert alone_vs_batched(Embedder(minilm_int8[2]), texts) <= 1e-5


def test_cpu_sessions_keep_layer_norm_and_gelu_unfused(int8_bundle: Path, tmp_path: Path):
    """onnxruntime would fuse the CPU graph's Add + LayerNormalization and Add + Gelu back into
    its slower SkipLayerNormalization / BiasGelu at session time; the runtime's disabled
    optimizers stop that."""
    import onnxruntime as ort

    from inbedder.runtime.bundle import load_manifest as read

    def session_ops(disabled: list[str]) -> list[str]:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(
            str(int8_bundle / "model.onnx"), opts, providers=["CPUExecutionProvider"],
            disabled_optimizers=disabled,
        )  # fmt: skip
        nodes = all_nodes(onnx.load(tmp_path / "optimized.onnx", load_external_data=False).graph)
        made_by = {o: n.op_type for n in nodes for o in n.output}
        # each Gelu's producer, to see that the FFN bias went into the MatMul before it
        gelu_inputs = [f"Gelu<-{made_by[n.input[0]]}" for n in nodes if n.op_type == "Gelu"]
        return [n.op_type for n in nodes] + gelu_inputs

    assert "SkipLayerNormalization" in session_ops([])
    disabled = read(int8_bundle).graphs["encoder"].cpu_disabled_optimizers
    assert set(disabled) == {"SkipLayerNormFusion", "BiasGeluFusion"}  # the manifest carries them
    ours = session_ops(list(disabled))
    assert "SkipLayerNormalization" not in ours and "BiasGelu" not in ours
    assert ours.count("LayerNormalization") == 6 and "Gelu" in ours
    # The int8 MatMuls still fuse, each FFN bias folded into its DynamicQuantizeMatMul (7: the
    # vocabulary projection is the tied head's QGemms).
    assert (
        ours.count("DynamicQuantizeMatMul") == 7
        and "QGemm" in ours
        and ours.count("Gelu<-DynamicQuantizeMatMul") == 3
    )
