"""Masked-LM answer embedders (RoBERTa, BERT, ... `*ForMaskedLM`): family `masked-lm`.

Scope: the recipes `masked-answer` and `masked-answer-pair`, where a masked LM keeps its parts
(`MaskedLMArch`), the graph module (encoder -> gather at the answer slots -> LM head at the slots
only), the manifest fields and the PyTorch reference. The graph never computes full-vocabulary
logits at every position: for roberta-large at 64 tokens that would be ~6.6 GFLOP per text and a
(B, T, 50265) tensor.

Graph inputs: input_ids, attention_mask (B, T) int64, [token_type_ids (B, T) when the model uses
segments], slot_positions (B, S) int64. Outputs: slot_states (B, S, H) float, answer_ids (B, S)
int64, answer_logprobs (B, S) float (log-probability of each greedy answer token).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from inbedder.catalog import known_for
from inbedder.errors import InputError
from inbedder.runtime.bundle import GraphSpec, Manifest

from .family import Checkpoint, ExportFamily, GraphExport, register
from .reference import ReferenceOutput, published_fill, unpadded_ids
from .specs import INBEDDER_TEMPLATE, Recipe
from .trace import decode_record, load_fast_tokenizer, source_record, token_ids_record


@dataclass(frozen=True)
class MaskedLMArch:
    """Where a `*ForMaskedLM` model keeps its parts (attribute paths from the model)."""

    head: str  # hidden (..., H) -> logits (..., V)
    transform: tuple[str, ...]  # hidden -> hidden; "act:NAME" is a transformers activation
    position_offset_is_pad: bool = False  # RoBERTa-style position ids start at pad_id + 1
    fusion: str | None = "bert"  # onnxruntime optimizer model type


_ROBERTA = MaskedLMArch(
    head="lm_head",
    transform=("lm_head.dense", "act:gelu", "lm_head.layer_norm"),
    position_offset_is_pad=True,
)
ARCHS: dict[str, MaskedLMArch] = {
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "camembert": _ROBERTA,
    "bert": MaskedLMArch(head="cls", transform=("cls.predictions.transform",)),
}


def _resolve(model: nn.Module, path: str) -> Any:
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def head_transform(model: nn.Module, arch: MaskedLMArch) -> list[Any]:
    """The MLM head's hidden -> hidden transform as a list of modules / functions."""
    from transformers.activations import ACT2FN

    return [ACT2FN[p[4:]] if p.startswith("act:") else _resolve(model, p) for p in arch.transform]


class _Act(nn.Module):
    def __init__(self, fn: Any):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class MaskedAnswerGraph(nn.Module):
    def __init__(self, model: nn.Module, arch: MaskedLMArch, recipe: Recipe, use_types: bool):
        super().__init__()
        self.encoder: Any = model.base_model
        self.head = _resolve(model, arch.head)
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


