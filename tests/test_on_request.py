"""Answer outputs on request (quantize/on_request.py): the nodes only a masked-LM graph's answers
need sit behind an If on the graph input `want_answers`; quantize gates a graph only when it is
bit-identical with the input 1 (and in its vectors with 0); both runtimes feed 1 exactly on the
passes that need the answers and give the ungated graph's vectors and answers bit for bit.

About 30 s on a 2-core machine (tiny int8 bundles; the native build when it is not there yet).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from evalsets import SMALL
from onnx import TensorProto, helper, numpy_helper

from inbedder import Embedder, InputError, QuantizationRefused
from inbedder.quantize import on_request, quantize_bundle
from inbedder.runtime.bundle import load_manifest
from inbedder.runtime.pipeline import WANT_ANSWERS
from native import build_native

TEXTS = ["I love cats!", "", "The flight from Paris was delayed by four hours.", "ok " * 200]
INSTRUCTION = "What is the emotion?"


def _head_graph() -> onnx.ModelProto:
    """x -> MatMul -> states; states -> MatMul -> (ArgMax ids, ReduceMax best): a graph whose
    answer outputs need a projection the states do not."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 6)).astype(np.float32), "w")
    head = numpy_helper.from_array(rng.normal(size=(6, 9)).astype(np.float32), "head")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["states"], name="body"),
        helper.make_node("MatMul", ["states", "head"], ["logits"], name="head"),
        helper.make_node("ArgMax", ["logits"], ["ids"], axis=-1, keepdims=0, name="ids"),
        helper.make_node("ReduceMax", ["logits"], ["best"], axes=[-1], keepdims=0, name="best"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 4])],
        [
            helper.make_tensor_value_info("states", TensorProto.FLOAT, ["B", "S", 6]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"]),
            helper.make_tensor_value_info("best", TensorProto.FLOAT, ["B", "S"]),
        ],
        [w, head],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def test_gate_outputs_computes_them_only_on_request():
    x = np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32)
    want = _run(_head_graph(), {"x": x})
    model = _head_graph()
    assert on_request.gate_outputs(model, ["ids", "best"]) == 3  # head, ArgMax, ReduceMax
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Cast", "If"]
    assert model.graph.input[-1].name == WANT_ANSWERS
    # the branch reads its weights from the outer graph (its own, onnxruntime kept a heap copy)
    branch = next(a.g for a in model.graph.node[-1].attribute if a.name == "then_branch")
    assert [t.name for t in model.graph.initializer] == ["w", "head"] and not branch.initializer
    onnx.checker.check_model(model, full_check=True)
    on = _run(model, {"x": x, WANT_ANSWERS: np.array([1], np.int64)})
    for w, g in zip(want, on, strict=True):
        assert w.dtype == g.dtype
        np.testing.assert_array_equal(g, w)
    states, ids, best = _run(model, {"x": x, WANT_ANSWERS: np.array([0], np.int64)})
    np.testing.assert_array_equal(states, want[0])
    assert ids.shape == (0, 0) and ids.dtype == np.int64 and best.shape == (0, 0) and best.dtype == np.float32


def test_gate_outputs_sorts_what_it_moves():
    """A graph listed out of order (fp16's converter appends its Casts): onnxruntime sorts a graph
    itself, not an If's branch; the moved nodes are put in order."""
    model = _head_graph()
    nodes = list(model.graph.node)
    model.graph.ClearField("node")
    model.graph.node.extend([nodes[0], nodes[2], nodes[3], nodes[1]])  # the head MatMul last
    x = np.random.default_rng(2).normal(size=(1, 2, 4)).astype(np.float32)
    want = _run(_head_graph(), {"x": x})
    assert on_request.gate_outputs(model, ["ids", "best"]) == 3
    got = _run(model, {"x": x, WANT_ANSWERS: np.array([1], np.int64)})
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g, w)


def test_gate_outputs_leaves_what_the_kept_outputs_need():
    model = _head_graph()
    with pytest.raises(ValueError, match="not all graph outputs"):
        on_request.gate_outputs(model, ["logits"])
    assert on_request.gate_outputs(model, ["states"]) == 0  # its node feeds the answers too
    model.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "S", 9]))
    assert on_request.gate_outputs(model, ["ids", "best"]) == 2  # the projection is kept now
    assert len(model.graph.node) == 4 and onnx.checker.check_model(model) is None
    assert sorted(t.name for t in model.graph.initializer) == ["head", "w"]


# -- bundles --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gated_bundle(masked_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("on-request") / "int8"
    quantize_bundle(masked_bundle, out, **SMALL, answers_on_request=True)
    return out


