"""Masked-LM answer embedders (recipes `masked-answer`, `masked-answer-pair`).

Scope: passes of the exported graph over prompts that end in answer slots (`<mask>` x 3); the
graph returns the slot states (B, S, H), the greedy answer token at each slot (B, S) and its
log-probability (B, S); the embedding is the mean over the slots of the final pass. Everything
recipe-specific (prompt, LM-head transform, final standardisation) is in the manifest or baked
into the graph at export.

Iterative unmasking (`decode_steps` = k passes, default 1 = the reference): after each of the
first k - 1 passes, every text fills its single most confident unfilled slot with that slot's
argmax token; the final pass gives the embedding (at the same slot positions) and the answer
(filled tokens, plus the final argmax at slots still open). k ranges over 1..S+1.

A graph that declares the input `want_answers` (quantized bundles: quantize/on_request.py) runs
its LM head's projection only on passes that need the answers: every pass before the last, and
the last when the call asks for answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from tokenizers import Tokenizer

from inbedder.errors import BundleError

from .bundle import MAX_ANSWER_SLOTS, Manifest
from .pipeline import WANT_ANSWERS, Pipeline, positive_int
from .prompt import Encoded


class MaskedAnswerPipeline(Pipeline):
    family = "masked-lm"
    options: ClassVar[Mapping[str, Any]] = {"decode_steps": 1}
    recipes = ("masked-answer", "masked-answer-pair")
    graphs: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "encoder": ("slot_states", "answer_ids", "answer_logprobs")
    }
    on_request: ClassVar[Mapping[str, tuple[str, ...]]] = {"encoder": ("answer_ids", "answer_logprobs")}

    @classmethod
    def check_manifest(cls, manifest: Manifest, tokenizer: Tokenizer, origin: str) -> None:
        slots = manifest.prompt.answer_slots
        if not 1 <= slots <= MAX_ANSWER_SLOTS:
            raise BundleError(f"{origin}: prompt.answer_slots must be in 1..{MAX_ANSWER_SLOTS}, got {slots}")
        if "pad" not in manifest.special_tokens:  # the graph skips pads when it numbers positions
            raise BundleError(f"{origin}: special_tokens.pad is missing (batches are padded with it)")
        super().check_manifest(manifest, tokenizer, origin)

    def check_option(self, name: str, value: Any) -> Any:
        # k passes fill at most one slot each before the last: 1..S+1 (slots + 1)
        return positive_int(name, 1, self.manifest.prompt.answer_slots + 1)(value)

    def embed_batch(
        self, batch: Sequence[Encoded], want_answers: bool, options: Mapping[str, Any]
    ) -> tuple[np.ndarray, list[str] | None]:
        arrays = self.pad(batch)
        slots = arrays["slot_positions"]  # (B, S)
        b, s = slots.shape
        steps = options["decode_steps"]
        rows = np.arange(b)
        filled = np.zeros((b, s), dtype=bool)
        chosen = np.zeros((b, s), dtype=np.int64)  # token written into each filled slot
        arrays[WANT_ANSWERS] = np.ones(1, np.int64)  # passes before the last choose by the answers
        for _ in range(steps - 1):
            out = self.run("encoder", arrays)
            conf = np.where(filled, -np.inf, out["answer_logprobs"])  # (B, S): open slots only
            pick = conf.argmax(axis=1)  # (B,) the most confident open slot of each text
            token = out["answer_ids"][rows, pick]
            chosen[rows, pick] = token
            filled[rows, pick] = True
            arrays["input_ids"] = arrays["input_ids"].copy()
            arrays["input_ids"][rows, slots[rows, pick]] = token
        arrays[WANT_ANSWERS] = np.array([int(want_answers)], np.int64)  # the LM head only if asked
        out = self.run("encoder", arrays)
        states = out["slot_states"].astype(np.float32, copy=False)  # (B, S, H)
        emb = states.mean(axis=1)  # (B, H): the answer's representation
        answers = None
        if want_answers:
            ids = np.where(filled, chosen, out["answer_ids"])  # (B, S)
            answers = [self.decode_answer(row) for row in ids]
        return emb, answers
