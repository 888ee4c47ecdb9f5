"""Sentence-transformers encoders (BERT, MPNet, XLM-R, ... as laid out by `modules.json`): family
`sentence-encoder`, recipe `sentence-embedding`.

Scope: reading the sentence-transformers layout (Transformer, Pooling, Dense, Normalize modules;
`sentence_bert_config.json`; the prompts in `config_sentence_transformers.json`), the graph module
(encoder -> pooling over the positions from `pool_start` on -> Dense layers), the manifest fields,
and the PyTorch reference, written step by step as sentence-transformers 6.2 runs it. The optional
instruction is a query prefix (E5's "query: ", BGE's "Represent this sentence ...: "): the model
sees `instruction + text` (no strip); with the Pooling module's `include_prompt` false, the
prefix's tokens (its count encoded alone, less a trailing special token) are left out of pooling.

Graph inputs: input_ids, attention_mask (B, T) int64, [token_type_ids (B, T)], pool_start (B,)
int64. Output: embedding (B, D). L2 normalisation (the Normalize module) is post-processing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inbedder.errors import InputError
from inbedder.runtime.bundle import GraphSpec, Manifest

from .family import Checkpoint, ExportFamily, GraphExport, register
from .reference import ReferenceOutput, unpadded_ids
from .specs import Recipe
from .trace import load_fast_tokenizer, source_record, token_ids_record

# sentence-transformers' legacy Pooling flags, in its concatenation order.
_LEGACY_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
_ACTIVATIONS = {"torch.nn.modules.linear.Identity": nn.Identity, "torch.nn.modules.activation.Tanh": nn.Tanh}
_FUSIONS = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert"}


def local_dir(source: str, revision: str | None) -> Path:
    path = Path(source)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, revision=revision))


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def pooling_modes(config: Mapping[str, Any], where: Path) -> tuple[str, ...]:
    """The Pooling module's modes in concatenation order (new `pooling_mode` or legacy flags)."""
    mode = config.get("pooling_mode")
    if mode is None:
        modes = tuple(m for key, m in _LEGACY_MODES.items() if config.get(key))
        modes = modes or ("mean",)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    unsupported = [m for m in modes if m not in MODES]
    if unsupported:
        raise InputError(
            f"{where}: pooling mode(s) {unsupported} are not supported (supported: {list(MODES)})"
        )
    return modes


def dense_layer(path: Path) -> nn.Linear | nn.Sequential:
    """A sentence-transformers Dense module as Linear (+ activation)."""
    cfg = _json(path / "config.json")
    if cfg.get("use_residual"):
        raise InputError(f"{path}: Dense with use_residual is not supported")
    act = str(cfg.get("activation_function", "torch.nn.modules.activation.Tanh"))
    if act not in _ACTIVATIONS:
        raise InputError(
            f"{path}: Dense activation {act} is not supported (supported: {sorted(_ACTIVATIONS)})"
        )
    if (path / "model.safetensors").exists():
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"))
    else:
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    weight = state["linear.weight"].float()
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias="linear.bias" in state)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if "linear.bias" in state:
            linear.bias.copy_(state["linear.bias"].float())
    return linear if act.endswith("Identity") else nn.Sequential(linear, _ACTIVATIONS[act]())


def pool(hidden: torch.Tensor, keep: torch.Tensor, modes: Sequence[str]) -> torch.Tensor:
    """sentence-transformers' pooling over the positions where `keep` (B, T) is 1: (B, H * modes)."""
    m = keep.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    out = []
    for mode in modes:
        if mode == "cls":  # the first kept position (the [CLS] token unless a prompt is excluded)
            first = keep.to(torch.int32).argmax(dim=1)  # (B,)
            index = first.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1]).to(torch.int64)
            out.append(torch.gather(hidden, 1, index).squeeze(1))
        elif mode == "max":
            out.append(hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values)
        else:
            total = m.sum(1).clamp(min=1e-9)  # (B, 1)
            out.append((hidden * m).sum(1) / (total if mode == "mean" else total.sqrt()))
    return torch.cat(out, dim=-1)


