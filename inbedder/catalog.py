"""The checkpoints inbedder knows by hub id: their recipe, output dimension and licence.

Scope: data only (standard library), so that `inbedder.list_models()` and `inbedder models` work in
a runtime-only install; each exporting family takes its known hub ids from here. Licences are as
the model cards state them where marked `checked`, else the base model's licence (check the card
before you ship).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class KnownModel:
    id: str  # hub id
    recipe: str
    family: str
    dim: int  # embedding dimension
    licence: str
    licence_checked: bool
    description: str


_PAPER = "InBedder (Peng et al., ACL 2024)"
_ROBERTA, _OPT = "mit (base model roberta-large)", "other: the OPT licence (base model)"
_T5 = "INSTRUCTOR (Su et al., ACL 2023 Findings)"


def _inbedder(name: str, recipe: str, family: str, dim: int, licence: str, what: str) -> KnownModel:
    return KnownModel(name, recipe, family, dim, licence, False, f"{_PAPER}, {what}")


def _instructor(size: str) -> KnownModel:
    return KnownModel(
        f"hkunlp/instructor-{size}", "instructor", "instructor", 768, "apache-2.0", True, f"{_T5}, {size}"
    )


KNOWN_MODELS: tuple[KnownModel, ...] = (
    _inbedder("BrandonZYW/roberta-large-InBedder", "masked-answer", "masked-lm", 1024, _ROBERTA,
              "roberta-large, the paper's evaluation path"),
    _inbedder("KomeijiForce/inbedder-roberta-large", "masked-answer-pair", "masked-lm", 1024, _ROBERTA,
              "roberta-large, the model card's pair path"),
    _inbedder("BrandonZYW/opt-350m-InBedder", "causal-answer", "causal-lm", 512, _OPT, "OPT-350m"),
    _inbedder("BrandonZYW/opt-1.3b-InBedder", "causal-answer", "causal-lm", 2048, _OPT, "OPT-1.3b"),
    _inbedder("BrandonZYW/opt-2.7b-InBedder", "causal-answer", "causal-lm", 2560, _OPT, "OPT-2.7b"),
    _inbedder("BrandonZYW/llama-2-7b-InBedder", "causal-answer", "causal-lm", 4096, "llama2 (base model)",
              "Llama-2-7b"),
    *(_instructor(size) for size in ("base", "large", "xl")),
)  # fmt: skip


def list_models() -> list[dict[str, Any]]:
    """The known checkpoints as dicts (id, recipe, family, dim, licence, licence_checked, description)."""
    return [asdict(m) for m in KNOWN_MODELS]


def known_for(family: str) -> dict[str, str]:
    """hub id -> recipe, for the checkpoints of one family."""
    return {m.id: m.recipe for m in KNOWN_MODELS if m.family == family}
