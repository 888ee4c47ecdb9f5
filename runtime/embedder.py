"""`Embedder`: the public runtime API over any bundle.

Scope: argument checking (naming the offending index), batching by token length with the original
order restored, the progress bar, post-processing (`standardize`, `l2`) and optional
normalisation. The family-specific work is the pipeline's (see `pipeline.py`).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, get_args, overload

import numpy as np

from inbedder.errors import BundleError, InputError, InputTypeError, surrogate_at

from .bundle import MANIFEST_NAME, Bundle, Manifest, load_bundle
from .cpu import check_int8_range
from .hub import resolve_bundle
from .pipeline import Pipeline, pipeline_for
from .prompt import TRUNCATION_MODES, TruncationMode
from .session import Device, ThreadOptions, resolve_device, row_ops_library
from .session_cache import cache_root
from .stamp import Verify

Texts = str | Iterable[str]
OutputPrecision = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]
OUTPUT_PRECISIONS: tuple[OutputPrecision, ...] = get_args(OutputPrecision)


def _check_unicode(name: str, s: str) -> None:
    """A lone surrogate (from a JSON escape or `surrogateescape` decoding) is not valid Unicode and
    the tokenizer cannot take it: such a text is rejected, never silently replaced."""
    where = surrogate_at(s)
    if where is not None:
        raise InputError(
            f"{name} contains a lone surrogate U+{ord(s[where]):04X} at character {where}: not valid "
            "Unicode; such texts are rejected (fix or drop it)"
        )


def _check_texts(texts: object) -> list[str]:
    """A list of the texts: any iterable of str (a list, tuple, generator, numpy string array)."""
    if isinstance(texts, np.ndarray):
        texts = texts.tolist() if texts.ndim == 1 else texts
    if isinstance(texts, (str, bytes, Mapping)) or not isinstance(texts, Iterable):
        raise InputTypeError(f"texts must be a str or an iterable of str, got {type(texts).__name__}")
    if not isinstance(texts, Sequence):
        texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputTypeError(f"texts[{i}] must be str, got {type(t).__name__}")
        _check_unicode(f"texts[{i}]", t)
    return list(texts)


def _check_instructions(instruction: object, n: int) -> list[str]:
    if isinstance(instruction, str):
        _check_unicode("instruction", instruction)
        return [instruction] * n
    if isinstance(instruction, bytes) or not isinstance(instruction, Sequence):
        raise InputTypeError(
            f"instruction must be a str or a list of str (one per text), got {type(instruction).__name__}"
        )
    if len(instruction) != n:
        raise InputError(f"got {len(instruction)} instructions for {n} texts; give one, or one per text")
    for i, s in enumerate(instruction):
        if not isinstance(s, str):
            raise InputTypeError(f"instruction[{i}] must be str, got {type(s).__name__}")
        _check_unicode(f"instruction[{i}]", s)
    return list(instruction)


def postprocess(emb: np.ndarray, steps: Sequence[str]) -> np.ndarray:
    """Apply the manifest's post-processing steps to (N, D) embeddings."""
    for step in steps:
        if step == "standardize":
            # (x - mean(x)) / std(x), unbiased std, per vector (recipe masked-answer-pair).
            mu = emb.mean(axis=1, keepdims=True)
            sd = emb.std(axis=1, ddof=1, keepdims=True)
            emb = (emb - mu) / np.maximum(sd, 1e-12)
        elif step == "l2":
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        else:
            raise BundleError(f"unknown post-processing step {step!r} in the manifest")
    return emb.astype(np.float32, copy=False)


