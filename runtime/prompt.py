"""Prompts and tokenization: (text, instruction) -> token ids, answer-slot positions, padded batches.

Scope: filling the manifest's prompt template in one pass, tokenizing with the bundle's
`tokenizer.json` through `tokenizers` (never transformers), the two truncation modes, locating the
answer slots, and right-padding a batch. Nothing here knows a model family by name: the manifest's
`PromptSpec` and `TruncationSpec` say everything.

Truncation modes (see README, "Long texts"):
- "input" (default): the end of the input text is cut until the whole prompt fits; the template,
  the instruction and the answer slots are always kept. If they alone do not fit, the prompt falls
  back to the reference rule.
- "reference": the tokenizer call of the published code (for InBedder: left truncation of the
  whole prompt, which drops the "### Input:" header and the start of the text).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, get_args

import numpy as np
from tokenizers import Encoding, Tokenizer

from inbedder.errors import BundleError, InputError

from .bundle import PromptSpec, TruncationSpec

TruncationMode = Literal["input", "reference"]
TRUNCATION_MODES: tuple[TruncationMode, ...] = get_args(TruncationMode)
_PLACEHOLDER = re.compile(r"\{(input|instruction)\}")


@dataclass(frozen=True)
class Encoded:
    """One tokenized prompt."""

    ids: list[int]
    type_ids: list[int]
    slots: list[int]  # positions of the answer slots in `ids` (empty when the recipe has none)
    truncated: bool
    pool_start: int = 0  # first position pooled: leading tokens (an instruction) left out


def fill(template: str, text: str, instruction: str) -> tuple[str, tuple[int, int]]:
    """Fill `{input}` and `{instruction}` in a single pass; return the string and the input's span.

    The span is (-1, -1) when the template has no `{input}`.
    """
    values = {"input": text, "instruction": instruction}
    out: list[str] = []
    pos = 0
    length = 0
    span = (-1, -1)
    for m in _PLACEHOLDER.finditer(template):
        lit = template[pos : m.start()]
        out.append(lit)
        length += len(lit)
        value = values[m.group(1)]
        if m.group(1) == "input":
            span = (length, length + len(value))
        out.append(value)
        length += len(value)
        pos = m.end()
    out.append(template[pos:])
    return "".join(out), span


_CHARS_PER_TOKEN = 8  # first guess of a head's length; doubled while it gives too few tokens
_MARGIN_TOKENS = 32  # tokens past the limit at each end of a stand-in (merges near a cut)
_CUT_SPACES = " \t\n"  # whitespace that starts a pre-token in every tokenizer


def _run_start(text: str, at: int, window: int) -> int:
    """The start of the run of whitespace nearest before `at` (within `window` characters), so
    that a cut there falls on a pre-token boundary; `at` itself when there is none."""
    lo = max(at - window, 1)
    i = at
    while i >= lo and text[i] not in _CUT_SPACES:
        i -= 1
    if i < lo:
        return at
    while i > lo and text[i - 1] in _CUT_SPACES:
        i -= 1
    return i


def _clone(tok: Tokenizer) -> Tokenizer:
    return Tokenizer.from_str(tok.to_str())


class PromptTokenizer:
    """Turns (text, instruction) pairs into `Encoded` prompts for one bundle."""

    def __init__(
        self, tokenizer: Tokenizer, prompt: PromptSpec, truncation: TruncationSpec, *, own: bool = False
    ):
        """`own=True`: the caller hands `tokenizer` over (the pipeline, which parsed it for this
        bundle and otherwise only decodes with it): it is used as is, its padding and truncation
        turned off, instead of copied (copying a 50k vocabulary costs ~0.1 s of an open)."""
        self.prompt = prompt
        self.truncation = truncation
        self.max_length = truncation.max_length
        # Three configurations of one vocabulary: untruncated (mode "input" measures, then cuts the
        # text itself), the reference rule, and pairs cut in their first segment only. The last
        # two are built on first use (parsing a 50k vocabulary costs tens of ms at load).
        self._plain = tokenizer if own else _clone(tokenizer)
        self._plain.no_padding()
        self._plain.no_truncation()
        self.slot_id: int | None = None
        if prompt.slot_token is not None:
            sid = tokenizer.token_to_id(prompt.slot_token)
            if sid is None:
                raise BundleError(f"slot token {prompt.slot_token!r} is not in the tokenizer's vocabulary")
            self.slot_id = sid
        self.slot_suffix = (prompt.slot_token or "") * prompt.answer_slots
        self.bounded = True  # long texts replaced by a stand-in (`stand_in`); False: the full text

    @cached_property
    def _ref(self) -> Tokenizer:
        tok = _clone(self._plain)
        tok.enable_truncation(
            self.max_length, strategy=self.truncation.strategy, direction=self.truncation.side
        )
        return tok

    @cached_property
    def _first_only(self) -> Tokenizer:
        tok = _clone(self._plain)
        tok.enable_truncation(self.max_length, strategy="only_first", direction="right")
        return tok

    def fixed_tokens(self) -> int:
        """Tokens of the prompt with an empty text and an empty instruction (template, answer
        slots, special tokens): what every prompt holds."""
        return len(self._encode(self._plain, self.segments("", "")[0]).ids)

    def token_count(self, text: str) -> int:
        """Tokens of `text` alone, special tokens included, never truncated."""
        return len(self._encode(self._plain, [text]).ids)

    # -- long texts: cost bounded by max_length --------------------------------------------
    def stand_in(self, text: str) -> str:
        """A short text that every truncation mode treats exactly as `text`: its head and its
        tail, each tokenizing to more than `max_length` (+ a margin) tokens, joined.

        Why the result is the same: every mode keeps at most `max_length` tokens, from the start of
        the text (mode "input", pairs) or from the end of the prompt (left truncation), and counts
        the tokens around the text's two ends (template merges). The head and the tail are cut at
        the start of a run of ASCII whitespace, where every tokenizer here (byte-level BPE,
        WordPiece, Metaspace/Unigram) starts a new pre-token, so their tokens are the full text's;
        the tokens at the junction lie in the middle, where every mode drops them. Texts without
        such whitespace near the cut (e.g. CJK) are cut at a character, and the margin absorbs the
        few merges that differ there. Cost: O(max_length) characters tokenized, not O(len(text)).
        """
        if not self.bounded:
            return text
        need = self.max_length + _MARGIN_TOKENS
        n = _CHARS_PER_TOKEN * need
        while 2 * n < len(text):
            head = text[: _run_start(text, n, n // 2)]
            tail = text[_run_start(text, len(text) - n, n // 2) :]
            if self.token_count(head) > need and self.token_count(tail) > need:
                return head + tail
            n *= 2
        return text

    # -- building strings -------------------------------------------------------------------
    def segments(self, text: str, instruction: str) -> tuple[list[str], tuple[int, int], int]:
        """Filled segments (slots appended to the last), the input's span and its segment index."""
        filled: list[str] = []
        span, where = (-1, -1), -1
        for i, tpl in enumerate(self.prompt.segments):
            s, sp = fill(tpl, text, instruction)
            if i == len(self.prompt.segments) - 1:
                s += self.slot_suffix
            if self.prompt.strip:
                lead = len(s) - len(s.lstrip())
                s = s.strip()
                if sp[0] >= 0:
                    sp = (max(sp[0] - lead, 0), min(sp[1] - lead, len(s)))
            if sp[0] >= 0:
                span, where = sp, i
            filled.append(s)
        return filled, span, where

    # -- tokenizing -------------------------------------------------------------------------
    def _encode(self, tok: Tokenizer, segs: Sequence[str]) -> Encoding:
        if len(segs) == 1:
            return tok.encode(segs[0])
        return tok.encode(segs[0], segs[1])

    def encode(self, text: str, instruction: str, truncation: str = "input") -> Encoded:
        if truncation not in TRUNCATION_MODES:
            raise InputError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}")
        # A long instruction is never cut in mode "input" but is truncated by the reference rule:
        # its stand-in gives the same prompt, as the text's does.
        text, instruction = self.stand_in(text), self.stand_in(instruction)
        segs, span, where = self.segments(text, instruction)
        if truncation == "reference":
            enc = self._encode(self._ref, segs)
            full = len(self._encode(self._plain, segs).ids)
            return self._finish(enc, truncated=full > self.max_length)
        enc = self._encode(self._plain, segs)
        if len(enc.ids) <= self.max_length:
            return self._finish(enc, truncated=False)
        if len(segs) == 2 and where == 0 and self.prompt.segments[0] == "{input}":
            # The text is a whole segment: tokenizers cuts it natively and keeps the second intact.
            try:
                return self._finish(self._encode(self._first_only, segs), truncated=True)
            except Exception:
                return self._finish(self._encode(self._ref, segs), truncated=True, fallback=instruction)
        return self._cut_input(text, instruction, enc, span, where)

    def _cut_input(
        self, text: str, instruction: str, enc: Encoding, span: tuple[int, int], where: int
    ) -> Encoded:
        """Drop tokens from the end of the input text until the prompt fits."""
        if span[0] < 0:
            return self._finish(self._encode(self._ref, self.segments(text, instruction)[0]), True)
        # Tokens lying wholly inside the input's character span, in order (byte-level BPE gives
        # some tokens, e.g. a lone space marker, an empty span: they count too).
        inside = [
            i
            for i, ((s, e), seq) in enumerate(zip(enc.offsets, enc.sequence_ids, strict=True))
            if seq == where and s >= span[0] and e <= span[1]
        ]
        keep = len(inside) - (len(enc.ids) - self.max_length)
        while keep > 0:
            cut = enc.offsets[inside[keep - 1]][1] - span[0]
            segs, _, _ = self.segments(text[:cut], instruction)
            trial = self._encode(self._plain, segs)
            if len(trial.ids) <= self.max_length:
                return self._finish(trial, truncated=True)
            keep -= max(1, len(trial.ids) - self.max_length)
        segs, _, _ = self.segments("", instruction)
        trial = self._encode(self._plain, segs)
        if len(trial.ids) <= self.max_length:
            return self._finish(trial, truncated=True)
        # Template + instruction + slots alone exceed the limit: the reference rule.
        return self._finish(self._encode(self._ref, segs), truncated=True, fallback=instruction)

    def _finish(self, enc: Encoding, truncated: bool, fallback: str | None = None) -> Encoded:
        """`fallback`: the instruction, when mode "input" fell back to the reference rule because
        the prompt without the text does not fit (the error then says so)."""
        ids = list(enc.ids)
        slots: list[int] = []
        if self.prompt.answer_slots:
            found = [i for i, t in enumerate(ids) if t == self.slot_id]
            slots = found[-self.prompt.answer_slots :]
            if len(slots) < self.prompt.answer_slots:
                if fallback is not None:
                    raise InputError(
                        f"the instruction is too long: the prompt without the text (template, "
                        f"instruction, {self.prompt.answer_slots} answer slots) exceeds the bundle's "
                        f"max_length {self.max_length} tokens, and truncation would remove answer "
                        "slots; use a shorter instruction"
                    )
                raise InputError(
                    f"truncation removed answer slots ({len(slots)} of {self.prompt.answer_slots} "
                    "left); use truncation='input' or a shorter instruction"
                )
        return Encoded(ids=ids, type_ids=list(enc.type_ids), slots=slots, truncated=truncated)


def pad_batch(batch: Sequence[Encoded], pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad a batch to its longest prompt.

    Returns int64 arrays: input_ids, attention_mask, token_type_ids (B, T), slot_positions
    (B, S) and pool_start (B,) (the first position pooled). Right padding leaves every real
    token's position unchanged, so a text's result does not depend on its neighbours.
    """
    longest = max(len(e.ids) for e in batch)
    n = len(batch)
    ids = np.full((n, longest), pad_id, dtype=np.int64)
    mask = np.zeros((n, longest), dtype=np.int64)
    types = np.zeros((n, longest), dtype=np.int64)
    for i, e in enumerate(batch):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
        types[i, : len(e.type_ids)] = e.type_ids
    slots = np.array([e.slots for e in batch], dtype=np.int64).reshape(n, -1)  # (B, S)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": types,
        "slot_positions": slots,
        "pool_start": np.array([e.pool_start for e in batch], dtype=np.int64),
    }
