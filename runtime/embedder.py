"""`Embedder`: the public runtime API over any bundle.

Scope: argument checking (naming the offending index), batching by token length with the original
order restored, the progress bar, post-processing (`standardize`, `l2`) and optional
normalisation. The family-specific work is the pipeline's (see `pipeline.py`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
from tqdm.auto import tqdm

from inbedder.errors import BundleError, InputError, InputTypeError

from .bundle import Manifest, load_manifest
from .pipeline import Pipeline, pipeline_for
from .prompt import TRUNCATION_MODES, TruncationMode
from .session import Device, resolve_device


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise InputTypeError(f"texts must be a list of str, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputTypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    return list(texts)


def _check_instructions(instruction: object, n: int) -> list[str]:
    if isinstance(instruction, str):
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
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike[str],
        device: Device = "cpu",
        threads: int | None = None,
        *,
        verify: bool = True,
    ):
        self.bundle_dir = Path(bundle_dir)
        self.manifest: Manifest = load_manifest(self.bundle_dir, verify=verify)
        self.device = resolve_device(device)
        self.pipeline: Pipeline = pipeline_for(self.manifest)(
            self.bundle_dir, self.manifest, self.device, threads
        )

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    @overload
    def encode(
        self, texts: Sequence[str] | str, instruction: str | Sequence[str] = ...,
        *, return_answers: Literal[False] = ..., **kw: Any,
    ) -> np.ndarray: ...  # fmt: skip
    @overload
    def encode(
        self, texts: Sequence[str] | str, instruction: str | Sequence[str] = ...,
        *, return_answers: Literal[True], **kw: Any,
    ) -> tuple[np.ndarray, list[str]]: ...  # fmt: skip
    @overload
    def encode(
        self, texts: Sequence[str] | str, instruction: str | Sequence[str] = ...,
        *, return_answers: bool, **kw: Any,
    ) -> np.ndarray | tuple[np.ndarray, list[str]]: ...  # fmt: skip

    def encode(
        self,
        texts: Sequence[str] | str,
        instruction: str | Sequence[str] = "",
        *,
        batch_size: int = 32,
        normalize: bool = False,
        show_progress_bar: bool | None = None,
        return_answers: bool = False,
        truncation: TruncationMode = "input",
        **options: Any,
    ) -> np.ndarray | tuple[np.ndarray, list[str]]:
        """Embed `texts` under `instruction` (one string, or one per text).

        Returns float32 (N, dim) (or (dim,) for a single string) and, with `return_answers`, the
        model's answer for each text. Texts are batched by token length; results do not depend on
        `batch_size` or on which texts share a batch. `truncation`: "input" (cut the end of the
        text, keep template, instruction and answer slots) or "reference" (the published rule).
        Family-specific options (e.g. `decode_steps`) are listed in `self.pipeline.options`; one not
        given takes the bundle's default (`manifest.options`), else the family's.
        """
        single = isinstance(texts, str)
        items = _check_texts([texts] if single else texts)
        instructions = _check_instructions(instruction, len(items))
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
        for idx in tqdm(batches, desc="embedding", unit="batch", disable=not show_progress_bar):
            emb, ans = self.pipeline.embed_batch([encoded[i] for i in idx], return_answers, resolved)
            out[idx] = emb
            if ans is not None:
                for i, a in zip(idx, ans, strict=True):
                    answers[i] = a
        out = postprocess(out, self.manifest.postprocess)
        if normalize:
            out = postprocess(out, ("l2",))
        if single:
            return (out[0], answers[0]) if return_answers else out[0]  # type: ignore[return-value]
        return (out, answers) if return_answers else out
