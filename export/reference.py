"""The PyTorch reference of each recipe, as the published code runs it (for export validation).

Scope: given a transformers model + tokenizer and a recipe, return embeddings, answers and the
top-2 logit margin at each answer slot (to tell a genuine mismatch from a near tie). This follows
`shared/reference/recipes.md` step by step: full-vocabulary logits at every position, the
tokenizer call with the recipe's padding/truncation, masks found by id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .specs import MaskedLMArch, Recipe


@dataclass
class ReferenceOutput:
    embeddings: np.ndarray  # (N, D) float32
    answers: list[str] | None
    answer_ids: np.ndarray | None  # (N, S)
    margins: np.ndarray | None  # (N, S): top-1 minus top-2 logit at each slot


@dataclass(frozen=True)
class Reference:
    """A loaded checkpoint's reference: `run(texts, instructions)` and the token ids it feeds."""

    run: Callable[[list[str], list[str]], ReferenceOutput]
    token_ids: Callable[[list[str], list[str]], list[list[int]]]


def resolve(model: torch.nn.Module, path: str) -> torch.nn.Module:
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def head_transform(model: torch.nn.Module, arch: MaskedLMArch) -> list[torch.nn.Module]:
    """The MLM head's hidden -> hidden transform as a list of modules."""
    from transformers.activations import ACT2FN

    return [ACT2FN[p[4:]] if p.startswith("act:") else resolve(model, p) for p in arch.transform]


@torch.no_grad()
def masked_reference(
    model: torch.nn.Module,
    tokenizer,  # transformers tokenizer
    recipe: Recipe,
    arch: MaskedLMArch,
    texts: Sequence[str],
    instructions: Sequence[str],
    max_length: int,
) -> ReferenceOutput:
    mask = tokenizer.mask_token
    slots = mask * recipe.answer_slots
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = recipe.truncation_side
    if len(recipe.segments) == 1:
        # The published code: chained str.replace, then the masks appended without a space.
        prompts = [
            recipe.segments[0].replace("{input}", t).replace("{instruction}", i) + slots
            for t, i in zip(texts, instructions, strict=True)
        ]
        enc = tokenizer(prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    else:
        firsts = [recipe.segments[0].replace("{input}", t) for t in texts]
        seconds = [recipe.segments[1].replace("{instruction}", i) + slots for i in instructions]
        enc = tokenizer(
            firsts,
            seconds,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
    out = model(**enc, output_hidden_states=True)
    hidden = out.hidden_states[-1]  # (N, T, H)
    logits = out.logits  # (N, T, V): the published code computes all of them
    is_mask = enc["input_ids"] == tokenizer.mask_token_id  # (N, T)
    embs, ids, margins = [], [], []
    transform = head_transform(model, arch) if recipe.slot_states == "lm_head_transform" else []
    for n in range(hidden.shape[0]):
        h = hidden[n][is_mask[n]]  # (S, H)
        for mod in transform:
            h = mod(h)
        embs.append(h.mean(0))
        lg = logits[n][is_mask[n]]  # (S, V)
        top2 = lg.topk(2, dim=-1).values
        ids.append(lg.argmax(-1))
        margins.append(top2[:, 0] - top2[:, 1])
    emb = torch.stack(embs).float()
    if "standardize" in recipe.postprocess:
        emb = (emb - emb.mean(-1, keepdim=True)) / emb.std(-1, keepdim=True)
    answer_ids = torch.stack(ids)
    answers = tokenizer.batch_decode(answer_ids, skip_special_tokens=True)
    return ReferenceOutput(
        embeddings=emb.numpy(),
        answers=list(answers),
        answer_ids=answer_ids.numpy(),
        margins=torch.stack(margins).float().numpy(),
    )
