"""Slices of the built-in evaluation set for tests of the quantizer's mechanics on tiny models.

Every category of each part is still in (the parts come in category runs; a stride keeps some of
each). The full 1,200 pairs per quantize would slow CI for nothing those tests look at; the full
built-in set is exercised on real weights (test_quantize's MiniLM test, the CLI test).
"""

from __future__ import annotations

from inbedder.runtime.samples import calibration_pairs, heldout_pairs

CAL = calibration_pairs()[::12]
HELD = heldout_pairs()[::30]
SMALL = {"calibration": CAL, "heldout": HELD}
