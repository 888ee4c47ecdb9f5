"""Export of INSTRUCTOR models (hkunlp/instructor-base/-large/-xl; sentence-transformers layout).

Scope: load the T5 encoder and the bias-free Dense layer named by `modules.json`, trace the
encoder-only graph (optimum's and sentence-transformers' ONNX paths fail on T5 because they build
the whole encoder-decoder), and describe the recipe in the manifest. The number of instruction
tokens left out of the mean is the graph input `pool_start` (B,), never a traced constant.

Graph inputs: input_ids, attention_mask (B, T) int64, pool_start (B,) int64.
Output: embedding (B, D): mean of the last hidden states over positions >= pool_start where the
mask is 1 (sum(h m) / max(sum(m), 1e-9)), times the Dense weight. L2 normalisation is the
manifest's post-processing step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inbedder.runtime.bundle import GraphSpec, Manifest, PromptSpec, TruncationSpec

from .reference import Reference, ReferenceOutput
from .specs import Recipe
from .trace import source_record, token_ids_record, trace_to_onnx

GRAPH_FILE = "model.onnx"


class InstructorGraph(nn.Module):
    def __init__(self, encoder: nn.Module, dense: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.dense = nn.Linear(dense.shape[1], dense.shape[0], bias=False)
        self.dense.weight.data.copy_(dense)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_start: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # (B, T, H)
        position = torch.cumsum(torch.ones_like(attention_mask), dim=1) - 1  # (B, T): 0..T-1, traced
        keep = attention_mask * (position >= pool_start.unsqueeze(1)).to(attention_mask.dtype)  # (B, T)
        m = keep.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, H)
        return self.dense(pooled)  # (B, D)


def _local_dir(source: str, revision: str | None) -> Path:
    path = Path(source)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, revision=revision))


def _dense(root: Path) -> tuple[torch.Tensor, str]:
    """The Dense module's weight (out, in) from the sentence-transformers layout."""
    modules = json.loads((root / "modules.json").read_text())
    dense = [m for m in modules if m.get("type", "").endswith("Dense")]
    if len(dense) != 1:
        raise ValueError(f"{root}/modules.json: expected one Dense module, found {len(dense)}")
    d = root / dense[0]["path"]
    cfg = json.loads((d / "config.json").read_text())
    if cfg.get("bias", True):
        raise ValueError(f"{d}: INSTRUCTOR's Dense has no bias; this one has (not supported)")
    act = str(cfg.get("activation_function", "torch.nn.modules.linear.Identity"))
    if not act.endswith("Identity"):
        raise ValueError(f"{d}: Dense activation {act} is not supported (INSTRUCTOR uses Identity)")
    if (d / "model.safetensors").exists():
        from safetensors.torch import load_file

        state = load_file(str(d / "model.safetensors"))
    else:
        state = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    return state["linear.weight"].float(), dense[0]["path"]


def load(source: str, revision: str | None = None) -> tuple[nn.Module, Any, torch.Tensor, int | None]:
    from transformers import AutoTokenizer, T5EncoderModel

    root = _local_dir(source, revision)
    tokenizer = AutoTokenizer.from_pretrained(root)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{source}: needs a fast (tokenizers) tokenizer to write tokenizer.json")
    encoder = T5EncoderModel.from_pretrained(root, attn_implementation="eager").eval()
    dense, _ = _dense(root)
    max_seq = None
    st = root / "sentence_bert_config.json"
    if st.exists():
        max_seq = json.loads(st.read_text()).get("max_seq_length")
    return encoder, tokenizer, dense, max_seq


def export_graph(graph: InstructorGraph, path: Path, opset: int) -> GraphSpec:
    b, t = 2, 12
    ids = torch.randint(3, 20, (b, t))
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 8:] = 0
    start = torch.tensor([3, 5])
    names = ["input_ids", "attention_mask", "pool_start"]
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    axes.update({"pool_start": {0: "batch"}, "embedding": {0: "batch"}})
    return trace_to_onnx(graph, (ids, mask, start), path, names, ["embedding"], axes, opset)


@torch.no_grad()
def instructor_reference(
    encoder: nn.Module,
    tokenizer: Any,
    dense: torch.Tensor,
    texts: list[str],
    instructions: list[str],
    max_length: int,
) -> ReferenceOutput:
    """Recipe `instructor`: (instruction + text).strip(), T5 encoder, mean over the text tokens
    (the first len(tok(instruction.strip())) - 1 positions excluded), Dense, L2."""
    tokenizer.padding_side, tokenizer.truncation_side = "right", "right"
    joined = [(i + t).strip() for t, i in zip(texts, instructions, strict=True)]
    enc = tokenizer(joined, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    hidden = encoder(**enc).last_hidden_state  # (N, T, H)
    mask = enc["attention_mask"].clone()
    for n, instr in enumerate(instructions):
        k = len(tokenizer(instr.strip())["input_ids"]) - 1
        mask[n, :k] = 0
    m = mask.unsqueeze(-1).float()
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    out = torch.nn.functional.normalize(pooled @ dense.T, p=2, dim=1)
    return ReferenceOutput(
        embeddings=out.numpy().astype(np.float32), answers=None, answer_ids=None, margins=None
    )


def build(
    source: str,
    recipe: Recipe,
    work: Path,
    *,
    max_length: int | None,
    opset: int,
    revision: str | None,
) -> tuple[Manifest, Reference]:
    encoder, tokenizer, dense, max_seq = load(source, revision)
    limit = int(max_length or max_seq or recipe.max_length)
    graph = InstructorGraph(encoder, dense).eval()
    spec = export_graph(graph, work / GRAPH_FILE, opset)
    tokenizer.backend_tokenizer.save(str(work / "tokenizer.json"))
    manifest = Manifest(
        family=recipe.family,
        recipe=recipe.name,
        prompt=PromptSpec(segments=recipe.segments, strip=recipe.strip),
        truncation=TruncationSpec(
            max_length=limit, side=recipe.truncation_side, strategy=recipe.truncation_strategy
        ),
        graphs={"encoder": spec},
        embedding_dim=int(dense.shape[0]),
        pooling={
            "type": "mean",
            "over": "text",
            "exclude": "instruction",
            "prefix": "token count of instruction.strip() (special tokens included) + prefix_offset",
            "prefix_offset": -1,
            "in_graph": True,
            "dense": [int(dense.shape[1]), int(dense.shape[0])],
        },
        postprocess=recipe.postprocess,
        special_tokens=token_ids_record(pad=tokenizer.pad_token_id, eos=tokenizer.eos_token_id),
        source=source_record(
            source,
            revision,
            encoder,
            architecture="T5EncoderModel + Dense",
            parameters=sum(p.numel() for p in encoder.parameters()) + dense.numel(),
        ),
    )

    def token_ids(texts: list[str], instructions: list[str]) -> list[list[int]]:
        tokenizer.truncation_side = "right"
        return [
            list(tokenizer((i + t).strip(), truncation=True, max_length=limit)["input_ids"])
            for t, i in zip(texts, instructions, strict=True)
        ]

    return manifest, Reference(
        run=lambda t, i: instructor_reference(encoder, tokenizer, dense, t, i, limit),
        token_ids=token_ids,
    )
