"""Causal-LM answer embedders (OPT, Llama, ... `*ForCausalLM`): family `causal-lm`.

Scope: the recipes `causal-answer` (fst_gen) and `causal-answer-avg` (avg_gen), the PyTorch
reference (greedy `generate`), and one decoder graph with a key/value cache as explicit inputs and
outputs, used for both the prompt pass (past length 0) and each single-token step (past length
P). One graph rather than a prompt graph plus a step graph: the weights are stored once (a 7B
model would not fit twice), and the runtime loop is the same call with different shapes.

Graph inputs: input_ids (B, T), attention_mask (B, P + T), position_ids (B, T) int64 and, per
layer i, past_key_i / past_value_i (B, kv_heads, P, head_dim). Outputs: logits (B, V) and
last_hidden (B, H') at the LAST input position only (the state that produces the next token; for
OPT-350m H' = 512, after project_out), and present_key_i / present_value_i (B, kv_heads, P + T,
head_dim). Position ids come from the runtime (cumsum of the mask - 1, as `generate` does), so
left padding is exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from inbedder.catalog import known_for
from inbedder.runtime.bundle import GraphSpec, Manifest

from .family import Checkpoint, ExportFamily, GraphExport, register
from .reference import ReferenceOutput, published_fill, unpadded_ids
from .specs import INBEDDER_TEMPLATE, Recipe
from .trace import decode_record, load_fast_tokenizer, source_record, token_ids_record


def cache_shape(config: Any) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a decoder config."""
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return layers, kv, head_dim


class CausalStepGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model: Any = model  # a transformers *ForCausalLM
        self.layers = cache_shape(model.config)[0]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        from transformers.cache_utils import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        out = self.model.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        last = out.last_hidden_state[:, -1, :]  # (B, H'): the state that produces the next token
        logits = self.model.get_output_embeddings()(last).float()  # (B, V)
        present = out.past_key_values
        flat: list[torch.Tensor] = []
        for layer in present.layers:
            flat += [layer.keys, layer.values]
        return (logits, last, *flat)


_PAPER = "InBedder causal LMs: QA prompt, greedy answer; embedding = "


