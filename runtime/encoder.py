"""Encoder embedders that pool the text and leave the instruction out (recipe `instructor`).

Scope: the model sees `(instruction + text).strip()`; the graph mean-pools the last hidden states
from position `pool_start` on (where the attention mask is 1), applies the Dense projection, and
the manifest's post-processing L2-normalises. `pool_start` is a runtime input, one per text, so a
batch can mix instructions of different lengths. There is no answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from .pipeline import Pipeline, register
from .prompt import Encoded


@register
class EncoderPipeline(Pipeline):
    family = "encoder"
    answers = False

    def instruction_tokens(self, instruction: str) -> int:
        """How many leading tokens the instruction takes: the token count of the stripped
        instruction tokenized alone (special tokens included), plus the manifest's offset (-1 for
        T5: its closing </s> is not part of the prefix)."""
        n = self.prompts.token_count(instruction.strip())
        return max(n + int(self.manifest.pooling.get("prefix_offset", 0)), 0)

    def tokenize(self, texts: Sequence[str], instructions: Sequence[str], truncation: str) -> list[Encoded]:
        encoded = super().tokenize(texts, instructions, truncation)
        counts: dict[str, int] = {}
        out = []
        for e, instruction in zip(encoded, instructions, strict=True):
            if instruction not in counts:
                counts[instruction] = self.instruction_tokens(instruction)
            out.append(dataclasses.replace(e, prefix=counts[instruction]))
        return out

    def embed_batch(
        self, batch: Sequence[Encoded], want_answers: bool, **options: Any
    ) -> tuple[np.ndarray, list[str] | None]:
        out = self.run("encoder", self.pad(batch))
        return out["embedding"].astype(np.float32, copy=False), None  # (B, D)
