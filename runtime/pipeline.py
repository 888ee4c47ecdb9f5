"""The pipeline a bundle family runs: tokenize -> run graph(s) -> pool, as small overridable steps.

Scope: the base class every family's pipeline derives from (fastembed-style stages) and the
registry that maps a manifest's `family` to its pipeline. The `Embedder` owns input checking,
length-sorted batching, order restoring and post-processing; a pipeline sees one batch at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tokenizers import Tokenizer

from .bundle import BundleError, Manifest
from .prompt import Encoded, PromptTokenizer, pad_batch
from .session import make_session

_REGISTRY: dict[str, type[Pipeline]] = {}


def register(cls: type[Pipeline]) -> type[Pipeline]:
    _REGISTRY[cls.family] = cls
    return cls


def pipeline_for(manifest: Manifest) -> type[Pipeline]:
    try:
        return _REGISTRY[manifest.family]
    except KeyError:
        raise BundleError(
            f"bundle family {manifest.family!r} is not supported by this runtime "
            f"(known: {', '.join(sorted(_REGISTRY))})"
        ) from None


# transformers' `clean_up_tokenization` (applied by its decode when the tokenizer asks for it).
_CLEANUPS = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
    (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)  # fmt: skip


class Pipeline:
    """Base pipeline: one tokenizer, one or more ONNX sessions, stages to override."""

    family: ClassVar[str] = ""
    answers: ClassVar[bool] = True  # whether the family produces answer strings
    options: ClassVar[Mapping[str, Any]] = {}  # per-call options and their defaults

    def __init__(self, root: Path, manifest: Manifest, device: str, threads: int | None):
        self.root = root
        self.manifest = manifest
        self.device = device
        self.tokenizer = Tokenizer.from_file(str(root / manifest.tokenizer_file))
        self.prompts = PromptTokenizer(self.tokenizer, manifest.prompt, manifest.truncation)
        self.sessions = {
            role: make_session(root / g.file, device, threads) for role, g in manifest.graphs.items()
        }
        self.pad_id = int(manifest.special_tokens.get("pad", 0))

    # -- stages ---------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], instructions: Sequence[str], truncation: str) -> list[Encoded]:
        return [self.prompts.encode(t, i, truncation) for t, i in zip(texts, instructions, strict=True)]

    def feed(self, role: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The inputs graph `role` declares, taken from `arrays`."""
        return {name: arrays[name] for name in self.manifest.graphs[role].inputs}

    def run(self, role: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.manifest.graphs[role]
        outs = self.sessions[role].run(list(spec.outputs), self.feed(role, arrays))
        return dict(zip(spec.outputs, outs, strict=True))

    def pad(self, batch: Sequence[Encoded]) -> dict[str, np.ndarray]:
        return pad_batch(batch, self.pad_id)

    def embed_batch(
        self, batch: Sequence[Encoded], want_answers: bool, **options: Any
    ) -> tuple[np.ndarray, list[str] | None]:
        """(B, D) float32 embeddings (before post-processing) and, if asked, B answer strings."""
        raise NotImplementedError

    def decode_answer(self, ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(list(map(int, ids)), skip_special_tokens=True)
        if self.manifest.decode.get("clean_up_tokenization_spaces"):
            for a, b in _CLEANUPS:
                text = text.replace(a, b)
        return text
