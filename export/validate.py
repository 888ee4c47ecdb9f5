"""Export validation: the exported bundle, run by the runtime, against the PyTorch reference.

Scope: the built-in prompt set (short, long past the token limit, non-ASCII, empty, mixed lengths
in one batch), the comparison (token ids, embeddings, answers) and the figures that go into the
manifest. The bundle is run through `inbedder.runtime` itself, so what is validated is what users
run: tokenizer.json, prompt building, the graph and the pooling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inbedder.errors import ExportValidationError
from inbedder.runtime.samples import VALIDATION_INSTRUCTIONS, VALIDATION_TEXTS

from .reference import ReferenceOutput

# Embeddings must agree to EMBEDDING_ATOL, relative to the larger of 1 and the reference's largest
# magnitude (a roberta-large hidden state has components around 10: fp32 summation order alone
# moves them by ~1e-6 relative).
EMBEDDING_ATOL = 1e-4
# An answer token may differ only where the reference's top-2 logits are this close (a tie).
ANSWER_TIE_MARGIN = 1e-3


@dataclass
class Figures:
    prompts: int
    max_abs_diff: float
    ref_scale: float
    tolerance: float
    answers_equal: int | None  # texts whose answer string equals the reference's
    answer_ties: int  # texts whose answer differs only at a near tie

    def as_json(self) -> dict[str, Any]:
        return {
            "against": "transformers fp32 reference (truncation='reference')",
            "prompts": self.prompts,
            "max_abs_diff": self.max_abs_diff,
            "reference_max_abs": self.ref_scale,
            "tolerance": self.tolerance,
            "tolerance_rule": f"max_abs_diff <= {EMBEDDING_ATOL} * max(1, reference_max_abs)",
            "answers_equal": self.answers_equal,
            "answers_differing_at_near_ties": self.answer_ties,
            "passed": True,
        }


def validate(
    bundle_dir: Path,
    reference: Callable[[list[str], list[str]], ReferenceOutput],
    atol: float = EMBEDDING_ATOL,
) -> Figures:
    """Run the bundle and `reference(texts, instructions)` on the built-in prompts and compare the
    token ids each fed, the embeddings and the answers; raise `ExportValidationError` past `atol`."""
    from inbedder.runtime import Embedder

    texts, instructions = list(VALIDATION_TEXTS), list(VALIDATION_INSTRUCTIONS)
    emb = Embedder(bundle_dir, device="cpu", verify=False)
    ref = reference(texts, instructions)
    ours = emb.pipeline.tokenize(texts, instructions, "reference")
    for i, (enc, fed) in enumerate(zip(ours, ref.token_ids, strict=True)):
        if enc.ids != fed:
            first = next((k for k, (x, y) in enumerate(zip(enc.ids, fed, strict=False)) if x != y), None)
            raise ExportValidationError(
                f"tokenizer.json tokenizes validation prompt {i} differently from the checkpoint's "
                f"tokenizer ({len(enc.ids)} vs {len(fed)} tokens; first difference at token {first})"
            )
    want_answers = emb.pipeline.answers and ref.answers is not None
    # Batch size 4 over 7 length-sorted prompts: padded batches of very different lengths.
    got = emb.encode(texts, instructions, batch_size=4, truncation="reference", return_answers=want_answers)
    vecs, answers = got if want_answers else (got, None)
    diff = float(np.abs(vecs - ref.embeddings).max())
    scale = float(np.abs(ref.embeddings).max())
    tol = atol * max(1.0, scale)
    if not np.isfinite(diff) or diff > tol:
        worst = int(np.abs(vecs - ref.embeddings).max(axis=1).argmax())
        raise ExportValidationError(
            f"embeddings differ from the PyTorch reference by {diff:.3g} (tolerance {tol:.3g} = "
            f"{atol} x max(1, {scale:.3g})); worst prompt {worst}: {texts[worst][:60]!r}"
        )
    equal = None
    ties = 0
    if want_answers and answers is not None and ref.answers is not None:
        near_tie = (
            ref.margins.min(axis=1) < ANSWER_TIE_MARGIN
            if ref.margins is not None
            else np.zeros(len(texts), dtype=bool)
        )
        for n, (a, b) in enumerate(zip(answers, ref.answers, strict=True)):
            if a != b and not near_tie[n]:
                raise ExportValidationError(
                    f"answer for validation prompt {n} differs from the reference: {a!r} vs {b!r} "
                    "(not a near tie)"
                )
        equal = sum(a == b for a, b in zip(answers, ref.answers, strict=True))
        ties = len(texts) - equal
    return Figures(len(texts), diff, scale, tol, equal, ties)
