"""The fidelity gate: a converted bundle against its fp32 source, both run by the runtime.

Scope: cosine similarity of each calibration embedding (after the bundle's own post-processing)
between source and candidate, answer agreement where the family answers, and the verdict against
a bound. Running both through `Embedder` checks exactly what users will run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inbedder.errors import InputError, QuantizationRefused
from inbedder.runtime import Embedder

DEFAULT_MIN_COSINE = 0.99

__all__ = ["DEFAULT_MIN_COSINE", "GateFigures", "QuantizationRefused", "compare"]


@dataclass(frozen=True)
class GateFigures:
    texts: int
    min_cosine: float
    mean_cosine: float
    worst_text: str
    answers_agree: int | None
    bound: float
    calibration: str

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.min_cosine)) and self.min_cosine >= self.bound

    def summary(self) -> str:
        ans = "" if self.answers_agree is None else f", answers agree {self.answers_agree}/{self.texts}"
        return (
            f"min cosine {self.min_cosine:.5f}, mean {self.mean_cosine:.5f} over {self.texts} "
            f"calibration texts ({self.calibration}){ans}; bound {self.bound}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "against": "fp32 source bundle, both run by inbedder.runtime",
            "calibration": self.calibration,
            "texts": self.texts,
            "min_cosine": self.min_cosine,
            "mean_cosine": self.mean_cosine,
            "answers_agree": self.answers_agree,
            "bound": self.bound,
            "passed": self.passed,
        }


def compare(
    source: Embedder,
    candidate: Embedder,
    pairs: Sequence[tuple[str, str]],
    bound: float = DEFAULT_MIN_COSINE,
    calibration: str = "built-in",
) -> GateFigures:
    if not pairs:
        raise InputError("the calibration set is empty")
    texts = [t for t, _ in pairs]
    instructions = [i for _, i in pairs]
    answers = source.pipeline.answers and candidate.pipeline.answers
    if answers:
        a, ans_a = source.encode(texts, instructions, return_answers=True)
        b, ans_b = candidate.encode(texts, instructions, return_answers=True)
        agree: int | None = sum(x == y for x, y in zip(ans_a, ans_b, strict=True))
    else:
        a, b = source.encode(texts, instructions), candidate.encode(texts, instructions)
        agree = None
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-12)  # (N,)
    cos = np.where(np.isfinite(cos), cos, -1.0)  # inf/NaN from an overflow counts as a failure
    worst = int(cos.argmin())
    return GateFigures(
        texts=len(pairs),
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        worst_text=texts[worst][:80],
        answers_agree=agree,
        bound=bound,
        calibration=calibration,
    )
