"""Sentence-transformers encoders (recipe `sentence-embedding`): pooling and Dense in the graph.

Scope: the model sees `instruction + text` (the instruction is an optional query prefix, "" for
none); the graph pools (mean / cls / max, as the checkpoint's Pooling module says) over the
positions from `pool_start` on, and applies its Dense layers; the manifest's post-processing
L2-normalises when the checkpoint has a Normalize module. `pool_start` is 0, or, when the Pooling
module leaves the prompt out, the prefix's token count (the manifest's `pooling.pool_start` rule).
There is no answer.
"""

from __future__ import annotations

from .pipeline import EmbeddingGraphPipeline


class SentenceEncoderPipeline(EmbeddingGraphPipeline):
    family = "sentence-encoder"
