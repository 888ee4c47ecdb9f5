"""Recipes as data: what the published procedure of each model family does.

Scope: the `Recipe` record (prompt, truncation rule, pooling, post-processing) and the InBedder QA
template. Each family declares its recipes (`ExportFamily.recipes`, in its own module); the
registry in `family.py` collects them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from inbedder.runtime.bundle import TruncationSide, TruncationStrategy

SlotStates = Literal["hidden", "lm_head_transform"]
DecodePooling = Literal["fst_gen", "avg_gen"]

INBEDDER_TEMPLATE = "### Input:\n{input}\n\n### Instruction:\n{instruction}\n\n### Response:"


@dataclass(frozen=True)
class Recipe:
    name: str
    segments: tuple[str, ...]  # 1 template, or 2 for a text pair
    answer_slots: int = 0
    truncation_side: TruncationSide = "right"  # the reference tokenizer call
    truncation_strategy: TruncationStrategy = "longest_first"
    max_length: int = 512
    slot_states: SlotStates = "hidden"  # masked: the last layer's states, or the LM head's transform of them
    postprocess: tuple[str, ...] = ()
    strip: bool = False  # strip the filled prompt (INSTRUCTOR)
    pooling: DecodePooling | None = None  # causal
    max_new_tokens: int = 3  # causal: greedy answer length (stops earlier at EOS)
    description: str = ""  # one line for listings
