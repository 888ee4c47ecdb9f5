"""Causal-LM answer embedders (recipes `causal-answer`, `causal-answer-avg`): a short greedy
decode with a KV cache.

Scope: left-pad the prompts (as the reference), run the decoder graph once over the prompt with an
empty cache, then feed one token per step with the cache the previous call returned, until every
text has emitted EOS or `max_new_tokens` tokens. As in `generate`, a finished text keeps being fed
the pad token (masked in), and its answer is the tokens up to its EOS. Pooling (manifest):
`fst_gen` = s_0, the state of the last prompt token; `avg_gen` = mean of s_0 and every s_g
(g >= 1: the state of the pass fed generated token g-1) whose token g is not special. When no s_g
qualifies (a one-token answer, or EOS at once), the published code uses s_1: mean(s_0, s_1).
That pass is run even when the decode stopped after its first token, so a text's vector never
depends on whether its batch went on decoding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from tokenizers import Tokenizer

from inbedder.errors import BundleError, InputError

from .bundle import Manifest
from .pipeline import Pipeline, positive_int
from .prompt import Encoded

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class CausalAnswerPipeline(Pipeline):
    family = "causal-lm"
    options: ClassVar[Mapping[str, Any]] = {"max_new_tokens": 3}
    recipes = ("causal-answer", "causal-answer-avg")
    graphs: ClassVar[Mapping[str, tuple[str, ...]]] = {"decoder": ("logits", "last_hidden")}

    @classmethod
    def check_manifest(cls, manifest: Manifest, tokenizer: Tokenizer, origin: str) -> None:
        cache = manifest.options.get("cache")
        if not isinstance(cache, dict) or any(
            isinstance(cache.get(k), bool) or not isinstance(cache.get(k), int) or cache[k] < 1
            for k in ("layers", "kv_heads", "head_dim")
        ):
            raise BundleError(
                f"{origin}: options.cache must be an object of positive ints layers, kv_heads, head_dim; "
                f"got {cache!r}"
            )
        if "eos" not in manifest.special_tokens:
            raise BundleError(f"{origin}: special_tokens.eos is missing (the decode stops there)")
        if manifest.pooling.get("type", "fst_gen") not in ("fst_gen", "avg_gen"):
            raise BundleError(f"{origin}: pooling.type must be 'fst_gen' or 'avg_gen'")
        super().check_manifest(manifest, tokenizer, origin)
        inputs = manifest.graphs["decoder"].inputs
        needed = [f"past_{k}_{i}" for i in range(cache["layers"]) for k in ("key", "value")]
        if [n for n in needed if n not in inputs]:
            raise BundleError(
                f"{origin}: graphs.decoder.inputs lack the cache inputs of {cache['layers']} layers"
            )

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        cache = self.manifest.options["cache"]
        self.layers, self.kv_heads, self.head_dim = cache["layers"], cache["kv_heads"], cache["head_dim"]
        self.eos = int(self.manifest.special_tokens["eos"])
        self.special = set(self.manifest.decode.get("special_ids", [])) | {self.eos, self.pad_id}
        sess = self.sessions["decoder"]
        self.past_dtype = _DTYPES[next(i.type for i in sess.get_inputs() if i.name.startswith("past_"))]

    def check_option(self, name: str, value: Any) -> Any:
        return positive_int(name)(value)

    def pad(self, batch: Sequence[Encoded]) -> dict[str, np.ndarray]:
        """Left padding: every prompt ends at the last column, where the answer starts."""
        longest = max(len(e.ids) for e in batch)
        ids = np.full((len(batch), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), longest), dtype=np.int64)
        for i, e in enumerate(batch):
            ids[i, longest - len(e.ids) :] = e.ids
            mask[i, longest - len(e.ids) :] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def embed_batch(
        self, batch: Sequence[Encoded], want_answers: bool, options: Mapping[str, Any]
    ) -> tuple[np.ndarray, list[str] | None]:
        budget = options["max_new_tokens"]
        avg = self.manifest.pooling.get("type") == "avg_gen"
        positions = self.manifest.options.get("max_positions")
        longest = max(len(e.ids) for e in batch)
        if positions is not None and longest + budget > positions:
            # past them a position lookup would fail inside the graph
            raise InputError(
                f"a prompt of {longest} tokens and max_new_tokens={budget} pass the model's {positions} "
                f"positions; ask for at most {positions - longest} new tokens (or export with a smaller "
                "--max-length)"
            )
        arrays = self.pad(batch)
        b = len(batch)
        mask = arrays["attention_mask"]
        # Positions as `generate` computes them: cumsum of the mask - 1, pads at 1 (masked anyway).
        position = np.where(mask == 1, mask.cumsum(-1) - 1, 1)
        empty = np.zeros((b, self.kv_heads, 0, self.head_dim), dtype=self.past_dtype)
        past = {f"past_{k}_{i}": empty for i in range(self.layers) for k in ("key", "value")}
        feed = {"input_ids": arrays["input_ids"], "attention_mask": mask, "position_ids": position, **past}
        states: list[np.ndarray] = []  # per pass g: (B, H') s_g, the state that chose token g
        tokens: list[np.ndarray] = []  # per pass g: (B,) token g
        done = np.zeros(b, dtype=bool)
        while True:
            out = self.run("decoder", feed)
            states.append(out["last_hidden"].astype(np.float32))
            if len(tokens) == budget:
                break  # the extra pass for avg_gen's s_1 (below): its token is not part of the answer
            nxt = np.where(done, self.pad_id, out["logits"].argmax(-1))  # (B,)
            tokens.append(nxt)
            done |= nxt == self.eos
            finished = done.all() or len(tokens) == budget
            if finished and not (avg and len(states) == 1):
                break
            mask = np.concatenate([mask, np.ones((b, 1), dtype=np.int64)], axis=1)
            position = position[:, -1:] + 1
            feed = {
                "input_ids": nxt[:, None].astype(np.int64),
                "attention_mask": mask,
                "position_ids": position,
                **{n.replace("present", "past"): out[n] for n in out if n.startswith("present_")},
            }
            if finished:
                budget = len(tokens)  # one more pass for s_1, then stop
        gen = np.stack(tokens, axis=1)  # (B, G)
        emb = states[0]  # (B, H'): fst_gen
        if avg:
            stack = np.stack(states[: gen.shape[1]], axis=1)  # (B, G, H'): s_0 .. s_{G-1}
            keep = np.array([[t not in self.special for t in row] for row in gen], dtype=np.float32)  # (B, G)
            keep[:, 0] = 1.0  # s_0 always counts
            lone = keep[:, 1:].sum(1) == 0  # (B,): no s_g (g >= 1) counts -> mean(s_0, s_1)
            emb = (stack * keep[:, :, None]).sum(1) / keep.sum(1, keepdims=True)
            emb[lone] = (states[0][lone] + states[1][lone]) / 2
        answers = [self.decode_answer(row) for row in gen] if want_answers else None
        return emb, answers
