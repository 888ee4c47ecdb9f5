"""The built-in evaluation set: reproducible, large, varied, and split into disjoint parts."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import unicodedata

from inbedder.runtime import samples

# The set's digest: the held-out figures in manifests and the README are measured on exactly this
# set. Change the word lists only deliberately, then update this digest and re-measure.
DIGEST_CODE = (
    "import hashlib, json; from inbedder.runtime import samples; "
    "print(hashlib.sha256(json.dumps([[s.text, s.instruction, s.category] "
    "for s in samples.evaluation_set()], ensure_ascii=True).encode()).hexdigest())"
)


def _digest() -> str:
    import json

    rows = [[s.text, s.instruction, s.category] for s in samples.evaluation_set()]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=True).encode()).hexdigest()


def test_the_set_is_reproducible_whatever_the_hash_seed():
    """Same pairs in fresh interpreters with different string-hash seeds (no `hash()`, no set order)."""
    here = _digest()
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", DIGEST_CODE], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == here
    assert here == EXPECTED_DIGEST, "the evaluation set changed: update EXPECTED_DIGEST and re-measure"


EXPECTED_DIGEST = "c32cfa9d7a50ac371d74d6edb395d4e39ec446627be6aae100bbc0311fb51d83"


def test_size_and_split():
    cal, held = samples.calibration_samples(), samples.heldout_samples()
    assert len(samples.evaluation_set()) >= 1000
    assert len(cal) + len(held) == len(samples.evaluation_set())
    assert 250 <= len(cal) <= 350 and len(held) >= 850
    # Disjoint by text, not only by pair: the held-out part is texts the calibration never saw.
    assert not {s.text for s in cal} & {s.text for s in held}
    texts = [s.text for s in samples.evaluation_set()]
    assert len(set(texts)) == len(texts)
    assert samples.calibration_pairs() == [(s.text, s.instruction) for s in cal]
    assert samples.heldout_pairs() == [(s.text, s.instruction) for s in held]
    assert all(isinstance(t, str) and isinstance(i, str) for t, i in samples.heldout_pairs())


def test_every_category_is_in_both_parts():
    for part in (samples.calibration_samples(), samples.heldout_samples()):
        assert {s.category for s in part} == set(samples.CATEGORIES)


def _scripts(text: str) -> set[str]:
    names = set()
    for ch in text:
        if ch.isalpha():
            names.add(unicodedata.name(ch, "?").split()[0])
    return names


def test_coverage_of_what_real_use_looks_like():
    held = samples.heldout_samples()
    texts = [s.text for s in held]
    scripts = set().union(*(_scripts(t) for t in texts))
    for script in (
        "LATIN",
        "CYRILLIC",
        "GREEK",
        "CJK",
        "HIRAGANA",
        "HANGUL",
        "ARABIC",
        "HEBREW",
        "DEVANAGARI",
    ):
        assert script in scripts, script
    assert any(c in "éèçñüößøåœ" for t in texts for c in t)  # accented Latin
    assert any(unicodedata.category(c) == "So" and ord(c) > 0x1F000 for t in texts for c in t)  # emoji
    assert "" in texts  # the empty text is held out: it must hold, not just be tuned for
    assert sum(1 for t in texts if t.strip() == "") >= 5  # empty and whitespace-only
    # Past any max_length: > 3,000 characters is > 600 tokens for every vocabulary here.
    assert sum(len(t) > 3000 for t in texts) >= 20
    assert sum(len(t) < 20 for t in texts) >= 50  # short
    assert any("def " in t or "SELECT " in t for t in texts)  # code
    assert any(t.startswith("User: ") for t in texts)  # chat
    assert any(t.startswith(("- ", "1. ")) for t in texts)  # lists
    assert sum(any(c.isdigit() for c in t) for t in texts) >= 200  # numbers
    instructions = {s.instruction for s in held}
    assert len(instructions) >= 40
    assert any(not i.isascii() for i in instructions)  # instructions in other languages too


def test_validation_prompts_stay():
    assert len(samples.VALIDATION_TEXTS) == len(samples.VALIDATION_INSTRUCTIONS) >= 7
    assert "" in samples.VALIDATION_TEXTS and max(map(len, samples.VALIDATION_TEXTS)) > 3000