@pytest.fixture(scope="module")
def plain_bundle(masked_bundle, tmp_path_factory):
    """The same int8 bundle without the gate (the default)."""
    out = tmp_path_factory.mktemp("plain") / "int8"
    quantize_bundle(masked_bundle, out, **SMALL)
    return out


def test_quantize_gates_the_answers_it_checked(gated_bundle, plain_bundle):
    m, plain = load_manifest(gated_bundle), load_manifest(plain_bundle)
    g = m.graphs["encoder"]
    assert g.inputs == (*plain.graphs["encoder"].inputs, WANT_ANSWERS)
    assert (
        WANT_ANSWERS not in plain.graphs["encoder"].inputs
        and "on_request" not in plain.options["quantization"]
    )
    rec = m.options["quantization"]["on_request"]
    made = rec["graphs"]["encoder"]
    assert rec["input"] == WANT_ANSWERS and made["outputs"] == ["answer_ids", "answer_logprobs"]
    assert made["nodes"] > 5  # the LM head: its transform, the tied projection, argmax, log-softmax
    assert made["bit_identical_passes"] == len(SMALL["calibration"]) + len(SMALL["heldout"])
    assert m.validation == plain.validation  # the gate measured the same graph


def _feeds(monkeypatch) -> list[int]:
    """The want_answers value of every graph pass the Python runtime makes from now on."""
    from inbedder.runtime.pipeline import Pipeline

    seen: list[int] = []
    real = Pipeline.feed

    def spy(self, role, arrays):
        feed = real(self, role, arrays)
        if WANT_ANSWERS in feed:
            seen.append(int(feed[WANT_ANSWERS][0]))
        return feed

    monkeypatch.setattr(Pipeline, "feed", spy)
    return seen


@pytest.mark.parametrize("steps", [1, 3])
def test_python_runtime_asks_for_answers_only_when_needed(gated_bundle, plain_bundle, steps, monkeypatch):
    want_vecs, want_answers = Embedder(plain_bundle).encode(
        TEXTS, instruction=INSTRUCTION, return_answers=True, decode_steps=steps
    )
    seen = _feeds(monkeypatch)
    emb = Embedder(gated_bundle)
    vecs, answers = emb.encode(TEXTS, instruction=INSTRUCTION, return_answers=True, decode_steps=steps)
    assert np.array_equal(vecs, want_vecs) and answers == want_answers
    assert seen and set(seen) == {1}
    seen.clear()
    alone = emb.encode(TEXTS, instruction=INSTRUCTION, decode_steps=steps, batch_size=len(TEXTS))
    assert np.array_equal(alone, want_vecs)
    assert seen == [1] * (steps - 1) + [0]  # the passes that choose slots need the answers


def test_native_runtime_gives_the_ungated_results(gated_bundle, plain_bundle, tmp_path):
    from test_native_runtime import run_native

    build = build_native()
    ins = [INSTRUCTION] * len(TEXTS)
    want = run_native(build, plain_bundle, tmp_path / "plain", TEXTS, ins, True, "--decode-steps", "2")
    for answers in (True, False):
        got = run_native(
            build, gated_bundle, tmp_path / str(answers), TEXTS, ins, answers, "--decode-steps", "2"
        )
        assert np.array_equal(got[0], want[0])
        if answers:
            assert got[1] == want[1]


def test_quantize_refuses_a_gate_that_changes_the_answers(masked_bundle, tmp_path, monkeypatch):
    real = on_request.gate_outputs

    def inverted(model, gated, flag=WANT_ANSWERS):  # computes the answers when *not* asked
        moved = real(model, gated, flag)
        cast = next(n for n in model.graph.node if n.op_type == "Cast" and n.input[0] == flag)
        not_node = helper.make_node("Not", [cast.output[0]], [f"{flag}/not"])
        model.graph.node.insert(list(model.graph.node).index(cast) + 1, not_node)
        next(n for n in model.graph.node if n.op_type == "If").input[0] = f"{flag}/not"
        return moved

    monkeypatch.setattr(on_request, "gate_outputs", inverted)
    out = tmp_path / "int8"
    with pytest.raises(QuantizationRefused, match=r"model\.onnx \(encoder\) with its outputs .* differs"):
        quantize_bundle(masked_bundle, out, **SMALL, answers_on_request=True)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_answers_on_request_must_be_a_bool(masked_bundle, tmp_path):
    with pytest.raises(InputError, match="answers_on_request must be True or False, got 'yes'"):
        quantize_bundle(masked_bundle, tmp_path / "x", answers_on_request="yes")  # type: ignore[arg-type]  # on purpose
    assert not (tmp_path / "x").exists()
