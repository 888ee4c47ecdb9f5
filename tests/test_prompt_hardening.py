"""Prompt building under hostile input (issue 11, items 5 and 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inbedder import Embedder


# -- item 9: the advice fits the mode in use --------------------------------------------------
def test_long_instruction_in_input_mode_says_shorten_the_instruction(pair_bundle: Path):
    emb = Embedder(pair_bundle)
    with pytest.raises(ValueError, match="shorter instruction") as e:
        emb.encode(["short text"], "why " * 400)
    assert "truncation='input'" not in str(e.value)
    assert "max_length 128" in str(e.value)


def test_reference_mode_still_points_to_input_mode(pair_bundle: Path):
    emb = Embedder(pair_bundle)
    with pytest.raises(ValueError, match="truncation='input'"):
        emb.encode(["word " * 400], "why " * 100, truncation="reference")
