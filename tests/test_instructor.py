"""INSTRUCTOR: T5 encoder, mean over the text tokens only, Dense, L2 — runtime vs references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from evalsets import SMALL  # slices of the built-in set: see evalsets.py

from inbedder import Embedder, load_manifest

TEXTS = [
    "The flight from Paris was delayed by four hours.",
    "I love cats!",
    "Interest rates rose again and mortgage applications dropped.",
    "ok",
    "She finally got the job she had dreamed about for years. " * 3,
]
INSTRUCTIONS = [
    "Represent the sentence for retrieval: ",
    "Represent the science title:",
    "Represent the financial news sentence for classifying its topic: ",
    "Represent it:",
    "Represent the story for clustering by emotion: ",
]


@pytest.fixture(scope="module")
def instructor_dir(checkpoints) -> Path:
    return checkpoints("t5-instructor")


@pytest.fixture(scope="module")
def instructor_bundle(instructor_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inbedder.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "instructor"
    export_bundle(str(instructor_dir), out)  # recipe detected from the sentence-transformers layout
    return out


@torch.no_grad()
def reference(ckpt: Path, texts: list[str], instructions: list[str]) -> np.ndarray:
    """Recipe `instructor`, written out here with transformers."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(ckpt)
    model = T5EncoderModel.from_pretrained(ckpt).eval()
    dense = load_file(str(ckpt / "2_Dense" / "model.safetensors"))["linear.weight"]
    out = []
    for t, i in zip(texts, instructions, strict=True):
        enc = tok((i + t).strip(), truncation=True, max_length=512, return_tensors="pt")
        h = model(**enc).last_hidden_state[0]  # (T, H)
        k = len(tok(i.strip())["input_ids"]) - 1  # the instruction's tokens, without its </s>
        m = enc["attention_mask"][0].clone()
        m[:k] = 0
        pooled = (h * m[:, None]).sum(0) / max(float(m.sum()), 1e-9)
        out.append(torch.nn.functional.normalize(dense @ pooled, dim=0))
    return torch.stack(out).numpy()


def test_matches_the_recipe(instructor_bundle: Path, instructor_dir: Path):
    emb = Embedder(instructor_bundle)
    got = emb.encode(TEXTS, INSTRUCTIONS)
    assert got.shape == (len(TEXTS), 24) and got.dtype == np.float32  # the Dense applied: 32 -> 24
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, reference(instructor_dir, TEXTS, INSTRUCTIONS), atol=1e-5, rtol=0)


def test_mixed_instruction_lengths_in_one_batch_match_each_alone(instructor_bundle: Path):
    emb = Embedder(instructor_bundle)
    together = emb.encode(TEXTS, INSTRUCTIONS, batch_size=32)
    starts = {e.pool_start for e in emb.pipeline.tokenize(TEXTS, INSTRUCTIONS, "input")}
    assert len(starts) >= 3  # the batch really mixes different numbers of excluded tokens
    for n, (t, i) in enumerate(zip(TEXTS, INSTRUCTIONS, strict=True)):
        np.testing.assert_allclose(emb.encode([t], i)[0], together[n], atol=1e-5, rtol=0)


def test_pool_start_is_a_runtime_input(instructor_bundle: Path):
    """The excluded instruction is data: the same graph pools everything when fed pool_start = 0."""
    emb = Embedder(instructor_bundle)
    enc = emb.pipeline.tokenize(["I love cats!"], ["Represent the science title:"], "input")
    assert enc[0].pool_start == emb.pipeline.prompts.token_count("Represent the science title:") - 1 > 0
    arrays = emb.pipeline.pad(enc)
    excluded = emb.pipeline.run("encoder", arrays)["embedding"]
    arrays["pool_start"][:] = 0
    everything = emb.pipeline.run("encoder", arrays)["embedding"]
    assert np.abs(excluded - everything).max() > 1e-3


def test_manifest(instructor_bundle: Path):
    m = load_manifest(instructor_bundle)
    assert m.family == "instructor" and m.recipe == "instructor" and m.embedding_dim == 24
    assert m.postprocess == ("l2",) and m.prompt.strip and m.prompt.answer_slots == 0
    assert m.graphs["encoder"].inputs == ("input_ids", "attention_mask", "pool_start")
    assert m.pooling["pool_start"] == {"count": "instruction", "strip": True, "offset": -1}
    assert m.graphs["encoder"].fusion == "t5"
    assert m.validation["passed"] and m.validation["answers_equal"] is None


def test_no_answers(instructor_bundle: Path):
    emb = Embedder(instructor_bundle)
    with pytest.raises(ValueError, match="embeds texts without answering"):
        emb.encode(["x"], "Represent it:", return_answers=True)


