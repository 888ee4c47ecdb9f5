"""Causal-LM answer embedders: greedy decode with a KV cache vs transformers' generate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from evalsets import SMALL  # slices of the built-in set: see evalsets.py

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
    if len(states) == 1:
        # generate stopped after one token: the published code would read hidden_states[1]; it is
        # the state of the pass fed token 0, which a batch that went on would have computed.
        ids = torch.cat([enc["input_ids"], gen[:, :1]], 1)
        mask = torch.cat([enc["attention_mask"], torch.ones_like(gen[:, :1])], 1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        states.append(model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
                      .hidden_states[-1][:, -1])  # fmt: skip
    fst = states[0]
    avg = []
    for n in range(len(texts)):
        # lm_encoders_hf/causallm_encoder_hf.py: special-token mask over generated tokens 1.., the
        # states hidden_states[1:] zipped with it; when all are special, hidden_states[1].
        gen_states = [
            states[g][n] for g in range(1, gen.shape[1]) if int(gen[n, g]) not in tok.all_special_ids
        ]
        avg.append(torch.stack([states[0][n], *(gen_states or [states[1][n]])]).mean(0))
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
    feeds = emb.pipeline.graph_feeds([(t, INSTRUCTION) for t in TEXTS], max_new_tokens=3)["decoder"]
    prompts = [len(e.ids) for e in emb.pipeline.tokenize(TEXTS, [INSTRUCTION] * len(TEXTS), "input")]
    calls: list[list[tuple[int, int]]] = []  # per text: (tokens fed, attention length) of each call
    for f in feeds:
        if f["input_ids"].shape[1] > 1 or not calls:
            calls.append([])
        calls[-1].append((f["input_ids"].shape[1], f["attention_mask"].shape[1]))
    assert len(calls) == len(TEXTS)
    for p, c in zip(prompts, calls, strict=True):
        assert c == [(p, p)] + [(1, p + k) for k in range(1, len(c))] and len(c) <= 3
    assert max(len(c) for c in calls) == 3  # some answer used the whole budget


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


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_avg_gen_when_the_answer_ends_after_1_2_3_tokens(family: str, tmp_path: Path):
    """avg_gen for answers that stop (EOS) after 1, 2 or 3 tokens, alone and in a mixed batch: the
    published aggregation, including its fallback to the state of the pass fed the first token
    when every later token is special (computed even when the decode stopped at once)."""
    import tiny_causal

    from inbedder.export import export_bundle

    plain = tiny_causal.tiny_causal(tmp_path / "plain", family)
    *_, gen = reference(plain, TEXTS, max_new=4)
    # Make a token of text 0's answer EOS at position k: that answer then ends after k + 1 tokens.
    for k in range(3):
        eos = int(gen[0, k])
        if eos in gen[0, :k].tolist():
            continue
        ckpt = tiny_causal.tiny_causal(tmp_path / f"ckpt{k}", family, eos_id=eos)
        export_bundle(str(ckpt), tmp_path / f"avg{k}", recipe="causal-answer-avg")
        emb = Embedder(tmp_path / f"avg{k}")
        _, want_alone, ans_alone, g_alone = reference(ckpt, TEXTS[:1], max_new=4)
        assert int(g_alone[0, k]) == eos  # the answer really ends after k + 1 tokens
        got, answers = emb.encode(TEXTS[:1], INSTRUCTION, return_answers=True, max_new_tokens=4)
        assert answers == ans_alone
        np.testing.assert_allclose(got, want_alone, atol=1e-4, rtol=0)
        _, want_mixed, ans_mixed, _ = reference(ckpt, TEXTS, max_new=4)
        got, answers = emb.encode(TEXTS, INSTRUCTION, return_answers=True, max_new_tokens=4, batch_size=8)
        assert answers == ans_mixed
        np.testing.assert_allclose(got, want_mixed, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got[0], want_alone[0], atol=1e-4, rtol=0)  # never batch-dependent
    # One new token: avg_gen still averages two states, never fst_gen alone.
    emb = Embedder(tmp_path / "avg0")
    fst1, avg1, _, _ = reference(tmp_path / "ckpt0", TEXTS, max_new=1)
    got = emb.encode(TEXTS, INSTRUCTION, max_new_tokens=1)
    np.testing.assert_allclose(got, avg1, atol=1e-4, rtol=0)
    assert np.abs(avg1 - fst1).max() > 1e-3


def test_quantize_feeds_the_decoder_every_pass(causal, tmp_path: Path, monkeypatch):
    """Quantize measures a decoder through the pipeline's own feeds (the prompt pass and the
    cached steps): fp16 overflow is measured on them, and the int8 fallback ranks its MatMuls."""
    from inbedder.quantize import QuantizationRefused, quantize_bundle
    from inbedder.quantize import core as qcore

    _, _, root = causal
    seen: list[list[int]] = []
    real = qcore.overflowing_nodes

    def spy(path, feeds):
        seen.append([f["input_ids"].shape[1] for f in feeds])
        return real(path, feeds)

    monkeypatch.setattr(qcore, "overflowing_nodes", spy)
    m = quantize_bundle(root / "fst", tmp_path / "fp16", precision="fp16", **SMALL)
    assert m.validation["passed"] and len(seen) == 1
    assert 1 in seen[0] and max(seen[0]) > 1  # cached one-token steps and prompt passes alike
    # An unreachable bound walks the whole int8 ladder: past per-channel it keeps the decoder's
    # MatMuls that int8 hurts most in fp32, which needs their ranking on the decoder's feeds.
    with pytest.raises(QuantizationRefused, match=r"'kept_fp32': 1\b"):
        quantize_bundle(root / "fst", tmp_path / "int8", min_cosine=1.0, **SMALL)
    assert not (tmp_path / "int8").exists()