class Embedder:
    """Instruction-following embeddings from a bundle, with onnxruntime only.

    >>> emb = Embedder("bundles/inbedder-roberta-large")
    >>> vecs, answers = emb.encode(["I love cats"], instruction="What animal?", return_answers=True)

    `threads`: onnxruntime intra-op threads (default: the cores this process may run on);
    `spinning`: let idle pool threads busy-wait (off: better on a shared CPU; see `ThreadOptions`).
    `verify`: "stamp" (default), "full" or "none", how file checksums are checked (`load_bundle`).
    `session_cache`: a directory where each graph is kept as onnxruntime optimized it for this
    machine, weights pre-packed, so that later opens skip that work (runtime/session_cache.py;
    CPU only; about twice the graph's size on disk). None (default): no cache.
    `row_ops`: the path of inbedder's operator library (libinbedder_row_ops.so, built with the
    native runtime): CPU sessions then run a graph's row-ops form when the bundle has one (fused
    per-token int8 passes, bit-identical outputs). None (default): the stock graphs.
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike[str],
        device: Device = "cpu",
        threads: int | None = None,
        *,
        verify: Verify | bool = "stamp",
        spinning: bool = False,
        session_cache: str | os.PathLike[str] | None = None,
        row_ops: str | os.PathLike[str] | None = None,
    ):
        self.bundle_dir = resolve_bundle(bundle_dir)  # a directory, or a hub name fetched into the cache
        self.device = resolve_device(device)
        self.threads = ThreadOptions(threads, spinning)  # checked before anything is read
        cache = cache_root(session_cache)
        lib = row_ops_library(row_ops)

        def build(bundle: Bundle) -> tuple[Manifest, Pipeline]:
            # Run while this version of the bundle is locked: every file comes from it.
            if self.device == "cpu":  # CUDA's int8 kernels do not use MLAS's u8 x s8 pair sums
                m = bundle.manifest
                check_int8_range(m.options, m.precision, str(bundle.root / MANIFEST_NAME))
            pipeline = pipeline_for(bundle.manifest)(bundle, self.device, self.threads, cache, lib)
            return bundle.manifest, pipeline

        loaded: tuple[Manifest, Pipeline] = load_bundle(self.bundle_dir, build, verify=verify)
        self.manifest, self.pipeline = loaded

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    @overload
    def encode(
        self, texts: Texts, instruction: str | Sequence[str] | None = ...,
        *, return_answers: Literal[False] = ..., **kw: Any,
    ) -> Any: ...  # fmt: skip
    @overload
    def encode(
        self, texts: Texts, instruction: str | Sequence[str] | None = ...,
        *, return_answers: Literal[True], **kw: Any,
    ) -> tuple[Any, list[str]]: ...  # fmt: skip
    @overload
    def encode(
        self, texts: Texts, instruction: str | Sequence[str] | None = ...,
        *, return_answers: bool, **kw: Any,
    ) -> Any: ...  # fmt: skip

    def encode(
        self,
        texts: Texts,
        instruction: str | Sequence[str] | None = None,
        *,
        prompt: str | None = None,
        batch_size: int = 32,
        normalize: bool | None = None,
        normalize_embeddings: bool | None = None,
        show_progress_bar: bool | None = None,
        return_answers: bool = False,
        truncation: TruncationMode = "input",
        convert_to_numpy: bool = True,
        precision: OutputPrecision = "float32",
        **options: Any,
    ) -> Any:
        """Embed `texts` (a str, or any iterable of str) under `instruction` (one string, or one
        per text; `prompt=` is the same, as sentence-transformers calls it).

        Returns float32 (N, dim) (or (dim,) for a single string) and, with `return_answers`, the
        model's answer for each text. Texts are batched by token length; results do not depend on
        `batch_size` or on which texts share a batch. `truncation`: "input" (cut the end of the
        text, keep template, instruction and answer slots) or "reference" (the published rule).
        `normalize` (alias `normalize_embeddings`) L2-normalises. `precision` quantizes the output
        as sentence-transformers' `quantize_embeddings` does: "float16"; "int8" / "uint8" (255 steps
        between each dimension's min and max over the texts of this call, so a vector depends on
        the others); "binary" / "ubinary" (sign bits packed 8 per byte, int8 offset by -128 /
        uint8). `convert_to_numpy=False` gives a list of 1-D arrays. Family-specific options (e.g.
        `decode_steps`) are listed in `self.pipeline.options`; one not given takes the bundle's
        default (`manifest.options`), else the family's.
        """
        single = isinstance(texts, str)
        items = _check_texts([texts] if single else texts)
        if instruction is None and prompt is None and self.pipeline.needs_instruction:
            raise InputError(
                f"this bundle ({self.manifest.recipe}) embeds a text under an instruction: pass "
                'instruction= (or "" to embed under an empty one)'
            )
        instructions = _check_instructions(
            _alias("instruction", instruction, "prompt", prompt, ""), len(items)
        )
        norm = bool(_alias("normalize", normalize, "normalize_embeddings", normalize_embeddings, False))
        if precision not in OUTPUT_PRECISIONS:
            raise InputError(f"precision must be one of {OUTPUT_PRECISIONS}, got {precision!r}")
        if convert_to_numpy is not True and convert_to_numpy is not False:
            raise InputTypeError(f"convert_to_numpy must be a bool, got {type(convert_to_numpy).__name__}")
        vecs, answers, _ = self._embed(
            items, instructions, batch_size, show_progress_bar, return_answers, truncation, options
        )
        if norm:
            vecs = postprocess(vecs, ("l2",))
        out: Any = quantize_output(vecs, precision)
        if single:
            out = out[0]
        elif not convert_to_numpy:
            out = list(out)
        if return_answers:
            return out, (answers[0] if single else answers)
        return out

    def _embed(
        self,
        items: list[str],
        instructions: list[str],
        batch_size: int,
        show_progress_bar: bool | None,
        return_answers: bool,
        truncation: str,
        options: dict[str, Any],
        on_batch: Callable[[int], object] | None = None,
    ) -> tuple[np.ndarray, list[str], int]:
        """(N, D) float32 after the manifest's post-processing, the answers ("" if not asked) and
        how many prompts were truncated. `on_batch(n)` is called after each batch of n texts."""
        if not self.pipeline.sessions:
            raise InputError("this Embedder is closed")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
        if truncation not in TRUNCATION_MODES:
            raise InputError(f"truncation must be one of {TRUNCATION_MODES}, got {truncation!r}")
        resolved = self.pipeline.resolve_options(options)
        if return_answers and not self.pipeline.answers:
            raise InputError(
                f"this bundle ({self.manifest.recipe}) embeds texts without answering; "
                "return_answers=True is not available"
            )
        dim = self.manifest.embedding_dim
        out = np.zeros((len(items), dim), dtype=np.float32)
        answers: list[str] = [""] * len(items)
        encoded = self.pipeline.tokenize(items, instructions, truncation)
        # Longest first, like the reference: memory peaks show up at once and pads are few.
        order = sorted(range(len(items)), key=lambda i: -len(encoded[i].ids))
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        if show_progress_bar is None:
            show_progress_bar = sys.stderr.isatty() and len(batches) > 1
        steps: Iterable[list[int]] = batches
        if show_progress_bar:
            # imported here: tqdm.auto costs ~50 ms of `import inbedder`, and most calls show no bar
            from tqdm.auto import tqdm

            steps = tqdm(batches, desc="embedding", unit="batch")
        for idx in steps:
            emb, ans = self.pipeline.embed_batch([encoded[i] for i in idx], return_answers, resolved)
            out[idx] = emb
            if ans is not None:
                for i, a in zip(idx, ans, strict=True):
                    answers[i] = a
            if on_batch is not None:
                on_batch(len(idx))
        truncated = sum(e.truncated for e in encoded)
        return postprocess(out, self.manifest.postprocess), answers, truncated

    def encode_chunk(
        self,
        texts: Sequence[str],
        instructions: Sequence[str],
        *,
        batch_size: int = 32,
        normalize: bool = False,
        return_answers: bool = False,
        truncation: TruncationMode = "input",
        on_batch: Callable[[int], object] | None = None,
        **options: Any,
    ) -> tuple[np.ndarray, list[str] | None, int]:
        """One chunk of a batch job: (N, D) float32 vectors, the answers (None unless asked) and
        the number of truncated prompts, with `on_batch(n)` after each batch (a progress bar
        counted in texts). The same numbers as `encode` (one instruction per text)."""
        items = _check_texts(texts)
        instrs = _check_instructions(list(instructions), len(items))
        vecs, answers, truncated = self._embed(
            items, instrs, batch_size, False, return_answers, truncation, options, on_batch
        )
        if normalize:
            vecs = postprocess(vecs, ("l2",))
        return vecs, (answers if return_answers else None), truncated

    def embed(
        self,
        texts: Iterable[str],
        instruction: str | None = None,
        *,
        chunk_size: int = 1024,
        return_answers: bool = False,
        **kwargs: Any,
    ) -> Iterator[Any]:
        """Yield one vector per text (with `return_answers`, (vector, answer)), in input order,
        reading `texts` `chunk_size` at a time: for inputs that do not fit in memory. Each chunk
        goes through `encode` with `kwargs` (so batching, and a vector, never depend on the chunk)."""
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise InputError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if isinstance(texts, (str, bytes)):
            raise InputTypeError(f"texts must be an iterable of str, got {type(texts).__name__}")
        it = iter(texts)
        while chunk := list(itertools.islice(it, chunk_size)):
            got = self.encode(chunk, instruction, return_answers=return_answers, **kwargs)
            if return_answers:
                yield from zip(got[0], got[1], strict=True)
            else:
                yield from got

    def similarity(self, a: Any, b: Any) -> np.ndarray:
        """Cosine similarity matrix (N, M) of two sets of vectors (1-D inputs count as one row), as
        sentence-transformers' `similarity` with its default cosine."""
        x = np.atleast_2d(np.asarray(a, dtype=np.float32))
        y = np.atleast_2d(np.asarray(b, dtype=np.float32))
        if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
            raise InputError(f"similarity needs (N, D) and (M, D) vectors, got {x.shape} and {y.shape}")
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        sim: np.ndarray = (x @ y.T).astype(np.float32)
        return sim

    def get_sentence_embedding_dimension(self) -> int:
        return self.manifest.embedding_dim

    @property
    def max_seq_length(self) -> int:
        """Tokens a prompt may have (template, instruction and answer slots included)."""
        return self.manifest.truncation.max_length

    def close(self) -> None:
        """Release the onnxruntime sessions; later calls raise."""
        self.pipeline.sessions = {}

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.manifest
        state = "" if self.pipeline.sessions else ", closed"
        return (
            f"Embedder({str(self.bundle_dir)!r}, family={m.family!r}, recipe={m.recipe!r}, "
            f"precision={m.precision!r}, dim={m.embedding_dim}, device={self.device!r}{state})"
        )


