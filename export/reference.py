"""What every family's PyTorch reference returns, and the published prompt fill.

Scope: `ReferenceOutput` (embeddings, answers, the top-2 margin at each answer slot to tell a
genuine mismatch from a near tie, and the token ids the reference really fed, so validation checks
the ids the checkpoint's own tokenizer produced under the recipe's settings), and
`published_fill`: the chained `str.replace` the published code uses to fill a template. Each
family's reference (in its module) follows `shared/reference/recipes.md` step by step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class ReferenceOutput:
    embeddings: np.ndarray  # (N, D) float32
    token_ids: list[list[int]]  # per text, the ids fed to the model (padding removed)
    answers: list[str] | None = None
    answer_ids: np.ndarray | None = None  # (N, S)
    margins: np.ndarray | None = None  # (N, S): top-1 minus top-2 logit at each slot


def published_fill(template: str, text: str, instruction: str) -> str:
    """The published code's fill: two chained `str.replace` calls (so an input containing the
    literal text `{instruction}` gets rewritten; the runtime's single-pass fill does not)."""
    return template.replace("{input}", text).replace("{instruction}", instruction)


def unpadded_ids(
    input_ids: Sequence[Sequence[int]], attention_mask: Sequence[Sequence[int]]
) -> list[list[int]]:
    """Per row, the ids where the attention mask is 1 (left or right padding alike)."""
    return [
        [int(t) for t, m in zip(ids, mask, strict=True) if int(m)]
        for ids, mask in zip(input_ids, attention_mask, strict=True)
    ]
