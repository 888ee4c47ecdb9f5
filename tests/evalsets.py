"""Slices of the built-in evaluation set for tests of the quantizer's mechanics on tiny models.

Every category of each part is still in (the parts come in category runs; a stride keeps some of
each). The full 1,200 pairs per quantize would slow CI for nothing those tests look at; the full
built-in set is exercised on real weights (test_quantize's MiniLM test, the CLI test).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from inbedder.runtime.samples import calibration_pairs, heldout_pairs

CAL = calibration_pairs()[::12]
HELD = heldout_pairs()[::30]
SMALL = {"calibration": CAL, "heldout": HELD}

# Neighbours a text meets in a batch: past max_length, odd unicode (RTL override, mathematical
# letters, a ZWJ family, a ligature, NUL), empty, one repeated letter.
EXTREME = (
    "x " * 3000,
    "\u202e \U0001d518\U0001d52b\U0001d526 \U0001f469\u200d\U0001f469\u200d\U0001f467 \ufdfd \x00 " * 60,
    "",
    "\u03a9" * 700,
)
TEXTS = ("I love cats!", "The flight from Paris was delayed by four hours.", "", "東京で会いましょう 🙂")


def alone_vs_batched(emb: Any, texts, instruction: str = "What is the topic?") -> float:
    """Largest |vector alone - vector inside a batch| over `texts`, each in four extreme batches."""
    worst = 0.0
    for text in texts:
        alone = emb.encode([text], instruction)[0]
        for nb in ([EXTREME[0], EXTREME[1]], [EXTREME[2]], list(EXTREME), [EXTREME[3], text, EXTREME[0]]):
            batch = emb.encode([*nb, text], instruction)
            worst = max(worst, float(np.abs(batch[-1] - alone).max()))
    return worst
