"""The export side of a model family, declared once: one class per family, registered by name.

Scope: `ExportFamily`, the declaration every family makes (its recipes and known hub ids, whether
a checkpoint is its own, how to load it, the graph module(s) with example inputs and dynamic axes,
what quantize needs to fuse each graph, the manifest fields, the PyTorch reference), the
`@register` decorator, and discovery: a family `F` lives in `inbedder.export.F` (dashes as
underscores), beside its runtime pipeline `inbedder.runtime.F`; every module of this package is
imported on first use, so adding a family adds one module here and one in the runtime.

The shared `build` in `core.py` drives a family: load -> trace each graph -> save the tokenizer ->
manifest; `validate.py` runs the result through the runtime against `reference`.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from inbedder.errors import InputError
from inbedder.runtime.bundle import GraphSpec, Manifest, PromptSpec, TruncationSpec

from .reference import ReferenceOutput
from .specs import Recipe


@dataclass(frozen=True)
class Checkpoint:
    """What recipe detection looks at: the checkpoint's config and its sentence-transformers
    modules (`modules.json`; empty when there is none)."""

    source: str
    config: Mapping[str, Any]
    st_modules: tuple[Mapping[str, Any], ...] = ()

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def architectures(self) -> tuple[str, ...]:
        return tuple(self.config.get("architectures") or ())


@dataclass(frozen=True)
class GraphExport:
    """One graph a family exports: the module to trace, example inputs (with a padded row, so
    masks trace as data), names, dynamic axes, and the onnxruntime optimizer model type that
    fuses it (None: no fusions)."""

    role: str
    module: torch.nn.Module
    args: tuple[torch.Tensor, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    axes: Mapping[str, Mapping[int, str]]
    fusion: str | None = None
    file: str = "model.onnx"


@dataclass
class ExportFamily:
    """Base class: a family's exporter for one checkpoint and recipe. Subclasses declare the
    class attributes and implement the methods below; `core.build` calls them in order."""

    name: ClassVar[str]  # the manifest's `family`, the runtime pipeline's name
    recipes: ClassVar[tuple[Recipe, ...]]
    default_recipe: ClassVar[str]
    known_models: ClassVar[Mapping[str, str]] = {}  # hub id -> recipe name
    priority: ClassVar[int] = 0  # detection order: higher claims first

    source: str
    recipe: Recipe
    revision: str | None = None
    model: Any = field(default=None, init=False)
    tokenizer: Any = field(default=None, init=False)

    @classmethod
    def claims(cls, checkpoint: Checkpoint) -> bool:
        """Whether this family's default recipe fits a checkpoint no recipe was given for."""
        return False

    def load(self) -> None:
        """Load the checkpoint into `self.model` / `self.tokenizer` (a fast tokenizer)."""
        raise NotImplementedError

    def max_length(self, asked: int | None) -> int:
        raise NotImplementedError

    def graphs(self, max_length: int) -> list[GraphExport]:
        raise NotImplementedError

    def manifest(self, graphs: Mapping[str, GraphSpec], max_length: int) -> Manifest:
        """The manifest (no checksums, exporter or validation figures yet); `recipe_manifest`
        fills what every family takes from its recipe."""
        raise NotImplementedError

    def recipe_manifest(
        self,
        graphs: Mapping[str, GraphSpec],
        max_length: int,
        *,
        slot_token: str | None = None,
        **fields: Any,
    ) -> Manifest:
        """A manifest with the family, the recipe's prompt, truncation rule and post-processing
        filled in; `fields` give the rest (and may override `postprocess`)."""
        r = self.recipe
        prompt = PromptSpec(
            segments=r.segments, slot_token=slot_token, answer_slots=r.answer_slots, strip=r.strip
        )
        truncation = TruncationSpec(
            max_length=max_length, side=r.truncation_side, strategy=r.truncation_strategy
        )
        fields.setdefault("postprocess", r.postprocess)
        return Manifest(
            family=self.name, recipe=r.name, prompt=prompt, truncation=truncation, graphs=graphs, **fields
        )

    def reference(
        self, texts: Sequence[str], instructions: Sequence[str], max_length: int
    ) -> ReferenceOutput:
        """The recipe run in PyTorch as the published code runs it, with the token ids it fed."""
        raise NotImplementedError


F = TypeVar("F", bound=type[ExportFamily])
_FAMILIES: dict[str, type[ExportFamily]] = {}
_discovered = False


def register(cls: F) -> F:
    """Class decorator: make `cls` the exporter of family `cls.name`."""
    if cls.name in _FAMILIES and _FAMILIES[cls.name] is not cls:
        raise ValueError(f"family {cls.name!r} is registered twice")
    _FAMILIES[cls.name] = cls
    return cls


def families() -> dict[str, type[ExportFamily]]:
    """Every family (each module of this package imported once, so families register)."""
    global _discovered
    if not _discovered:
        for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
            importlib.import_module(f"{__package__}.{info.name}")
        _discovered = True
    return _FAMILIES


def recipes() -> dict[str, tuple[Recipe, type[ExportFamily]]]:
    return {r.name: (r, fam) for fam in families().values() for r in fam.recipes}


def known_models() -> dict[str, str]:
    return {m: r for fam in families().values() for m, r in fam.known_models.items()}


def read_checkpoint(source: str, revision: str | None) -> Checkpoint:
    """Config and sentence-transformers modules of a local directory or hub id."""
    local = Path(source)
    if local.is_dir():
        cfg = local / "config.json"
        config = json.loads(cfg.read_text()) if cfg.is_file() else {}
        modules = local / "modules.json"
        st = json.loads(modules.read_text()) if modules.is_file() else []
        return Checkpoint(source, config, tuple(st))
    from huggingface_hub import file_exists, hf_hub_download
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, revision=revision).to_dict()
    st = []
    if file_exists(source, "modules.json", revision=revision):
        st = json.loads(Path(hf_hub_download(source, "modules.json", revision=revision)).read_text())
    return Checkpoint(source, config, tuple(st))


def resolve(source: str, recipe: str | None, revision: str | None) -> tuple[Recipe, type[ExportFamily]]:
    """The recipe (given, a known hub id's, or the first claiming family's default) and its family."""
    table = recipes()
    if recipe is not None:
        if recipe not in table:
            raise InputError(f"unknown recipe {recipe!r}; known: {sorted(table)}")
        return table[recipe]
    known = known_models()
    if source in known:
        return table[known[source]]
    checkpoint = read_checkpoint(source, revision)
    for fam in sorted(families().values(), key=lambda f: -f.priority):
        if fam.claims(checkpoint):
            return table[fam.default_recipe]
    raise InputError(
        f"cannot tell which recipe fits {source} (model_type={checkpoint.model_type!r}, "
        f"architectures={list(checkpoint.architectures)}); pass recipe= (CLI: --recipe) one of "
        f"{sorted(table)}"
    )
