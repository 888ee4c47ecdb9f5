"""Export of causal-LM answer embedders (OPT, Llama, ... `*ForCausalLM`; recipe `causal-answer`).

Scope: one decoder graph with a key/value cache as explicit inputs and outputs, used for both the
prompt pass (past length 0) and each single-token step (past length P). One graph rather than a
prompt graph plus a step graph: the weights are stored once (a 7B model would not fit twice), and
the runtime loop is the same call with different shapes.

Graph inputs: input_ids (B, T), attention_mask (B, P + T), position_ids (B, T) int64 and, per
layer i, past_key_i / past_value_i (B, kv_heads, P, head_dim). Outputs: logits (B, V) and
last_hidden (B, H') at the LAST input position only (the state that produces the next token; for
OPT-350m H' = 512, after project_out), and present_key_i / present_value_i (B, kv_heads, P + T,
head_dim). Position ids come from the runtime (cumsum of the mask - 1, as `generate` does), so
left padding is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inbedder.runtime.bundle import GraphSpec, Manifest, PromptSpec, TruncationSpec

from .reference import Reference, ReferenceOutput
from .specs import Recipe
from .trace import decode_record, source_record, token_ids_record, trace_to_onnx

GRAPH_FILE = "model.onnx"


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
        self.model = model
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


def load(source: str, revision: str | None = None) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{source}: needs a fast (tokenizers) tokenizer to write tokenizer.json")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        source, revision=revision, attn_implementation="eager", dtype=torch.float32
    ).eval()
    return model, tokenizer


def export_graph(model: nn.Module, path: Path, opset: int) -> GraphSpec:
    layers, kv, hd = cache_shape(model.config)
    graph = CausalStepGraph(model).eval()
    # Trace with a past (P = 3) and a left-padded row, so that every length stays symbolic and the
    # mask is data.
    b, t, p = 2, 4, 3
    ids = torch.randint(5, min(int(model.config.vocab_size), 100), (b, t))
    mask = torch.ones(b, p + t, dtype=torch.long)
    mask[1, :2] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -t:]
    past = [torch.randn(b, kv, p, hd) for _ in range(2 * layers)]
    names = ["input_ids", "attention_mask", "position_ids"]
    past_names = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    present_names = [f"present_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    outputs = ["logits", "last_hidden", *present_names]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch"},
        "last_hidden": {0: "batch"},
    }
    axes.update({n: {0: "batch", 2: "past"} for n in past_names})
    axes.update({n: {0: "batch", 2: "total"} for n in present_names})
    return trace_to_onnx(graph, (ids, mask, pos, *past), path, [*names, *past_names], outputs, axes, opset)


@torch.no_grad()
def causal_reference(
    model: nn.Module,
    tokenizer: Any,
    recipe: Recipe,
    texts: list[str],
    instructions: list[str],
    max_length: int,
    max_new_tokens: int,
    pooling: str,
) -> ReferenceOutput:
    """Recipe `causal-answer`: left padding/truncation, greedy `generate`, fst_gen or avg_gen."""
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    prompts = [
        recipe.segments[0].replace("{input}", t).replace("{instruction}", i)
        for t, i in zip(texts, instructions, strict=True)
    ]
    enc = tokenizer(prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    out = model.generate(
        **enc,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        output_hidden_states=True,
        return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    prompt_len = enc["input_ids"].shape[1]
    generated = out.sequences[:, prompt_len:]  # (N, G)
    steps = [h[-1][:, -1, :] for h in out.hidden_states]  # G x (N, H'): state feeding token g
    special = set(tokenizer.all_special_ids)
    embs = []
    for n in range(len(texts)):
        vecs = [steps[0][n]]  # fst_gen: the last prompt token's state
        if pooling == "avg_gen":
            for g in range(1, generated.shape[1]):
                # the state computed on generated token g-1 (it produced token g) counts when
                # token g is not special
                if int(generated[n, g]) not in special:
                    vecs.append(steps[g][n])
        embs.append(torch.stack(vecs).mean(0))
    answers = tokenizer.batch_decode(generated, skip_special_tokens=True)
    return ReferenceOutput(
        embeddings=torch.stack(embs).float().numpy().astype(np.float32),
        answers=list(answers),
        answer_ids=generated.numpy(),
        margins=None,
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
    model, tokenizer = load(source, revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # Llama ships without one; generate does the same
    cfg = model.config
    max_new = recipe.max_new_tokens
    # The prompt and its answer must fit the model's positions.
    positions = int(getattr(cfg, "max_position_embeddings", recipe.max_length)) - max_new
    limit = int(max_length or min(recipe.max_length, positions))
    spec = export_graph(model, work / GRAPH_FILE, opset)
    tokenizer.backend_tokenizer.save(str(work / "tokenizer.json"))
    layers, kv, hd = cache_shape(cfg)
    hidden = int(getattr(cfg, "word_embed_proj_dim", None) or cfg.hidden_size)
    pooling = recipe.pooling or "fst_gen"
    manifest = Manifest(
        family=recipe.family,
        recipe=recipe.name,
        prompt=PromptSpec(segments=recipe.segments, strip=recipe.strip),
        truncation=TruncationSpec(
            max_length=limit, side=recipe.truncation_side, strategy=recipe.truncation_strategy
        ),
        graphs={"decoder": spec},
        embedding_dim=hidden,
        pooling={"type": pooling},
        postprocess=recipe.postprocess,
        special_tokens=token_ids_record(
            pad=tokenizer.pad_token_id, eos=tokenizer.eos_token_id, bos=tokenizer.bos_token_id
        ),
        decode=decode_record(tokenizer),
        options={
            "max_new_tokens": max_new,
            "padding_side": "left",
            "cache": {"layers": layers, "kv_heads": kv, "head_dim": hd},
        },
        source=source_record(source, revision, model),
    )

    def token_ids(texts: list[str], instructions: list[str]) -> list[list[int]]:
        tokenizer.truncation_side = "left"
        return [
            list(
                tokenizer(
                    recipe.segments[0].replace("{input}", t).replace("{instruction}", i),
                    truncation=True,
                    max_length=limit,
                )["input_ids"]
            )
            for t, i in zip(texts, instructions, strict=True)
        ]

    return manifest, Reference(
        run=lambda t, i: causal_reference(model, tokenizer, recipe, t, i, limit, max_new, pooling),
        token_ids=token_ids,
    )