@register
class MaskedLMFamily(ExportFamily):
    name = "masked-lm"
    recipes = (
        Recipe(
            name="masked-answer",
            segments=(INBEDDER_TEMPLATE,),
            answer_slots=3,
            truncation_side="left",
            description="InBedder paper evaluation: QA prompt + 3 masks, mean of last-layer states at "
            "the masks",
        ),
        Recipe(
            name="masked-answer-pair",
            segments=("{input}", "{instruction}"),
            answer_slots=3,
            truncation_side="right",
            slot_states="lm_head_transform",
            postprocess=("standardize",),
            description="model-card path: (text, instruction + 3 masks) pair, LM-head transform at the "
            "masks, mean, standardise",
        ),
    )
    default_recipe = "masked-answer"
    known_models: ClassVar[Mapping[str, str]] = known_for("masked-lm")

    @classmethod
    def claims(cls, checkpoint: Checkpoint) -> bool:
        return any(a.endswith("ForMaskedLM") for a in checkpoint.architectures) or (
            checkpoint.model_type in ARCHS and not checkpoint.st_modules
        )

    def load(self) -> None:
        from transformers import AutoModelForMaskedLM

        self.tokenizer = load_fast_tokenizer(self.source, self.revision)
        if self.tokenizer.mask_token is None:
            raise InputError(f"{self.source}: the tokenizer has no mask token")
        # Weights a checkpoint lacks (e.g. an encoder-only checkpoint's MLM head) are initialised
        # randomly: seed so that exporting the same checkpoint twice gives the same bundle.
        torch.manual_seed(0)
        # Eager attention: one traced graph for any padding, and the pattern onnxruntime's fusions know.
        self.model = AutoModelForMaskedLM.from_pretrained(
            self.source, revision=self.revision, attn_implementation="eager"
        ).eval()
        model_type = self.model.config.model_type
        if model_type not in ARCHS:
            raise InputError(
                f"masked-LM architecture {model_type!r} is not supported yet "
                f"(supported: {', '.join(sorted(ARCHS))}); add it to ARCHS in export/masked_lm.py"
            )
        self.arch = ARCHS[model_type]
        self.use_types = int(getattr(self.model.config, "type_vocab_size", 1) or 1) > 1 and (
            "token_type_ids" in self.tokenizer.model_input_names
        )

    def max_length(self, asked: int | None) -> int:
        cfg = self.model.config
        positions = int(cfg.max_position_embeddings)
        if self.arch.position_offset_is_pad:
            positions -= int(cfg.pad_token_id) + 1
        if asked is not None and asked > positions:
            raise InputError(f"max_length {asked} exceeds the model's {positions} positions")
        return asked if asked is not None else min(self.recipe.max_length, positions)

    def graphs(self, max_length: int) -> list[GraphExport]:
        graph = MaskedAnswerGraph(self.model, self.arch, self.recipe, self.use_types).eval()
        # Trace with a padded row so that the attention mask is traced as data, not folded away.
        b, t, s = 2, 16, self.recipe.answer_slots
        ids = torch.randint(5, min(int(self.model.config.vocab_size), 100), (b, t))
        mask = torch.ones(b, t, dtype=torch.long)
        mask[1, 10:] = 0
        slots = torch.arange(t - s - 1, t - 1).repeat(b, 1)
        slots[1] = torch.arange(10 - s - 1, 10 - 1)
        names: tuple[str, ...] = ("input_ids", "attention_mask", "slot_positions")
        args: tuple[torch.Tensor, ...] = (ids, mask, slots)
        if self.use_types:
            names, args = (*names, "token_type_ids"), (*args, torch.zeros(b, t, dtype=torch.long))
        outputs = ("slot_states", "answer_ids", "answer_logprobs")
        axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
        axes["slot_positions"] = {0: "batch"}
        axes.update({o: {0: "batch"} for o in outputs})
        return [GraphExport("encoder", graph, args, names, outputs, axes, fusion=self.arch.fusion)]

    def manifest(self, graphs: Mapping[str, GraphSpec], max_length: int) -> Manifest:
        tok, r = self.tokenizer, self.recipe
        return self.recipe_manifest(
            graphs,
            max_length,
            slot_token=tok.mask_token,
            embedding_dim=int(self.model.config.hidden_size),
            pooling={"type": "mean", "over": "answer_slots", "states": r.slot_states},
            special_tokens=token_ids_record(
                pad=tok.pad_token_id,
                mask=tok.mask_token_id,
                bos=tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id,
                eos=tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id,
            ),
            decode=decode_record(tok),
            source=source_record(self.source, self.revision, self.model),
        )

    @torch.no_grad()
    def reference(
        self, texts: Sequence[str], instructions: Sequence[str], max_length: int
    ) -> ReferenceOutput:
        """Recipe steps as the published code runs them: masks appended without a space, the
        tokenizer call with the recipe's truncation, full-vocabulary logits at every position, masks
        found by id."""
        model, tokenizer, recipe = self.model, self.tokenizer, self.recipe
        slots = tokenizer.mask_token * recipe.answer_slots
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = recipe.truncation_side
        kw: dict[str, Any] = {
            "padding": True,
            "truncation": True,
            "max_length": max_length,
            "return_tensors": "pt",
        }
        if len(recipe.segments) == 1:
            prompts = [
                published_fill(recipe.segments[0], t, i) + slots
                for t, i in zip(texts, instructions, strict=True)
            ]
            enc = tokenizer(prompts, **kw)
        else:
            firsts = [published_fill(recipe.segments[0], t, "") for t in texts]
            seconds = [published_fill(recipe.segments[1], "", i) + slots for i in instructions]
            enc = tokenizer(firsts, seconds, **kw)
        out = model(**enc, output_hidden_states=True)
        hidden = out.hidden_states[-1]  # (N, T, H)
        logits = out.logits  # (N, T, V): the published code computes all of them
        is_mask = enc["input_ids"] == tokenizer.mask_token_id  # (N, T)
        embs, ids, margins = [], [], []
        transform = head_transform(model, self.arch) if recipe.slot_states == "lm_head_transform" else []
        for n in range(hidden.shape[0]):
            h = hidden[n][is_mask[n]]  # (S, H)
            for mod in transform:
                h = mod(h)
            embs.append(h.mean(0))
            lg = logits[n][is_mask[n]]  # (S, V)
            top2 = lg.topk(2, dim=-1).values
            ids.append(lg.argmax(-1))
            margins.append(top2[:, 0] - top2[:, 1])
        emb = torch.stack(embs).float()
        if "standardize" in recipe.postprocess:
            emb = (emb - emb.mean(-1, keepdim=True)) / emb.std(-1, keepdim=True)
        answer_ids = torch.stack(ids)
        return ReferenceOutput(
            embeddings=emb.numpy(),
            token_ids=unpadded_ids(enc["input_ids"].tolist(), enc["attention_mask"].tolist()),
            answers=list(tokenizer.batch_decode(answer_ids, skip_special_tokens=True)),
            answer_ids=answer_ids.numpy(),
            margins=torch.stack(margins).float().numpy(),
        )
