"""Causal-LM answer embedders: greedy decode with a KV cache vs transformers' generate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inbedder import Embedder, load_manifest

TEMPLATE = "### Input:\n{input}\n\n### Instruction:\n{instruction}\n\n### Response:"
TEXTS = [
    "ok",
    "The flight from Paris was delayed by four hours and I missed my meeting in Chicago. " * 2,
    "I love cats!",
    "Ça coûte 20 €",
]
INSTRUCTION = "What happened?"


@torch.no_grad()
def reference(ckpt: Path, texts: list[str], max_new: int):
    """generate(do_sample=False) with left padding; fst_gen and avg_gen from its hidden states."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    enc = tok(
        [TEMPLATE.format(input=t, instruction=INSTRUCTION) for t in texts], padding=True, return_tensors="pt"
    )
    out = model.generate(
        **enc,
        do_sample=False,
        max_new_tokens=max_new,
        output_hidden_states=True,
        return_dict_in_generate=True,
    )
    gen = out.sequences[:, enc["input_ids"].shape[1] :]
    states = [h[-1][:, -1] for h in out.hidden_states]  # state that produced generated token g
    fst = states[0]
    avg = []
    for n in range(len(texts)):
        keep = [states[0][n]] + [
            states[g][n] for g in range(1, gen.shape[1]) if int(gen[n, g]) not in tok.all_special_ids
        ]
        avg.append(torch.stack(keep).mean(0))
    answers = tok.batch_decode(gen, skip_special_tokens=True)
    return fst.numpy(), torch.stack(avg).numpy(), answers, gen


@pytest.fixture(scope="module", params=["opt", "llama"])
def causal(request, tmp_path_factory: pytest.TempPathFactory):
    import tiny_causal

    from inbedder.export import export_bundle

    root = tmp_path_factory.mktemp(request.param)
    plain = tiny_causal.tiny_causal(root / "plain", request.param)
    *_, gen = reference(plain, TEXTS, max_new=6)
    # A token said after the first step by some texts but not all becomes EOS.
    token = next(
        int(t)
        for t in gen[:, 1:].flatten()
        if 0 < sum(int(t) in row[1:].tolist() for row in gen) < len(TEXTS)
    )
    ckpt = tiny_causal.tiny_causal(root / "ckpt", request.param, eos_id=token)
    export_bundle(str(ckpt), root / "fst")
    export_bundle(str(ckpt), root / "avg", recipe="causal-answer-avg")
    return request.param, ckpt, root


def test_answers_and_vectors_match_generate(causal):
    _, ckpt, root = causal
    fst, avg, answers, gen = reference(ckpt, TEXTS, max_new=6)
    # The test model ends some answers early (EOS inside the budget) and not others.
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(ckpt).eos_token_id
    ended = [(row[:-1] == eos).any().item() for row in gen]
    assert any(ended) and not all(ended), gen
    for bundle, want in (("fst", fst), ("avg", avg)):
        emb = Embedder(root / bundle)
        got, got_answers = emb.encode(TEXTS, INSTRUCTION, return_answers=True, max_new_tokens=6)
        assert got_answers == answers
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert not np.allclose(fst, avg)  # the two poolings really differ here


def test_steps_after_the_first_feed_one_token(causal):
    _, _, root = causal
    emb = Embedder(root / "fst")
    emb.encode(TEXTS, INSTRUCTION, max_new_tokens=3, batch_size=8)
    prompt = max(len(e.ids) for e in emb.pipeline.tokenize(TEXTS, [INSTRUCTION] * 4, "input"))
    assert emb.pipeline.steps_run[0] == prompt and emb.pipeline.steps_run[1:] == [1, 1]


def test_batch_and_padding_invariance(causal):
    _, _, root = causal
    emb = Embedder(root / "fst")
    together, a1 = emb.encode(TEXTS, INSTRUCTION, return_answers=True)
    for i, t in enumerate(TEXTS):
        alone, a2 = emb.encode([t], INSTRUCTION, return_answers=True)
        np.testing.assert_allclose(alone[0], together[i], atol=1e-5)
        assert a2[0] == a1[i]


def test_manifest_and_options(causal):
    family, _, root = causal
    m = load_manifest(root / "avg")
    assert m.family == "causal-lm" and m.pooling["type"] == "avg_gen"
    assert m.options["max_new_tokens"] == 3 and m.options["padding_side"] == "left"
    assert m.graphs["decoder"].inputs[:3] == ("input_ids", "attention_mask", "position_ids")
    if family == "opt":
        assert m.embedding_dim == 16  # after project_out, like OPT-350m's 512
    emb = Embedder(root / "fst")
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        emb.encode(["x"], "q", max_new_tokens=0)
    with pytest.raises(TypeError, match="unknown option"):
        emb.encode(["x"], "q", decode_steps=2)


def test_cli_embed_with_max_new_tokens(causal, tmp_path: Path):
    import json

    from inbedder.cli import main

    _, _, root = causal
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out, ans = tmp_path / "e.npy", tmp_path / "a.jsonl"
    argv = ["embed", "-m", str(root / "avg"), "-i", INSTRUCTION, str(src), "-o", str(out), "-q"]
    assert main([*argv, "--max-new-tokens", "6", "--answers", str(ans)]) == 0
    want, answers = Embedder(root / "avg").encode(TEXTS, INSTRUCTION, max_new_tokens=6, return_answers=True)
    np.testing.assert_allclose(np.load(out), want, atol=1e-6)
    assert [json.loads(line)["answer"] for line in ans.read_text().splitlines()] == answers