@register
class CausalLMFamily(ExportFamily):
    name = "causal-lm"
    recipes = (
        Recipe(
            name="causal-answer",
            segments=(INBEDDER_TEMPLATE,),
            truncation_side="left",
            pooling="fst_gen",
            description=_PAPER + "last layer's state of the last prompt token",
        ),
        Recipe(
            name="causal-answer-avg",
            segments=(INBEDDER_TEMPLATE,),
            truncation_side="left",
            pooling="avg_gen",
            description=_PAPER + "mean of that state and the states of generated tokens followed by a "
            "non-special token",
        ),
    )
    default_recipe = "causal-answer"
    known_models: ClassVar[Mapping[str, str]] = known_for("causal-lm")

    @classmethod
    def claims(cls, checkpoint: Checkpoint) -> bool:
        return any(a.endswith("ForCausalLM") for a in checkpoint.architectures)

    def load(self) -> None:
        from transformers import AutoModelForCausalLM

        self.tokenizer = load_fast_tokenizer(self.source, self.revision)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # Llama has none; generate does the same
        torch.manual_seed(0)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.source, revision=self.revision, attn_implementation="eager", dtype=torch.float32
        ).eval()

    def max_length(self, asked: int | None) -> int:
        # The prompt and its answer must fit the model's positions.
        cfg = self.model.config
        positions = (
            int(getattr(cfg, "max_position_embeddings", self.recipe.max_length)) - self.recipe.max_new_tokens
        )
        return int(asked or min(self.recipe.max_length, positions))

    def graphs(self, max_length: int) -> list[GraphExport]:
        layers, kv, hd = cache_shape(self.model.config)
        # Trace with a past (P = 3) and a left-padded row, so that every length stays symbolic and
        # the mask is data.
        b, t, p = 2, 4, 3
        ids = torch.randint(5, min(int(self.model.config.vocab_size), 100), (b, t))
        mask = torch.ones(b, p + t, dtype=torch.long)
        mask[1, :2] = 0
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -t:]
        past = [torch.randn(b, kv, p, hd) for _ in range(2 * layers)]
        past_names = tuple(f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value"))
        present_names = tuple(f"present_{kind}_{i}" for i in range(layers) for kind in ("key", "value"))
        axes: dict[str, dict[int, str]] = {
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "sequence"},
            "logits": {0: "batch"},
            "last_hidden": {0: "batch"},
        }
        axes.update({n: {0: "batch", 2: "past"} for n in past_names})
        axes.update({n: {0: "batch", 2: "total"} for n in present_names})
        return [
            GraphExport(
                "decoder",
                CausalStepGraph(self.model).eval(),
                (ids, mask, pos, *past),
                ("input_ids", "attention_mask", "position_ids", *past_names),
                ("logits", "last_hidden", *present_names),
                axes,
            )
        ]

    def manifest(self, graphs: Mapping[str, GraphSpec], max_length: int) -> Manifest:
        cfg, tok, r = self.model.config, self.tokenizer, self.recipe
        layers, kv, hd = cache_shape(cfg)
        return self.recipe_manifest(
            graphs,
            max_length,
            embedding_dim=int(getattr(cfg, "word_embed_proj_dim", None) or cfg.hidden_size),
            pooling={"type": r.pooling or "fst_gen"},
            special_tokens=token_ids_record(pad=tok.pad_token_id, eos=tok.eos_token_id, bos=tok.bos_token_id),
            decode=decode_record(tok),
            options={
                "max_new_tokens": r.max_new_tokens,
                # prompt + answer must stay within the model's positions (checked per call)
                "max_positions": int(getattr(cfg, "max_position_embeddings", 0)) or None,
                "padding_side": "left",
                "cache": {"layers": layers, "kv_heads": kv, "head_dim": hd},
            },
            source=source_record(self.source, self.revision, self.model),
        )

    @torch.no_grad()
    def reference(
        self, texts: Sequence[str], instructions: Sequence[str], max_length: int
    ) -> ReferenceOutput:
        """Left padding/truncation, greedy `generate`, fst_gen or avg_gen as the published code
        aggregates (see `avg_gen` below)."""
        model, tokenizer, recipe = self.model, self.tokenizer, self.recipe
        tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
        prompts = [published_fill(recipe.segments[0], t, i) for t, i in zip(texts, instructions, strict=True)]
        enc = tokenizer(prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out = model.generate(
            **enc,
            do_sample=False,
            num_beams=1,
            max_new_tokens=recipe.max_new_tokens,
            output_hidden_states=True,
            return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
        )
        generated = out.sequences[:, enc["input_ids"].shape[1] :]  # (N, G)
        steps = [h[-1][:, -1, :] for h in out.hidden_states]  # G x (N, H'): s_g, the state choosing token g
        if recipe.pooling == "avg_gen":
            emb = avg_gen(model, enc, generated, steps, set(tokenizer.all_special_ids))
        else:
            emb = steps[0]
        return ReferenceOutput(
            embeddings=emb.float().numpy().astype(np.float32),
            token_ids=unpadded_ids(enc["input_ids"].tolist(), enc["attention_mask"].tolist()),
            answers=list(tokenizer.batch_decode(generated, skip_special_tokens=True)),
            answer_ids=generated.numpy(),
        )


def avg_gen(
    model: nn.Module, enc: Any, generated: torch.Tensor, steps: list[torch.Tensor], special: set[int]
) -> torch.Tensor:
    """The published aggregation: mean of s_0 and the s_g (g >= 1) whose token g is not special;
    when none is, mean(s_0, s_1) with s_1 the state of the pass fed token 0. When `generate`
    stopped after one token (EOS at once, or one new token) s_1 was never computed: one more
    forward pass with the prompt + token 0 gives it, as in a batch that went on."""
    if len(steps) < 2:
        ids = torch.cat([enc["input_ids"], generated[:, :1]], dim=1)
        mask = torch.cat([enc["attention_mask"], torch.ones_like(generated[:, :1])], dim=1)
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = model(input_ids=ids, attention_mask=mask, position_ids=position, output_hidden_states=True)
        steps = [*steps, hidden.hidden_states[-1][:, -1, :]]
    out = []
    for n in range(generated.shape[0]):
        kept = [steps[g][n] for g in range(1, generated.shape[1]) if int(generated[n, g]) not in special]
        out.append(torch.stack([steps[0][n], *(kept or [steps[1][n]])]).mean(0))
    return torch.stack(out)
