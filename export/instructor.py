"""INSTRUCTOR models (hkunlp/instructor-base/-large/-xl; sentence-transformers layout): family
`instructor`.

Scope: the recipe `instructor`; load the T5 encoder and the bias-free Dense layer named by
`modules.json`, trace the encoder-only graph (optimum's and sentence-transformers' ONNX paths
fail on T5 because they build the whole encoder-decoder), and describe the recipe in the
manifest. The number of instruction
tokens left out of the mean is the graph input `pool_start` (B,), never a traced constant.

Graph inputs: input_ids, attention_mask (B, T) int64, pool_start (B,) int64.
Output: embedding (B, D): mean of the last hidden states over positions >= pool_start where the
mask is 1 (sum(h m) / max(sum(m), 1e-9)), times the Dense weight: the sentence-encoder family's
graph with mean pooling and one Dense layer. L2 normalisation is the manifest's post-processing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from inbedder.catalog import known_for
from inbedder.errors import InputError
from inbedder.runtime.bundle import GraphSpec, Manifest

from .family import Checkpoint, ExportFamily, GraphExport, register
from .reference import ReferenceOutput, unpadded_ids
from .sentence_encoder import SentenceEncoderGraph, dense_layer, local_dir
from .specs import Recipe
from .trace import load_fast_tokenizer, source_record, token_ids_record


@register
class InstructorFamily(ExportFamily):
    name = "instructor"
    recipes = (
        Recipe(
            name="instructor",
            segments=("{instruction}{input}",),
            truncation_side="right",
            postprocess=("l2",),
            strip=True,
            description="INSTRUCTOR: (instruction + text).strip(), T5 encoder, mean over the text tokens "
            "only, Dense without bias, L2",
        ),
    )
    default_recipe = "instructor"
    known_models: ClassVar[Mapping[str, str]] = known_for("instructor")
    priority = 10  # a T5 sentence-transformers layout is INSTRUCTOR's before any generic encoder's

    @classmethod
    def claims(cls, checkpoint: Checkpoint) -> bool:
        return checkpoint.model_type == "t5" and bool(checkpoint.st_modules)

    def load(self) -> None:
        from transformers import T5EncoderModel

        root = local_dir(self.source, self.revision)
        self.tokenizer = load_fast_tokenizer(root)
        self.model = T5EncoderModel.from_pretrained(root, attn_implementation="eager").eval()
        modules = json.loads((root / "modules.json").read_text())
        dense = [m for m in modules if str(m.get("type", "")).endswith("Dense")]
        if len(dense) != 1:
            raise InputError(f"{root}/modules.json: expected one Dense module, found {len(dense)}")
        layer = dense_layer(root / dense[0]["path"])
        if not isinstance(layer, nn.Linear):
            raise InputError(f"{root / dense[0]['path']}: INSTRUCTOR's Dense has no activation; this one has")
        self.dense: nn.Linear = layer
        st = root / "sentence_bert_config.json"
        self.max_seq = json.loads(st.read_text()).get("max_seq_length") if st.exists() else None

    def max_length(self, asked: int | None) -> int:
        return int(asked or self.max_seq or self.recipe.max_length)

    def graphs(self, max_length: int) -> list[GraphExport]:
        b, t = 2, 12
        ids = torch.randint(3, 20, (b, t))
        mask = torch.ones(b, t, dtype=torch.long)
        mask[1, 8:] = 0
        start = torch.tensor([3, 5])
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
        axes.update({"pool_start": {0: "batch"}, "embedding": {0: "batch"}})
        graph = SentenceEncoderGraph(self.model, ("mean",), [self.dense], use_types=False).eval()
        names = ("input_ids", "attention_mask", "pool_start")
        return [GraphExport("encoder", graph, (ids, mask, start), names, ("embedding",), axes, fusion="t5")]

    def manifest(self, graphs: Mapping[str, GraphSpec], max_length: int) -> Manifest:
        dense = self.dense.weight
        return self.recipe_manifest(
            graphs,
            max_length,
            embedding_dim=int(dense.shape[0]),
            pooling={
                "type": "mean",
                "in_graph": True,
                # the first len(tok(instruction.strip())) - 1 positions (its tokens, not its </s>)
                "pool_start": {"count": "instruction", "strip": True, "offset": -1},
                "dense": [int(dense.shape[1]), int(dense.shape[0])],
            },
            special_tokens=token_ids_record(pad=self.tokenizer.pad_token_id, eos=self.tokenizer.eos_token_id),
            source=source_record(
                self.source,
                self.revision,
                self.model,
                architecture="T5EncoderModel + Dense",
                parameters=sum(p.numel() for p in self.model.parameters()) + dense.numel(),
            ),
        )

    @torch.no_grad()
    def reference(
        self, texts: Sequence[str], instructions: Sequence[str], max_length: int
    ) -> ReferenceOutput:
        """(instruction + text).strip(), T5 encoder, mean over the text tokens (the first
        len(tok(instruction.strip())) - 1 positions excluded), Dense, L2."""
        tokenizer = self.tokenizer
        tokenizer.padding_side, tokenizer.truncation_side = "right", "right"
        joined = [(i + t).strip() for t, i in zip(texts, instructions, strict=True)]
        enc = tokenizer(joined, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        hidden = self.model(**enc).last_hidden_state  # (N, T, H)
        mask = enc["attention_mask"].clone()
        for n, instr in enumerate(instructions):
            mask[n, : len(tokenizer(instr.strip())["input_ids"]) - 1] = 0
        m = mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        out = torch.nn.functional.normalize(self.dense(pooled), p=2, dim=1)
        return ReferenceOutput(
            embeddings=out.numpy().astype(np.float32),
            token_ids=unpadded_ids(enc["input_ids"].tolist(), enc["attention_mask"].tolist()),
        )
