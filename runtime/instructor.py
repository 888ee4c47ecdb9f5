"""INSTRUCTOR embedders (recipe `instructor`): the text pooled, the instruction left out.

Scope: the model sees `(instruction + text).strip()`; the graph mean-pools the last hidden states
from position `pool_start` on (where the attention mask is 1) and applies the Dense projection;
the manifest's post-processing L2-normalises. `pool_start` (B,) is a graph input, one per text,
counted by the manifest's `pooling.pool_start` rule (the stripped instruction's tokens - 1), so a
batch can mix instructions of different lengths. There is no answer.
"""

from __future__ import annotations

from tokenizers import Tokenizer

from inbedder.errors import BundleError

from .bundle import Manifest
from .pipeline import EmbeddingGraphPipeline


class InstructorPipeline(EmbeddingGraphPipeline):
    family = "instructor"
    recipes = ("instructor",)

    @classmethod
    def check_manifest(cls, manifest: Manifest, tokenizer: Tokenizer, origin: str) -> None:
        if "pool_start" not in manifest.pooling:  # without it the instruction would be pooled too
            raise BundleError(f"{origin}: pooling.pool_start is missing (which tokens are the text's)")
        super().check_manifest(manifest, tokenizer, origin)