def test_empty_instruction_and_empty_text(instructor_bundle: Path, instructor_dir: Path):
    emb = Embedder(instructor_bundle)
    got = emb.encode(["I love cats!"], "")
    np.testing.assert_allclose(got, reference(instructor_dir, ["I love cats!"], [""]), atol=1e-5)
    # An empty text leaves only the closing </s> to pool, as in the reference.
    v = emb.encode([""], "Represent the sentence:")
    assert (
        emb.pipeline.tokenize([""], ["Represent the sentence:"], "input")[0].pool_start
        == len(emb.pipeline.tokenize([""], ["Represent the sentence:"], "input")[0].ids) - 1
    )
    np.testing.assert_allclose(v, reference(instructor_dir, [""], ["Represent the sentence:"]), atol=1e-5)


def test_sentence_transformers_agrees(instructor_bundle: Path, instructor_dir: Path):
    """A second reference: sentence-transformers with include_prompt=False."""
    st = pytest.importorskip("sentence_transformers")
    try:
        model = st.SentenceTransformer(str(instructor_dir), device="cpu")
    except Exception as e:
        pytest.skip(f"sentence-transformers cannot load the tiny model offline: {e}")
    emb = Embedder(instructor_bundle)
    # sentence-transformers prepends the prompt as given (no strip) and counts its tokens the same
    # way (minus the closing </s>): with no outer whitespace the two procedures coincide.
    texts = [" I love cats!", " The flight was delayed."]
    instr = "Represent the sentence:"
    want = np.stack([model.encode(t, prompt=instr, normalize_embeddings=True) for t in texts])
    np.testing.assert_allclose(emb.encode(texts, instr), want, atol=1e-5, rtol=0)


def test_int8_through_the_gate(instructor_bundle: Path, tmp_path: Path):
    from inbedder.quantize import quantize_bundle

    m = quantize_bundle(instructor_bundle, tmp_path / "int8", **SMALL)
    v = m.validation
    assert m.precision == "int8" and v["passed"] and v["answers_agree"] is None
    print(f"INSTRUCTOR (tiny) int8 vs fp32: min cosine {v['min_cosine']:.5f}")  # pytest -s
    got = Embedder(tmp_path / "int8").encode(TEXTS, INSTRUCTIONS)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_fp16_normal_and_overflowing(instructor_bundle: Path, instructor_dir: Path, tmp_path: Path):
    """fp16 of a well-behaved T5 is finite and passes the gate. A T5 whose FFN output leaves fp16's
    range gets that node measured and kept in fp32; where the overflow still reaches the residual
    stream, the gate refuses the bundle instead of writing one that yields NaN."""
    import shutil

    from safetensors.torch import load_file, save_file

    from inbedder.export import export_bundle
    from inbedder.quantize import QuantizationRefused, quantize_bundle
    from inbedder.quantize.convert import fuse, overflowing_nodes
    from inbedder.runtime.samples import calibration_pairs

    m = quantize_bundle(instructor_bundle, tmp_path / "fp16", precision="fp16", **SMALL)
    v = Embedder(tmp_path / "fp16").encode(TEXTS, INSTRUCTIONS)
    assert np.isfinite(v).all() and m.validation["min_cosine"] >= 0.99

    hot = tmp_path / "hot"
    shutil.copytree(instructor_dir, hot)
    weights = load_file(str(hot / "model.safetensors"))
    key = next(k for k in weights if "block.0.layer.1.DenseReluDense.wo.weight" in k)
    weights[key] = weights[key] * 3e5  # layer 0's FFN output now reaches ~1e5 > 65504
    save_file(weights, str(hot / "model.safetensors"), metadata={"format": "pt"})
    export_bundle(str(hot), tmp_path / "hot32")
    ref = Embedder(tmp_path / "hot32")
    graph = ref.manifest.graphs["encoder"]
    fuse(tmp_path / "hot32" / "model.onnx", tmp_path / "fused.onnx", graph, ref.manifest.source, use_gpu=True)
    feeds = ref.pipeline.graph_feeds(calibration_pairs()[:4])["encoder"]
    kept = overflowing_nodes(tmp_path / "fused.onnx", feeds)
    assert any("DenseReluDense/wo/MatMul" in k for k in kept), kept
    with pytest.raises(QuantizationRefused, match="fp16 bundle refused"):
        quantize_bundle(tmp_path / "hot32", tmp_path / "hot16", precision="fp16", **SMALL)
    assert not (tmp_path / "hot16").exists()
