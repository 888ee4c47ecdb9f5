"""Runtime behaviour: batch invariance, truncation, bad input, devices."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from inbedder import Embedder
from inbedder.errors import BundleError
from inbedder.runtime import cuda_available

TEXTS = [
    "I love cats!",
    "The flight from Paris was delayed by four hours and I missed my meeting in Chicago.",
    "ok",
    "She finally got the job she had dreamed about for years. " * 4,
    "Ça coûte 20 €, naïve café",
]


@pytest.fixture(scope="module")
def emb(masked_bundle: Path) -> Embedder:
    return Embedder(masked_bundle)


# -- batch invariance ---------------------------------------------------------------------------
def test_alone_equals_inside_padded_batch(emb: Embedder):
    together, ans_together = emb.encode(TEXTS, "What happened?", batch_size=32, return_answers=True)
    for i, t in enumerate(TEXTS):
        alone, ans_alone = emb.encode([t], "What happened?", return_answers=True)
        np.testing.assert_allclose(alone[0], together[i], atol=1e-5, rtol=0)
        assert ans_alone[0] == ans_together[i]


def test_batch_size_does_not_change_results(emb: Embedder):
    a = emb.encode(TEXTS, "What happened?", batch_size=1)
    b = emb.encode(TEXTS, "What happened?", batch_size=2)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_order_is_restored(emb: Embedder):
    fwd = emb.encode(TEXTS, "What happened?", batch_size=2)
    rev = emb.encode(TEXTS[::-1], "What happened?", batch_size=2)
    np.testing.assert_allclose(fwd, rev[::-1], atol=1e-5, rtol=0)


def test_per_text_instructions(emb: Embedder):
    instr = ["What animal?", "Where?", "What?", "Who?", "What language?"]
    mixed = emb.encode(TEXTS, instr)
    for i, t in enumerate(TEXTS):
        np.testing.assert_allclose(emb.encode([t], instr[i])[0], mixed[i], atol=1e-5, rtol=0)


def test_normalize_gives_unit_vectors(emb: Embedder):
    v = emb.encode(TEXTS, "What?", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    raw = emb.encode(TEXTS, "What?")
    np.testing.assert_allclose(v, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


# -- truncation ---------------------------------------------------------------------------------
def test_input_truncation_keeps_template_instruction_and_slots(emb: Embedder):
    pt = emb.pipeline.prompts
    limit = pt.max_length
    text = "alpha beta gamma delta " * 200  # far past the limit
    instruction = "Where did this happen?"
    enc = pt.encode(text, instruction, "input")
    assert enc.truncated and len(enc.ids) <= limit
    decoded = emb.pipeline.tokenizer.decode(enc.ids, skip_special_tokens=False)
    assert decoded.startswith("<s>### Input:\nalpha beta")  # the start of the text is kept
    assert decoded.endswith(
        "\n\n### Instruction:\nWhere did this happen?\n\n### Response:<mask><mask><mask></s>"
    )
    assert len(enc.slots) == 3 and [enc.ids[s] for s in enc.slots] == [pt.slot_id] * 3
    # As many text tokens as fit: one more word would not.
    assert len(enc.ids) >= limit - 3


def test_reference_truncation_drops_the_prompt_start(emb: Embedder):
    pt = emb.pipeline.prompts
    enc = pt.encode("alpha beta gamma delta " * 200, "Where did this happen?", "reference")
    decoded = emb.pipeline.tokenizer.decode(enc.ids, skip_special_tokens=False)
    assert len(enc.ids) == pt.max_length and enc.truncated
    assert "### Input:" not in decoded  # the header went with the start of the prompt
    assert decoded.endswith("### Response:<mask><mask><mask></s>")


def test_over_long_texts_embed_and_differ_by_mode(emb: Embedder):
    long = "alpha beta gamma delta " * 200
    a = emb.encode([long], "What?")
    b = emb.encode([long], "What?", truncation="reference")
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert np.abs(a - b).max() > 1e-4


def test_over_long_instruction_falls_back_to_reference_rule(emb: Embedder):
    pt = emb.pipeline.prompts
    enc = pt.encode("short text", "why " * 400, "input")
    ref = pt.encode("short text", "why " * 400, "reference")
    assert enc.ids == ref.ids and len(enc.slots) == 3


def test_literal_placeholder_in_input_is_not_replaced(emb: Embedder):
    pt = emb.pipeline.prompts
    segs, _, _ = pt.segments("say {instruction} now", "What?")
    assert "say {instruction} now" in segs[0]


# -- bad input ----------------------------------------------------------------------------------
def test_empty_list_gives_empty_array(emb: Embedder):
    v = emb.encode([], "What?")
    assert v.shape == (0, emb.dim) and v.dtype == np.float32
    v, answers = emb.encode([], "What?", return_answers=True)
    assert v.shape == (0, emb.dim) and answers == []


def test_single_string_gives_one_vector(emb: Embedder):
    v, a = emb.encode("I love cats!", "What animal?", return_answers=True)
    assert v.shape == (emb.dim,) and isinstance(a, str)
    np.testing.assert_allclose(v, emb.encode(["I love cats!"], "What animal?")[0], atol=1e-6)


def test_empty_string_is_embedded_as_an_empty_input(emb: Embedder):
    v = emb.encode(["", "x"], "What?")
    assert np.isfinite(v).all()
    enc = emb.pipeline.prompts.encode("", "What?")
    text = emb.pipeline.tokenizer.decode(enc.ids, skip_special_tokens=False)
    assert text == "<s>### Input:\n\n\n### Instruction:\nWhat?\n\n### Response:<mask><mask><mask></s>"


@pytest.mark.parametrize(
    ("texts", "match"),
    [
        (["ok", None], r"texts\[1\] must be str, got NoneType"),
        (["ok", "fine", 3], r"texts\[2\] must be str, got int"),
        ([b"bytes"], r"texts\[0\] must be str, got bytes"),
        (None, "texts must be a str or an iterable of str"),
        (42, "texts must be a str or an iterable of str"),
    ],
)
def test_wrong_text_types_name_the_index(emb: Embedder, texts, match):
    with pytest.raises(TypeError, match=match):
        emb.encode(texts, "What?")


def test_wrong_instructions(emb: Embedder):
    with pytest.raises(ValueError, match="got 1 instructions for 2 texts"):
        emb.encode(["a", "b"], ["What?"])
    with pytest.raises(TypeError, match=r"instruction\[1\] must be str"):
        emb.encode(["a", "b"], ["What?", None])
    with pytest.raises(TypeError, match="instruction must be a str or a list"):
        emb.encode(["a"], 5)


def test_bad_options(emb: Embedder):
    with pytest.raises(ValueError, match="batch_size"):
        emb.encode(["a"], "q", batch_size=0)
    with pytest.raises(ValueError, match="truncation"):
        emb.encode(["a"], "q", truncation="middle")
    with pytest.raises(TypeError, match="unknown option"):
        emb.encode(["a"], "q", beam_size=4)


# -- devices ------------------------------------------------------------------------------------
def test_unknown_device(masked_bundle: Path):
    with pytest.raises(ValueError, match="device must be one of"):
        Embedder(masked_bundle, device="tpu")


@pytest.mark.skipif(cuda_available(), reason="CUDA is available here")
def test_cuda_unavailable_is_an_error_not_a_fallback(masked_bundle: Path):
    with pytest.raises(RuntimeError, match="device='cuda' was asked for"):
        Embedder(masked_bundle, device="cuda")
    assert Embedder(masked_bundle, device="auto").device == "cpu"


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available(), reason="needs onnxruntime-gpu and a GPU")
def test_cuda_matches_cpu(masked_bundle: Path):
    cpu = Embedder(masked_bundle, device="cpu").encode(TEXTS, "What?")
    gpu = Embedder(masked_bundle, device="cuda")
    assert gpu.pipeline.sessions["encoder"].get_providers()[0] == "CUDAExecutionProvider"
    np.testing.assert_allclose(gpu.encode(TEXTS, "What?"), cpu, atol=1e-4, rtol=0)


def test_threads_option(masked_bundle: Path):
    a = Embedder(masked_bundle, threads=1).encode(TEXTS, "What?")
    b = Embedder(masked_bundle).encode(TEXTS, "What?")
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="threads"):
        Embedder(masked_bundle, threads=0)


def test_open_parses_the_tokenizer_once(masked_bundle: Path, monkeypatch):
    """The pipeline hands its tokenizer to the prompt builder rather than a copy (a copy re-parses
    the vocabulary: ~0.1 s of a 50k-vocabulary open); the two references stay one object and the
    vectors are those of a copied tokenizer."""
    from tokenizers import Tokenizer

    from inbedder.runtime import prompt as prompt_mod

    want = Embedder(masked_bundle).encode(["a cat", "the long committee meeting"], "q")
    parsed = []
    real = Tokenizer.from_str

    def counting(text):
        parsed.append(len(text))
        return real(text)

    monkeypatch.setattr(prompt_mod.Tokenizer, "from_str", staticmethod(counting))
    emb = Embedder(masked_bundle)
    assert len(parsed) == 1
    assert emb.pipeline.prompts._plain is emb.pipeline.tokenizer
    np.testing.assert_array_equal(emb.encode(["a cat", "the long committee meeting"], "q"), want)


def test_open_lets_go_of_the_tokenizer_text_before_the_weights(masked_bundle: Path, monkeypatch):
    """The open's peak memory: the tokenizer's text is taken from the bundle (not held while the
    sessions load) and the C heap's free pages are returned between the parse and the first
    session (runtime/heap.py); the vectors are unchanged."""
    from inbedder.runtime import bundle as bundle_mod
    from inbedder.runtime import pipeline as pipeline_mod

    want = Embedder(masked_bundle).encode(["a cat"], "q")
    seen: list[str] = []
    bundles: list[bundle_mod.Bundle] = []
    real_release, real_session = pipeline_mod.release_free_memory, pipeline_mod.make_session
    real_init = pipeline_mod.Pipeline.__init__

    def init(self, bundle, *a, **k):
        bundles.append(bundle)
        real_init(self, bundle, *a, **k)

    def release():
        seen.append("release" if bundles[0].tokenizer_json is None else "release, text held")
        return real_release()

    def session(*a, **k):
        seen.append("session")
        return real_session(*a, **k)

    monkeypatch.setattr(pipeline_mod.Pipeline, "__init__", init)
    monkeypatch.setattr(pipeline_mod, "release_free_memory", release)
    monkeypatch.setattr(pipeline_mod, "make_session", session)
    emb = Embedder(masked_bundle)
    assert seen[:2] == ["release", "session"]
    assert seen.count("release") == 1
    np.testing.assert_array_equal(emb.encode(["a cat"], "q"), want)
    with pytest.raises(BundleError, match="already taken"):
        bundles[0].take_tokenizer_json()


def test_release_free_memory():
    """glibc's malloc_trim where the C library is glibc (this suite's Linux); False elsewhere."""
    import platform

    from inbedder.runtime.heap import release_free_memory

    done = release_free_memory()
    assert done is (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
