"""Declarative specs: recipes (what the reference does) and architectures (where things live).

Scope: data only. A recipe says how prompts are built, truncated and pooled; an architecture says
which submodules of a transformers model are the encoder, the MLM head and the head's transform.
Adding a model family means adding entries here and, if its graph differs, an exporter module.
"""

from __future__ import annotations

from dataclasses import dataclass

INBEDDER_TEMPLATE = "### Input:\n{input}\n\n### Instruction:\n{instruction}\n\n### Response:"


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str  # runtime pipeline and exporter: "masked-lm", "causal-lm", "encoder"
    segments: tuple[str, ...]
    answer_slots: int = 0
    truncation_side: str = "right"  # the reference tokenizer call
    truncation_strategy: str = "longest_first"
    max_length: int = 512
    slot_states: str = "hidden"  # "hidden": last layer; "lm_head_transform": dense -> act -> norm
    postprocess: tuple[str, ...] = ()
    strip: bool = False  # strip the filled prompt (INSTRUCTOR)
    pooling: str | None = None  # causal: "fst_gen" | "avg_gen"
    max_new_tokens: int = 3  # causal: greedy answer length (stops earlier at EOS)
    description: str = ""


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="masked-answer",
            family="masked-lm",
            segments=(INBEDDER_TEMPLATE,),
            answer_slots=3,
            truncation_side="left",
            description="InBedder paper evaluation: QA prompt + 3 masks, mean of last-layer "
            "states at the masks",
        ),
        Recipe(
            name="masked-answer-pair",
            family="masked-lm",
            segments=("{input}", "{instruction}"),
            answer_slots=3,
            truncation_side="right",
            slot_states="lm_head_transform",
            postprocess=("standardize",),
            description="model-card path: (text, instruction + 3 masks) pair, LM-head transform "
            "at the masks, mean, standardise",
        ),
        Recipe(
            name="causal-answer",
            family="causal-lm",
            segments=(INBEDDER_TEMPLATE,),
            truncation_side="left",
            pooling="fst_gen",
            description="InBedder causal LMs: QA prompt, greedy answer; embedding = last layer's "
            "state of the last prompt token",
        ),
        Recipe(
            name="causal-answer-avg",
            family="causal-lm",
            segments=(INBEDDER_TEMPLATE,),
            truncation_side="left",
            pooling="avg_gen",
            description="as causal-answer, embedding = mean of that state and the states of "
            "generated tokens followed by a non-special token",
        ),
        Recipe(
            name="instructor",
            family="encoder",
            segments=("{instruction}{input}",),
            truncation_side="right",
            postprocess=("l2",),
            strip=True,
            description="INSTRUCTOR: (instruction + text).strip(), T5 encoder, mean over the text "
            "tokens only, Dense without bias, L2",
        ),
    )
}

# Hub ids whose recipe is known; anything else takes its family's default (or --recipe).
KNOWN_MODELS: dict[str, str] = {
    "BrandonZYW/roberta-large-InBedder": "masked-answer",
    "KomeijiForce/inbedder-roberta-large": "masked-answer-pair",
    "BrandonZYW/opt-350m-InBedder": "causal-answer",
    "BrandonZYW/opt-1.3b-InBedder": "causal-answer",
    "BrandonZYW/opt-2.7b-InBedder": "causal-answer",
    "BrandonZYW/llama-2-7b-InBedder": "causal-answer",
    "hkunlp/instructor-base": "instructor",
    "hkunlp/instructor-large": "instructor",
    "hkunlp/instructor-xl": "instructor",
}

DEFAULT_RECIPE = {"masked-lm": "masked-answer", "encoder": "instructor", "causal-lm": "causal-answer"}


@dataclass(frozen=True)
class MaskedLMArch:
    """Where a `*ForMaskedLM` model keeps its parts (attribute paths from the model)."""

    head: str  # hidden (..., H) -> logits (..., V)
    transform: tuple[str, ...]  # hidden -> hidden; "act:NAME" is a transformers activation
    position_offset_is_pad: bool = False  # RoBERTa-style position ids start at pad_id + 1


_ROBERTA = MaskedLMArch(
    head="lm_head",
    transform=("lm_head.dense", "act:gelu", "lm_head.layer_norm"),
    position_offset_is_pad=True,
)
MASKED_LM_ARCHS: dict[str, MaskedLMArch] = {
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "camembert": _ROBERTA,
    "bert": MaskedLMArch(head="cls", transform=("cls.predictions.transform",)),
}
