"""Iterative unmasking for masked LMs (`decode_steps`) against a reference loop in transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from inbedder import Embedder, load_manifest
from inbedder.cli import main

TEMPLATE = "### Input:\n{input}\n\n### Instruction:\n{instruction}\n\n### Response:"
TEXTS = ["I love cats!", "The flight from Paris was delayed by four hours.", "ok", "Ça coûte 20 €"]
INSTRUCTION = "What happened?"


@torch.no_grad()
def reference_unmasking(ckpt: Path, texts: list[str], instruction: str, steps: int):
    """k passes; after each of the first k-1, fill the most confident open mask with its argmax."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForMaskedLM.from_pretrained(ckpt).eval()
    embs, answers, orders = [], [], []
    for t in texts:
        prompt = TEMPLATE.format(input=t, instruction=instruction) + tok.mask_token * 3
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        slots = (ids[0] == tok.mask_token_id).nonzero().flatten().tolist()
        filled: dict[int, int] = {}
        order = []
        for _ in range(steps - 1):
            logp = model(input_ids=ids).logits[0].log_softmax(-1)  # (T, V)
            open_slots = [p for p in slots if p not in filled]
            best = max(open_slots, key=lambda p: float(logp[p].max()))
            filled[best] = int(logp[best].argmax())
            ids[0, best] = filled[best]
            order.append(slots.index(best))
        out = model(input_ids=ids, output_hidden_states=True)
        embs.append(out.hidden_states[-1][0, slots].mean(0))
        final = [filled.get(p, int(out.logits[0, p].argmax())) for p in slots]
        answers.append(tok.decode(final, skip_special_tokens=True))
        orders.append(order)
    return torch.stack(embs).numpy(), answers, orders


def test_one_step_is_the_single_pass(masked_bundle: Path):
    emb = Embedder(masked_bundle)
    a, ans_a = emb.encode(TEXTS, INSTRUCTION, return_answers=True)
    b, ans_b = emb.encode(TEXTS, INSTRUCTION, return_answers=True, decode_steps=1)
    np.testing.assert_array_equal(a, b)
    assert ans_a == ans_b


@pytest.mark.parametrize("steps", [2, 3, 4])
def test_steps_fill_slots_in_confidence_order(masked_bundle: Path, tiny_roberta_dir: Path, steps: int):
    want, want_answers, orders = reference_unmasking(tiny_roberta_dir, TEXTS, INSTRUCTION, steps)
    assert all(len(o) == steps - 1 for o in orders)
    emb = Embedder(masked_bundle)
    got, answers = emb.encode(TEXTS, INSTRUCTION, return_answers=True, decode_steps=steps, batch_size=2)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert answers == want_answers
    if steps > 1:
        single = emb.encode(TEXTS, INSTRUCTION)
        assert np.abs(single - got).max() > 1e-4  # filling slots changes the embedding


def test_bad_decode_steps(masked_bundle: Path):
    emb = Embedder(masked_bundle)
    for bad in (0, 5, 2.0, True):
        with pytest.raises(ValueError, match=r"decode_steps must be an int in 1\.\.4"):
            emb.encode(["x"], "q", decode_steps=bad)


def test_manifest_default_and_cli(tiny_roberta_dir: Path, masked_bundle: Path, tmp_path: Path):
    bundle = tmp_path / "k2"
    assert main(["export", str(tiny_roberta_dir), str(bundle), "--decode-steps", "2"]) == 0
    assert load_manifest(bundle).options["decode_steps"] == 2
    default = Embedder(bundle).encode(TEXTS, INSTRUCTION)
    explicit = Embedder(masked_bundle).encode(TEXTS, INSTRUCTION, decode_steps=2)
    np.testing.assert_allclose(default, explicit, atol=1e-6)
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "e.npy"
    argv = ["embed", "-m", str(masked_bundle), "-i", INSTRUCTION, str(src), "-o", str(out), "-q"]
    assert main([*argv, "--decode-steps", "2"]) == 0
    np.testing.assert_allclose(np.load(out), explicit, atol=1e-6)