class SentenceEncoderGraph(nn.Module):
    def __init__(self, encoder: nn.Module, modes: Sequence[str], dense: Sequence[nn.Module], use_types: bool):
        super().__init__()
        self.encoder: Any = encoder
        self.modes = tuple(modes)
        self.dense = nn.ModuleList(dense)
        self.use_types = use_types

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pool_start: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kw: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.use_types:
            kw["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kw).last_hidden_state  # (B, T, H)
        position = torch.cumsum(torch.ones_like(attention_mask), dim=1) - 1  # (B, T): 0..T-1, traced
        keep = attention_mask * (position >= pool_start.unsqueeze(1)).to(attention_mask.dtype)  # (B, T)
        x = pool(hidden, keep, self.modes)  # (B, H * modes)
        for layer in self.dense:
            x = layer(x)
        return x  # (B, D)


@register
class SentenceEncoderFamily(ExportFamily):
    name = "sentence-encoder"
    recipes = (
        Recipe(
            name="sentence-embedding",
            segments=("{instruction}{input}",),
            truncation_side="right",
            description="sentence-transformers encoder: optional instruction / query prefix, pooling "
            "(mean, cls, max) over the text (and the prefix unless include_prompt is false), Dense, "
            "Normalize",
        ),
    )
    default_recipe = "sentence-embedding"
    priority = 5  # after INSTRUCTOR's T5 layout, before a plain masked-LM guess

    @classmethod
    def claims(cls, checkpoint: Checkpoint) -> bool:
        kinds = {str(m.get("type", "")).rsplit(".", 1)[-1] for m in checkpoint.st_modules}
        return {"Transformer", "Pooling"} <= kinds

    def load(self) -> None:
        from transformers import AutoModel

        root = local_dir(self.source, self.revision)
        modules = json.loads((root / "modules.json").read_text())
        kinds = [(str(m.get("type", "")).rsplit(".", 1)[-1], root / m.get("path", "")) for m in modules]
        known = {"Transformer", "Pooling", "Dense", "Normalize"}
        if kinds[0][0] != "Transformer" or any(k not in known for k, _ in kinds):
            raise InputError(
                f"{root}/modules.json: supported layouts are Transformer, Pooling, then Dense / Normalize; "
                f"got {[k for k, _ in kinds]}"
            )
        body = kinds[0][1]
        st_config = _json(body / "sentence_bert_config.json") or _json(root / "sentence_bert_config.json")
        if st_config.get("do_lower_case"):
            raise InputError(f"{body}: do_lower_case is not supported (lowercasing outside the tokenizer)")
        self.tokenizer = load_fast_tokenizer(body)
        self.model = AutoModel.from_pretrained(body, attn_implementation="eager").eval()
        pooling = [p for k, p in kinds if k == "Pooling"]
        if len(pooling) != 1:
            raise InputError(f"{root}/modules.json: expected one Pooling module, found {len(pooling)}")
        pool_cfg = _json(pooling[0] / "config.json")
        self.modes = pooling_modes(pool_cfg, pooling[0])
        self.include_prompt = bool(pool_cfg.get("include_prompt", True))
        self.dense = [dense_layer(p) for k, p in kinds if k == "Dense"]
        self.normalize = any(k == "Normalize" for k, _ in kinds)
        self.max_seq = st_config.get("max_seq_length")
        self.prompts = _json(root / "config_sentence_transformers.json").get("prompts") or {}
        self.use_types = int(getattr(self.model.config, "type_vocab_size", 1) or 1) > 1 and (
            "token_type_ids" in self.tokenizer.model_input_names
        )
        # sentence-transformers counts a prompt's tokens without a trailing special token.
        probe = self.tokenizer("x")["input_ids"]
        self.prompt_offset = -1 if probe and probe[-1] in set(self.tokenizer.all_special_ids) else 0

    def max_length(self, asked: int | None) -> int:
        cfg = self.model.config
        positions = int(getattr(cfg, "max_position_embeddings", self.recipe.max_length))
        if cfg.model_type in ("roberta", "xlm-roberta", "camembert"):
            positions -= int(cfg.pad_token_id) + 1  # their positions start at pad_id + 1
        if asked is not None and asked > positions:
            raise InputError(f"max_length {asked} exceeds the model's {positions} positions")
        return int(asked or min(int(self.max_seq or self.recipe.max_length), positions))

    def graphs(self, max_length: int) -> list[GraphExport]:
        graph = SentenceEncoderGraph(self.model, self.modes, self.dense, self.use_types).eval()
        b, t = 2, 12
        ids = torch.randint(5, min(int(self.model.config.vocab_size), 100), (b, t))
        mask = torch.ones(b, t, dtype=torch.long)
        mask[1, 8:] = 0
        names: tuple[str, ...] = ("input_ids", "attention_mask", "pool_start")
        args: tuple[torch.Tensor, ...] = (ids, mask, torch.tensor([0, 3]))
        if self.use_types:
            names, args = (*names, "token_type_ids"), (*args, torch.zeros(b, t, dtype=torch.long))
        axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
        axes["pool_start"] = {0: "batch"}
        axes["embedding"] = {0: "batch"}
        fusion = _FUSIONS.get(self.model.config.model_type)
        return [GraphExport("encoder", graph, args, names, ("embedding",), axes, fusion=fusion)]

    def manifest(self, graphs: Mapping[str, GraphSpec], max_length: int) -> Manifest:
        tok, cfg = self.tokenizer, self.model.config
        dim = int(cfg.hidden_size) * len(self.modes)
        for layer in self.dense:
            linear: Any = layer if isinstance(layer, nn.Linear) else layer[0]
            dim = int(linear.out_features)
        pooling: dict[str, Any] = {
            "type": "+".join(self.modes),
            "in_graph": True,
            "dense_layers": len(self.dense),
        }
        if not self.include_prompt:
            pooling["pool_start"] = {"count": "instruction", "strip": False, "offset": self.prompt_offset}
        return self.recipe_manifest(
            graphs,
            max_length,
            embedding_dim=dim,
            pooling=pooling,
            postprocess=("l2",) if self.normalize else (),
            special_tokens=token_ids_record(
                pad=tok.pad_token_id,
                bos=tok.cls_token_id or tok.bos_token_id,
                eos=tok.sep_token_id or tok.eos_token_id,
            ),
            options={"prompts": dict(self.prompts)} if self.prompts else {},
            source=source_record(self.source, self.revision, self.model),
        )

    @torch.no_grad()
    def reference(
        self, texts: Sequence[str], instructions: Sequence[str], max_length: int
    ) -> ReferenceOutput:
        """As sentence-transformers 6.2 encodes with `prompt=instruction`: prompt + text, right
        truncation at max_seq_length, the model, Pooling (the prompt's tokens less a trailing special
        token masked out when include_prompt is false), Dense, Normalize."""
        tokenizer = self.tokenizer
        tokenizer.padding_side, tokenizer.truncation_side = "right", "right"
        joined = [i + t for t, i in zip(texts, instructions, strict=True)]
        enc = tokenizer(
            joined, padding=True, truncation="longest_first", max_length=max_length, return_tensors="pt"
        )
        hidden = self.model(**enc).last_hidden_state  # (N, T, H)
        keep = enc["attention_mask"].clone()
        if not self.include_prompt:
            for n, instr in enumerate(instructions):
                if instr:
                    ids = tokenizer(instr)["input_ids"]
                    length = len(ids) - (1 if ids[-1] in set(tokenizer.all_special_ids) else 0)
                    keep[n, :length] = 0
        x = pool(hidden, keep, self.modes)
        for layer in self.dense:
            x = layer(x)
        if self.normalize:
            x = torch.nn.functional.normalize(x, p=2, dim=1)
        return ReferenceOutput(
            embeddings=x.numpy().astype(np.float32),
            token_ids=unpadded_ids(enc["input_ids"].tolist(), enc["attention_mask"].tolist()),
        )
