"""Causal-LM answer embedders (recipe `causal-answer`): a short greedy decode with a KV cache.

Scope: left-pad the prompts (as the reference), run the decoder graph once over the prompt with an
empty cache, then feed one token per step with the cache the previous call returned, until every
text has emitted EOS or `max_new_tokens` tokens. As in `generate`, a finished text keeps being fed
the pad token (masked in), and its answer is the tokens up to its EOS. Pooling (manifest):
`fst_gen` = the last prompt token's state; `avg_gen` = mean of that state and the states of the
generated tokens followed by a non-special token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from .pipeline import Pipeline, register
from .prompt import Encoded

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@register
class CausalAnswerPipeline(Pipeline):
    family = "causal-lm"
    options: ClassVar[Mapping[str, Any]] = {"max_new_tokens": None}  # None: the manifest's

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        cache = self.manifest.options["cache"]
        self.layers, self.kv_heads, self.head_dim = cache["layers"], cache["kv_heads"], cache["head_dim"]
        self.eos = int(self.manifest.special_tokens["eos"])
        self.special = set(self.manifest.decode.get("special_ids", [])) | {self.eos, self.pad_id}
        sess = self.sessions["decoder"]
        self.past_dtype = _DTYPES[next(i.type for i in sess.get_inputs() if i.name.startswith("past_"))]
        self.steps_run: list[int] = []  # input lengths fed per graph call (the last encode)

    def pad(self, batch: Sequence[Encoded]) -> dict[str, np.ndarray]:
        """Left padding: every prompt ends at the last column, where the answer starts."""
        longest = max(len(e.ids) for e in batch)
        ids = np.full((len(batch), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        for i, e in enumerate(batch):
            ids[i, longest - len(e.ids) :] = e.ids
            mask[i, longest - len(e.ids) :] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def max_new_tokens(self, asked: int | None) -> int:
        n = asked if asked is not None else int(self.manifest.options.get("max_new_tokens", 3))
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {n!r}")
        return n

    def embed_batch(
        self, batch: Sequence[Encoded], want_answers: bool, **options: Any
    ) -> tuple[np.ndarray, list[str] | None]:
        budget = self.max_new_tokens(options.get("max_new_tokens"))
        arrays = self.pad(batch)
        b = len(batch)
        mask = arrays["attention_mask"]
        # Positions as `generate` computes them: cumsum of the mask - 1, pads at 1 (masked anyway).
        position = np.where(mask == 1, mask.cumsum(-1) - 1, 1)
        empty = np.zeros((b, self.kv_heads, 0, self.head_dim), dtype=self.past_dtype)
        past = {f"past_{k}_{i}": empty for i in range(self.layers) for k in ("key", "value")}
        feed = {"input_ids": arrays["input_ids"], "attention_mask": mask, "position_ids": position, **past}
        self.steps_run = []
        states: list[np.ndarray] = []  # per call: (B, H') state that produced the next token
        tokens: list[np.ndarray] = []  # per call: (B,) the token chosen
        done = np.zeros(b, dtype=bool)
        for step in range(budget):
            self.steps_run.append(feed["input_ids"].shape[1])
            out = self.run("decoder", feed)
            nxt = np.where(done, self.pad_id, out["logits"].argmax(-1))  # (B,)
            states.append(out["last_hidden"].astype(np.float32))
            tokens.append(nxt)
            done |= nxt == self.eos
            if done.all() or step == budget - 1:
                break
            mask = np.concatenate([mask, np.ones((b, 1), dtype=np.int64)], axis=1)
            position = position[:, -1:] + 1
            feed = {
                "input_ids": nxt[:, None].astype(np.int64),
                "attention_mask": mask,
                "position_ids": position,
                **{n.replace("present", "past"): out[n] for n in out if n.startswith("present_")},
            }
        gen = np.stack(tokens, axis=1)  # (B, G)
        emb = states[0]
        if self.manifest.pooling.get("type") == "avg_gen":
            # State g (computed on generated token g-1) counts when token g is not special.
            keep = np.array([[t not in self.special for t in row] for row in gen], dtype=np.float32)  # (B, G)
            keep[:, 0] = 1.0  # the fst state always counts
            stack = np.stack(states, axis=1)  # (B, G, H')
            emb = (stack * keep[:, :, None]).sum(1) / keep.sum(1, keepdims=True)
        answers = [self.decode_answer(row) for row in gen] if want_answers else None
        return emb, answers
