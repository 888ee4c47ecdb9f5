"""The fidelity gate: a converted bundle against its fp32 source, both run by the runtime.

Scope: cosine similarity of each evaluation embedding (after the bundle's own post-processing)
between source and candidate, answer agreement where the family answers, on two parts of the
evaluation set: the *calibration* part (the quantizer chooses its settings on it) and the
*held-out* part (never used to choose; the bound applies to it). Running both bundles through
`Embedder` checks exactly what users will run. The source's outputs are computed once per part
(`reference_outputs`) and reused for every attempt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inbedder.errors import InputError, QuantizationRefused
from inbedder.runtime import Embedder

DEFAULT_MIN_COSINE = 0.99  # int8's and fp16's
# The bound on the held-out minimum cosine each precision is refused below by default. int4's is
# lower because int4 is lossier: with the default settings (block 32, asymmetric, accuracy level
# 4) and its fallback (8 of 25 weight MatMuls at per-token int8), all-MiniLM-L6-v2's held-out
# minimum is 0.940 (p1 0.954, mean 0.979; every MatMul int4: 0.888); 0.93 leaves 0.01 below that
# for models and machines that round a little differently, and still refuses a broken conversion
# (README "int4 (CPU)").
DEFAULT_MIN_COSINES = {"int8": DEFAULT_MIN_COSINE, "fp16": DEFAULT_MIN_COSINE, "int4": 0.93}

__all__ = [
    "DEFAULT_MIN_COSINE",
    "DEFAULT_MIN_COSINES",
    "GateFigures",
    "PartFigures",
    "QuantizationRefused",
    "Reference",
    "bit_identical",
    "choose_attempt",
    "measure",
    "reference_outputs",
]


def bit_identical(a: np.ndarray, b: np.ndarray) -> bool:
    """The same dtype, shape and bits (NaN where NaN): what a graph rewrite that claims to change
    no output (row operators, answers on request) is checked by."""
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


@dataclass(frozen=True)
class Reference:
    """The fp32 source's outputs on one part of the evaluation set."""

    pairs: tuple[tuple[str, str], ...]
    vectors: np.ndarray  # (N, D)
    answers: tuple[str, ...] | None  # None: the family gives no answers


def reference_outputs(source: Embedder, pairs: Sequence[tuple[str, str]], part: str) -> Reference:
    if not pairs:
        raise InputError(f"the {part} set is empty")
    texts, instructions = [t for t, _ in pairs], [i for _, i in pairs]
    if source.pipeline.answers:
        vectors, answers = source.encode(texts, instructions, return_answers=True)
        return Reference(tuple(pairs), vectors, tuple(answers))
    return Reference(tuple(pairs), source.encode(texts, instructions), None)


@dataclass(frozen=True)
class PartFigures:
    """Candidate vs source on one part: cosine statistics and answer agreement."""

    part: str  # "calibration" | "held-out"
    source: str  # "built-in" | "user"
    texts: int
    min_cosine: float
    p1_cosine: float  # 1st percentile (numpy's linear interpolation)
    mean_cosine: float
    below_bound: int  # texts under the gate's bound
    worst_text: str
    answers_agree: int | None

    def summary(self) -> str:
        ans = "" if self.answers_agree is None else f", answers agree {self.answers_agree}/{self.texts}"
        return (
            f"{self.part} ({self.source}, {self.texts} texts): min cosine {self.min_cosine:.5f}, "
            f"p1 {self.p1_cosine:.5f}, mean {self.mean_cosine:.5f}{ans}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "texts": self.texts,
            "min_cosine": self.min_cosine,
            "p1_cosine": self.p1_cosine,
            "mean_cosine": self.mean_cosine,
            "below_bound": self.below_bound,
            "answers_agree": self.answers_agree,
            "answer_agreement": None if self.answers_agree is None else self.answers_agree / self.texts,
        }


def measure(reference: Reference, candidate: Embedder, part: str, source: str, bound: float) -> PartFigures:
    texts = [t for t, _ in reference.pairs]
    instructions = [i for _, i in reference.pairs]
    agree: int | None = None
    if reference.answers is not None and candidate.pipeline.answers:
        b, ans_b = candidate.encode(texts, instructions, return_answers=True)
        agree = sum(x == y for x, y in zip(reference.answers, ans_b, strict=True))
    else:
        b = candidate.encode(texts, instructions)
    a = reference.vectors
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)  # (N,)
    cos = np.where(np.isfinite(cos), cos, -1.0)  # inf/NaN from an overflow counts as a failure
    worst = int(cos.argmin())
    return PartFigures(
        part=part,
        source=source,
        texts=len(texts),
        min_cosine=float(cos.min()),
        p1_cosine=float(np.percentile(cos, 1)),
        mean_cosine=float(cos.mean()),
        below_bound=int((cos < bound).sum()),
        worst_text=texts[worst][:80],
        answers_agree=agree,
    )


@dataclass(frozen=True)
class GateFigures:
    """The verdict: the bound applies to the held-out part; calibration is reported beside it."""

    calibration: PartFigures
    heldout: PartFigures
    bound: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.heldout.min_cosine)) and self.heldout.min_cosine >= self.bound

    def summary(self) -> str:
        return f"{self.heldout.summary()}; {self.calibration.summary()}; bound {self.bound} on held-out min"

    def as_json(self) -> dict[str, Any]:
        h = self.heldout
        return {
            "against": "fp32 source bundle, both run by inbedder.runtime",
            "gated_on": "held-out",
            "bound": self.bound,
            "passed": self.passed,
            # The gated figures at the top (what a reader wants first); both parts in full below.
            "texts": h.texts,
            "min_cosine": h.min_cosine,
            "p1_cosine": h.p1_cosine,
            "mean_cosine": h.mean_cosine,
            "answers_agree": h.answers_agree,
            "heldout": h.as_json(),
            "calibration": self.calibration.as_json(),
        }


def choose_attempt(calibration_min: Sequence[float], select_bound: float) -> int | None:
    """Which attempt of a fastest-first search to accept, from the calibration minima so far.

    The first attempt reaching `select_bound` (all earlier ones were below it, hence worse), or
    None while none has. When the search ends without one, `best_attempt` is the fallback.
    """
    for i, c in enumerate(calibration_min):
        if np.isfinite(c) and c >= select_bound:
            return i
    return None


def best_attempt(calibration_min: Sequence[float]) -> int:
    """The attempt with the highest calibration minimum, the earliest (fastest) among equals: a
    setting is never accepted over an earlier, better one."""
    if not calibration_min:
        raise InputError("no attempts to choose from")
    scores = [c if np.isfinite(c) else -np.inf for c in calibration_min]
    return int(np.argmax(scores))  # argmax returns the first maximum
