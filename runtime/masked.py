"""Masked-LM answer embedders (recipes `masked-answer`, `masked-answer-pair`).

Scope: one pass of the exported graph over prompts that end in answer slots (`<mask>` x 3); the
graph returns the slot states (B, S, H) and the greedy answer token at each slot (B, S); the
embedding is the mean over the slots. Everything recipe-specific (prompt, LM-head transform, final
standardisation) is in the manifest or baked into the graph at export.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .pipeline import Pipeline, register
from .prompt import Encoded


@register
class MaskedAnswerPipeline(Pipeline):
    family = "masked-lm"

    def embed_batch(
        self, batch: Sequence[Encoded], want_answers: bool, **options: Any
    ) -> tuple[np.ndarray, list[str] | None]:
        out = self.run("encoder", self.pad(batch))
        states = out["slot_states"].astype(np.float32, copy=False)  # (B, S, H)
        emb = states.mean(axis=1)  # (B, H): the answer's representation
        answers = None
        if want_answers:
            answers = [self.decode_answer(row) for row in out["answer_ids"]]  # (B, S) ids
        return emb, answers