def _alias(name: str, value: Any, alias: str, alias_value: Any, default: Any) -> Any:
    """One argument that users know by two names: either, not two different values."""
    if value is not None and alias_value is not None and value != alias_value:
        raise InputError(f"{name}= and {alias}= name the same argument; give one")
    if value is not None:
        return value
    return alias_value if alias_value is not None else default


def quantize_output(emb: np.ndarray, precision: str) -> np.ndarray:
    """(N, D) float32 -> the asked output precision, as sentence-transformers' `quantize_embeddings`."""
    if precision == "float32":
        return emb
    if precision == "float16":
        return emb.astype(np.float16)
    if precision in ("int8", "uint8"):
        if len(emb) == 0:
            return emb.astype(np.int8 if precision == "int8" else np.uint8)
        if len(emb) == 1:
            raise InputError(
                f"precision={precision!r} takes its ranges from the texts of the call: give more than one"
            )
        lo, hi = emb.min(axis=0), emb.max(axis=0)  # (D,): ranges over this call's vectors
        steps = (hi - lo) / 255
        steps = np.where(steps == 0, 1, steps)
        q: np.ndarray = np.clip(np.floor((emb - lo) / steps), 0, 255)
        return (q - 128).astype(np.int8) if precision == "int8" else q.astype(np.uint8)
    bits: np.ndarray = np.packbits(emb > 0, axis=-1)  # (N, ceil(D / 8)) uint8
    if precision == "binary":
        bits = (bits.astype(np.int16) - 128).astype(np.int8)
    return bits
