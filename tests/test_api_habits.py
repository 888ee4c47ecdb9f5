"""What sentence-transformers / fastembed users pass and expect: iterables, aliases, output
precisions, a streaming `embed`, `similarity`, and the small accessors."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from inbedder import Embedder, InputError

TEXTS = ["I love cats!", "The flight was late.", "ok", "She got the job she had dreamed about for years."]
INSTRUCTION = "What happened?"


@pytest.fixture(scope="module")
def emb(masked_bundle: Path) -> Embedder:
    return Embedder(masked_bundle)


def test_any_iterable_of_str(emb: Embedder):
    want = emb.encode(TEXTS, INSTRUCTION)
    for given in (tuple(TEXTS), (t for t in TEXTS), np.array(TEXTS), iter(TEXTS)):
        np.testing.assert_allclose(emb.encode(given, INSTRUCTION), want, atol=1e-6)
    with pytest.raises(TypeError, match="texts must be a str or an iterable of str"):
        emb.encode(b"bytes", INSTRUCTION)
    with pytest.raises(TypeError, match=r"texts\[1\] must be str, got int"):
        emb.encode(iter(["a", 1]), INSTRUCTION)


def test_aliases(emb: Embedder):
    a = emb.encode(TEXTS, INSTRUCTION, normalize=True)
    np.testing.assert_allclose(emb.encode(TEXTS, INSTRUCTION, normalize_embeddings=True), a, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb.encode(TEXTS, prompt=INSTRUCTION, normalize=True), a, atol=1e-6)
    with pytest.raises(InputError, match="normalize= and normalize_embeddings= name the same argument"):
        emb.encode(TEXTS, INSTRUCTION, normalize=True, normalize_embeddings=False)
    with pytest.raises(InputError, match="instruction= and prompt= name the same argument"):
        emb.encode(TEXTS, INSTRUCTION, prompt="Other?")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['convert_to_tensor'\]"):
        emb.encode(TEXTS, INSTRUCTION, convert_to_tensor=True)


def test_convert_to_numpy_false_gives_a_list_of_vectors(emb: Embedder):
    rows = emb.encode(TEXTS, INSTRUCTION, convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == len(TEXTS) and all(r.shape == (emb.dim,) for r in rows)
    np.testing.assert_allclose(np.stack(rows), emb.encode(TEXTS, INSTRUCTION), atol=1e-6)


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_output_precision_as_sentence_transformers(emb: Embedder, precision: str):
    st_quant = pytest.importorskip("sentence_transformers.quantization")
    full = emb.encode(TEXTS, INSTRUCTION)
    got = emb.encode(TEXTS, INSTRUCTION, precision=precision)
    want = st_quant.quantize_embeddings(full, precision=precision)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    with pytest.raises(InputError, match="precision must be one of"):
        emb.encode(TEXTS, INSTRUCTION, precision="int4")
    if precision.endswith("int8"):
        with pytest.raises(InputError, match="give more than one"):
            emb.encode(TEXTS[:1], INSTRUCTION, precision=precision)


def test_output_float16(emb: Embedder):
    got = emb.encode(TEXTS, INSTRUCTION, precision="float16")
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, emb.encode(TEXTS, INSTRUCTION).astype(np.float16))


def test_embed_streams_in_chunks(emb: Embedder):
    want, answers = emb.encode(TEXTS * 3, INSTRUCTION, return_answers=True)
    got = list(emb.embed(iter(TEXTS * 3), INSTRUCTION, chunk_size=5, return_answers=True))
    assert [a for _, a in got] == answers
    np.testing.assert_allclose(np.stack([v for v, _ in got]), want, atol=1e-5)
    # An endless input: only what is asked for is read.
    endless = itertools.cycle(TEXTS)
    first = list(itertools.islice(emb.embed(endless, INSTRUCTION, chunk_size=2), 3))
    np.testing.assert_allclose(np.stack(first), want[:3], atol=1e-5)


def test_similarity_is_cosine(emb: Embedder):
    a = emb.encode(TEXTS[:2], INSTRUCTION)
    b = emb.encode(TEXTS, INSTRUCTION)
    sim = emb.similarity(a, b)
    assert sim.shape == (2, 4)
    want = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    np.testing.assert_allclose(sim, want, atol=1e-6)
    np.testing.assert_allclose(emb.similarity(a[0], a[0]), [[1.0]], atol=1e-6)
    with pytest.raises(InputError, match="similarity needs"):
        emb.similarity(a, b[:, :3])


def test_accessors_repr_and_context_manager(masked_bundle: Path):
    with Embedder(masked_bundle) as e:
        assert e.get_sentence_embedding_dimension() == e.dim == 32
        assert e.max_seq_length == e.manifest.truncation.max_length
        assert "recipe='masked-answer'" in repr(e) and "dim=32" in repr(e)
        e.encode(TEXTS, INSTRUCTION)
    assert "closed" in repr(e)
    with pytest.raises(InputError, match="this Embedder is closed"):
        e.encode(TEXTS, INSTRUCTION)
