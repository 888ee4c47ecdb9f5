"""Export of masked-LM answer embedders (RoBERTa, BERT, ... `*ForMaskedLM`).

Scope: the graph module (encoder -> gather at the answer slots -> LM head at the slots only),
tracing it to ONNX with dynamic batch and sequence axes, and the manifest fields of the family.
The graph never computes full-vocabulary logits at every position: for roberta-large at 64 tokens
that would be ~6.6 GFLOP per text and a (B, T, 50265) tensor.

Graph inputs: input_ids, attention_mask (B, T) int64, [token_type_ids (B, T) when the model uses
segments], slot_positions (B, S) int64. Outputs: slot_states (B, S, H) float, answer_ids (B, S)
int64, answer_logprobs (B, S) float (log-probability of each greedy answer token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from inbedder.runtime.bundle import GraphSpec, Manifest, PromptSpec, TruncationSpec

from .reference import Reference, head_transform, masked_reference, resolve
from .specs import MASKED_LM_ARCHS, MaskedLMArch, Recipe
from .trace import decode_record, source_record, token_ids_record, trace_to_onnx

GRAPH_FILE = "model.onnx"


class MaskedAnswerGraph(nn.Module):
    def __init__(self, model: nn.Module, arch: MaskedLMArch, recipe: Recipe, use_types: bool):
        super().__init__()
        self.encoder = model.base_model
        self.head = resolve(model, arch.head)
        self.transform = nn.ModuleList(
            [m if isinstance(m, nn.Module) else _Act(m) for m in head_transform(model, arch)]
            if recipe.slot_states == "lm_head_transform"
            else []
        )
        self.use_types = use_types

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        slot_positions: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kw: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.use_types:
            kw["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kw).last_hidden_state  # (B, T, H)
        index = slot_positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])  # (B, S, H)
        states = torch.gather(hidden, 1, index)  # (B, S, H)
        logp = torch.log_softmax(self.head(states).float(), dim=-1)  # (B, S, V): slots only
        best, answer_ids = logp.max(dim=-1)  # (B, S)
        for mod in self.transform:
            states = mod(states)
        return states, answer_ids, best


class _Act(nn.Module):
    def __init__(self, fn: Any):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def load(source: str, revision: str | None = None) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{source}: needs a fast (tokenizers) tokenizer to write tokenizer.json")
    # Weights a checkpoint lacks (e.g. an encoder-only checkpoint's MLM head) are initialised
    # randomly: seed so that exporting the same checkpoint twice gives the same bundle.
    torch.manual_seed(0)
    # Eager attention: one traced graph for any padding, and the pattern onnxruntime's fusions know.
    model = AutoModelForMaskedLM.from_pretrained(
        source, revision=revision, attn_implementation="eager"
    ).eval()
    return model, tokenizer


def arch_of(model: nn.Module) -> MaskedLMArch:
    model_type = model.config.model_type
    if model_type not in MASKED_LM_ARCHS:
        raise ValueError(
            f"masked-LM architecture {model_type!r} is not supported yet "
            f"(supported: {', '.join(sorted(MASKED_LM_ARCHS))}); add it to export/specs.py"
        )
    return MASKED_LM_ARCHS[model_type]


def max_length_of(model: nn.Module, arch: MaskedLMArch, recipe: Recipe, asked: int | None) -> int:
    cfg = model.config
    positions = int(cfg.max_position_embeddings)
    if arch.position_offset_is_pad:
        positions -= int(cfg.pad_token_id) + 1
    limit = min(recipe.max_length, positions)
    if asked is not None:
        if asked > positions:
            raise ValueError(f"max_length {asked} exceeds the model's {positions} positions")
        limit = asked
    return limit


def export_graph(
    model: nn.Module, arch: MaskedLMArch, recipe: Recipe, path: Path, opset: int, use_types: bool
) -> GraphSpec:
    graph = MaskedAnswerGraph(model, arch, recipe, use_types).eval()
    # Trace with a padded row so that the attention mask is traced as data, not folded away.
    b, t, s = 2, 16, recipe.answer_slots
    ids = torch.randint(5, min(int(model.config.vocab_size), 100), (b, t))
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 10:] = 0
    slots = torch.arange(t - s - 1, t - 1).repeat(b, 1)
    slots[1] = torch.arange(10 - s - 1, 10 - 1)
    names = ["input_ids", "attention_mask", "slot_positions"]
    args: tuple[torch.Tensor, ...] = (ids, mask, slots)
    if use_types:
        names.append("token_type_ids")
        args = (*args, torch.zeros(b, t, dtype=torch.long))
    axes = {n: {0: "batch", 1: "sequence"} for n in names if n != "slot_positions"}
    axes["slot_positions"] = {0: "batch"}
    outputs = ["slot_states", "answer_ids", "answer_logprobs"]
    for o in outputs:
        axes[o] = {0: "batch"}
    return trace_to_onnx(graph, args, path, names, outputs, axes, opset)


def build(
    source: str,
    recipe: Recipe,
    work: Path,
    *,
    max_length: int | None,
    opset: int,
    revision: str | None,
) -> tuple[Manifest, Reference]:
    """Export graph + tokenizer into `work`; return the manifest (no checksums) and a reference."""
    model, tokenizer = load(source, revision)
    arch = arch_of(model)
    if tokenizer.mask_token is None:
        raise ValueError(f"{source}: the tokenizer has no mask token")
    limit = max_length_of(model, arch, recipe, max_length)
    use_types = int(getattr(model.config, "type_vocab_size", 1) or 1) > 1 and (
        "token_type_ids" in tokenizer.model_input_names
    )
    graph = export_graph(model, arch, recipe, work / GRAPH_FILE, opset, use_types)
    tokenizer.backend_tokenizer.save(str(work / "tokenizer.json"))
    hidden = int(model.config.hidden_size)
    manifest = Manifest(
        family=recipe.family,
        recipe=recipe.name,
        prompt=PromptSpec(
            segments=recipe.segments,
            slot_token=tokenizer.mask_token,
            answer_slots=recipe.answer_slots,
        ),
        truncation=TruncationSpec(
            max_length=limit, side=recipe.truncation_side, strategy=recipe.truncation_strategy
        ),
        graphs={"encoder": graph},
        embedding_dim=hidden,
        pooling={"type": "mean", "over": "answer_slots", "states": recipe.slot_states},
        postprocess=recipe.postprocess,
        special_tokens=token_ids_record(
            pad=tokenizer.pad_token_id,
            mask=tokenizer.mask_token_id,
            bos=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id,
            eos=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id,
        ),
        decode=decode_record(tokenizer),
        source=source_record(source, revision, model),
    )

    return manifest, Reference(
        run=lambda t, i: masked_reference(model, tokenizer, recipe, arch, t, i, limit),
        token_ids=lambda t, i: _reference_ids(tokenizer, recipe, t, i, limit),
    )


def _reference_ids(
    tokenizer: Any, recipe: Recipe, texts: list[str], instructions: list[str], limit: int
) -> list[list[int]]:
    slots = tokenizer.mask_token * recipe.answer_slots
    tokenizer.truncation_side = recipe.truncation_side
    out = []
    for t, i in zip(texts, instructions, strict=True):
        if len(recipe.segments) == 1:
            p = recipe.segments[0].replace("{input}", t).replace("{instruction}", i) + slots
            enc = tokenizer(p, truncation=True, max_length=limit)
        else:
            a = recipe.segments[0].replace("{input}", t)
            b = recipe.segments[1].replace("{instruction}", i) + slots
            enc = tokenizer(a, b, truncation=True, max_length=limit)
        out.append(list(enc["input_ids"]))
    return out
