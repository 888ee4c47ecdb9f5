"""Runtime vs the published recipes, implemented here with transformers (independently of export/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inbedder import Embedder

TEMPLATE = "### Input:\n{input}\n\n### Instruction:\n{instruction}\n\n### Response:"
TEXTS = [
    "I love cats!",
    "The flight from Paris was delayed by four hours and I missed my meeting.",
    "Ça coûte 20 €, naïve café — 東京 🙂",
    "ok",
    "She finally got the job she had dreamed about for years, and called her mother at once. " * 3,
]
INSTRUCTIONS = ["What animal?", "Where did this happen?", "What language?", "What is it?", "Who called?"]


@torch.no_grad()
def reference_masked_answer(ckpt: Path, texts, instructions, max_length: int):
    """Recipe masked-answer, as the paper's code runs it."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    tok.padding_side, tok.truncation_side = "right", "left"
    model = AutoModelForMaskedLM.from_pretrained(ckpt).eval()
    prompts = [
        TEMPLATE.replace("{input}", t).replace("{instruction}", i) + tok.mask_token * 3
        for t, i in zip(texts, instructions, strict=True)
    ]
    enc = tok(prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    out = model(**enc, output_hidden_states=True)
    masks = enc["input_ids"] == tok.mask_token_id
    emb = torch.stack([out.hidden_states[-1][n][masks[n]].mean(0) for n in range(len(texts))])
    ids = torch.stack([out.logits[n][masks[n]].argmax(-1) for n in range(len(texts))])
    return emb.numpy(), tok.batch_decode(ids, skip_special_tokens=True)


@torch.no_grad()
def reference_masked_answer_pair(ckpt: Path, texts, instructions, max_length: int):
    """Recipe masked-answer-pair (the model card of KomeijiForce/inbedder-roberta-large)."""
    import torch.nn.functional as F
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForMaskedLM.from_pretrained(ckpt).eval()
    seconds = [i + tok.mask_token * 3 for i in instructions]
    enc = tok(texts, seconds, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    out = model(**enc, output_hidden_states=True)
    masks = enc["input_ids"] == tok.mask_token_id
    head = model.lm_head
    embs, ids = [], []
    for n in range(len(texts)):
        h = out.hidden_states[-1][n][masks[n]]
        h = head.layer_norm(F.gelu(head.dense(h)))
        e = h.mean(0)
        embs.append((e - e.mean()) / e.std())
        ids.append(out.logits[n][masks[n]].argmax(-1))
    return torch.stack(embs).numpy(), tok.batch_decode(torch.stack(ids), skip_special_tokens=True)


def test_masked_answer_matches_reference(masked_bundle: Path, tiny_roberta_dir: Path):
    emb = Embedder(masked_bundle)
    limit = emb.manifest.truncation.max_length
    ref_vecs, ref_answers = reference_masked_answer(tiny_roberta_dir, TEXTS, INSTRUCTIONS, limit)
    vecs, answers = emb.encode(TEXTS, INSTRUCTIONS, return_answers=True, truncation="reference")
    assert vecs.dtype == np.float32 and vecs.shape == (len(TEXTS), emb.dim)
    np.testing.assert_allclose(vecs, ref_vecs, atol=1e-4, rtol=0)
    assert answers == ref_answers


def test_masked_answer_pair_matches_reference(pair_bundle: Path, tiny_roberta_dir: Path):
    emb = Embedder(pair_bundle)
    limit = emb.manifest.truncation.max_length
    ref_vecs, ref_answers = reference_masked_answer_pair(tiny_roberta_dir, TEXTS, INSTRUCTIONS, limit)
    vecs, answers = emb.encode(TEXTS, INSTRUCTIONS, return_answers=True, truncation="reference")
    np.testing.assert_allclose(vecs, ref_vecs, atol=1e-4, rtol=0)
    assert answers == ref_answers


def test_default_truncation_equals_reference_when_nothing_is_cut(masked_bundle: Path):
    emb = Embedder(masked_bundle)
    a = emb.encode(TEXTS[:4], INSTRUCTIONS[:4])
    b = emb.encode(TEXTS[:4], INSTRUCTIONS[:4], truncation="reference")
    np.testing.assert_array_equal(a, b)


def test_instruction_changes_the_embedding(masked_bundle: Path):
    emb = Embedder(masked_bundle)
    a = emb.encode(["I love cats!"], "What animal?")
    b = emb.encode(["I love cats!"], "What emotion?")
    assert np.abs(a - b).max() > 1e-3


@pytest.fixture(scope="module")
def minilm_dir(checkpoints) -> Path:
    return checkpoints("minilm-mlm")


@pytest.fixture(scope="module")
def minilm_bundle(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inbedder.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "minilm"
    export_bundle(str(minilm_dir), out)
    return out


def test_real_weights_bert_matches_reference(minilm_bundle: Path, minilm_dir: Path):
    emb = Embedder(minilm_bundle)
    m = emb.manifest
    assert m.recipe == "masked-answer" and m.prompt.slot_token == "[MASK]" and m.embedding_dim == 384
    assert "token_type_ids" in m.graphs["encoder"].inputs  # BERT segments are fed
    ref_vecs, ref_answers = reference_masked_answer(minilm_dir, TEXTS, INSTRUCTIONS, 512)
    vecs, answers = emb.encode(TEXTS, INSTRUCTIONS, return_answers=True, truncation="reference")
    np.testing.assert_allclose(vecs, ref_vecs, atol=1e-4, rtol=0)
    assert answers == ref_answers
    # Real weights: the same question about similar texts gives closer answers than about unrelated ones.
    v = emb.encode(["I adore my cat.", "I love my kitten.", "Stock markets fell sharply."], "What animal?")
    cos = (v @ v.T) / np.outer(np.linalg.norm(v, axis=1), np.linalg.norm(v, axis=1))
    assert cos[0, 1] > cos[0, 2]
