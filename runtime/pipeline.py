"""The pipeline a bundle family runs: tokenize -> run graph(s) -> pool, as small overridable steps.

Scope: the base class every family's pipeline derives from (fastembed-style stages), the registry
that maps a manifest's `family` to its pipeline, and the per-call options a family accepts. The
`Embedder` owns input checking, length-sorted batching, order restoring and post-processing; a
pipeline sees one batch at a time.

A family named `F` lives in the module `inbedder.runtime.F` (dashes as underscores: `masked-lm`
-> `masked_lm.py`), the same name as its exporter `inbedder.export.F`; the module is imported the
first time a bundle of that family is opened, and its `Pipeline` subclass registers itself by
declaring `family = "F"`. Adding a family adds that one module here, nothing else.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from tokenizers import Tokenizer

from inbedder.errors import BundleError, InputError, InputTypeError

from .bundle import MANIFEST_NAME, Bundle, Manifest
from .heap import release_free_memory
from .prompt import Encoded, PromptTokenizer, pad_batch
from .session import ThreadOptions, cache_settings, make_session
from .session_cache import CacheSlot

# One graph call recorded by `graph_calls`: its feed and its outputs.
GraphCall = tuple[dict[str, np.ndarray], list[np.ndarray]]
# The graph input (int64, shape (1,)) of a graph whose on-request outputs (`Pipeline.on_request`)
# sit behind an If (quantize/on_request.py): 1 computes them, 0 leaves them empty. Fed only to a
# graph that declares it.
WANT_ANSWERS = "want_answers"
_REGISTRY: dict[str, type[Pipeline]] = {}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def module_name(family: str) -> str:
    """The module (in `inbedder.runtime` and `inbedder.export`) that holds family `family`."""
    return family.replace("-", "_")


def pipeline_for(manifest: Manifest) -> type[Pipeline]:
    return pipeline_class(manifest.family)


def pipeline_class(family: str) -> type[Pipeline]:
    """The runtime pipeline of family `family` (its module imported on first use)."""
    if family not in _REGISTRY and module_name(family).isidentifier():
        try:
            importlib.import_module(f"{__package__}.{module_name(family)}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{module_name(family)}":
                raise  # the module exists but something it imports is missing: a real error
    if family not in _REGISTRY:
        raise BundleError(f"bundle family {family!r} is not supported by this runtime (upgrade inbedder?)")
    return _REGISTRY[family]


# transformers' `clean_up_tokenization` (applied by its decode when the tokenizer asks for it).
_CLEANUPS = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
    (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)  # fmt: skip


def positive_int(name: str, lo: int = 1, hi: int | None = None) -> Callable[[Any], int]:
    """A checker for an integer option in lo..hi (used by families' `options`)."""

    def check(value: Any) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < lo
            or (hi is not None and value > hi)
        ):
            span = (
                f"an int in {lo}..{hi}"
                if hi is not None
                else "a positive int"
                if lo == 1
                else f"an int >= {lo}"
            )
            raise InputError(f"{name} must be {span}, got {value!r}")
        return value

    return check


class Pipeline:
    """Base pipeline: one tokenizer, one or more ONNX sessions, stages to override."""

    family: ClassVar[str] = ""
    answers: ClassVar[bool] = True  # whether the family produces answer strings
    # Whether its recipes embed a text *under an instruction* (InBedder, INSTRUCTOR): then a call
    # that gives none is refused (an explicit "" is accepted), by the API and the CLI alike.
    needs_instruction: ClassVar[bool] = True
    # Per-call options: name -> default. A call's value wins, else the manifest's `options[name]`
    # (set at export), else this default. `check_option` validates each.
    options: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.family:
            _REGISTRY[cls.family] = cls

    # Family checks of the manifest (`check_manifest`): the recipes the family runs, and per graph
    # role the outputs the pipeline reads.
    recipes: ClassVar[tuple[str, ...]] = ()
    graphs: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    # Per graph role, the outputs only a call that wants answers reads: quantize puts the nodes
    # only they need behind the graph input WANT_ANSWERS, which `embed_batch` sets per pass.
    on_request: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    def __init__(
        self,
        bundle: Bundle,
        device: str,
        threads: int | ThreadOptions | None,
        session_cache: Path | None = None,
        row_ops: Path | None = None,
    ):
        manifest = bundle.manifest
        self.manifest = manifest
        origin = str(bundle.root / MANIFEST_NAME)
        tok_path = bundle.root / manifest.tokenizer_file
        try:
            self.tokenizer = Tokenizer.from_str(bundle.take_tokenizer_json())  # the bytes hashed
        except Exception as e:
            raise BundleError(
                f"{tok_path}: not a tokenizer `tokenizers` can read ({_first_line(e)})"
            ) from None
        type(self).check_manifest(manifest, self.tokenizer, origin)
        self.prompts = PromptTokenizer(self.tokenizer, manifest.prompt, manifest.truncation, own=True)
        fixed = self.prompts.fixed_tokens()
        if manifest.truncation.max_length < fixed:
            raise BundleError(
                f"{origin}: truncation.max_length {manifest.truncation.max_length} is below the "
                f"prompt's {fixed} fixed tokens (template, answer slots, special tokens)"
            )
        # The parse's garbage goes back to the OS before the weights load on top of it.
        release_free_memory()
        self.sessions = {}
        self.graph_files: dict[str, str] = {}  # role -> the bundle file its session runs
        for role, g in manifest.graphs.items():
            # A graph's row-ops form gives the same bits (quantize/row_ops.py); CPU only, and only
            # with the operator library to run it.
            lib = row_ops if g.row_ops and device == "cpu" else None
            graph = g.row_ops if lib is not None and g.row_ops else g.file
            path = bundle.root / graph
            slot = None
            if session_cache is not None:
                settings = cache_settings(g.cpu_disabled_optimizers)
                slot = CacheSlot.for_graph(session_cache, manifest.files, g.files_of(graph), settings)
            session = make_session(path, device, threads, g.cpu_disabled_optimizers, slot, lib)
            declared = [i.name for i in session.get_inputs()]
            if sorted(declared) != sorted(g.inputs):
                raise BundleError(
                    f"{path}: the graph's inputs {declared} differ from the manifest's "
                    f"graphs.{role}.inputs {list(g.inputs)}"
                )
            missing = set(g.outputs) - {o.name for o in session.get_outputs()}
            if missing:
                raise BundleError(
                    f"{path}: the graph has no outputs {sorted(missing)} (graphs.{role}.outputs)"
                )
            self.sessions[role] = session
            self.graph_files[role] = graph
        self.pad_id = int(manifest.special_tokens.get("pad", 0))
        self._recording: dict[str, list[GraphCall]] | None = None

    @classmethod
    def check_manifest(cls, manifest: Manifest, tokenizer: Tokenizer, origin: str) -> None:
        """What this family needs of a manifest, checked at load (`BundleError` naming the field).
        Families extend it (calling `super()`)."""

        def fail(msg: str) -> None:
            raise BundleError(f"{origin}: {msg}")

        if cls.recipes and manifest.recipe not in cls.recipes:
            fail(
                f"recipe {manifest.recipe!r} is not one the {cls.family!r} family runs ({list(cls.recipes)})"
            )
        for role, outputs in cls.graphs.items():
            if role not in manifest.graphs:
                fail(f"graph {role!r} is missing (a {cls.family!r} bundle needs {sorted(cls.graphs)})")
            lacking = [o for o in outputs if o not in manifest.graphs[role].outputs]
            if lacking:
                fail(f"graphs.{role}.outputs lacks {lacking}")
        vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        table = manifest.source.get("vocab_size")
        if table is not None:
            if isinstance(table, bool) or not isinstance(table, int) or table < 1:
                fail(f"source.vocab_size must be a positive int, got {table!r}")
            if vocab > table:
                fail(
                    f"the tokenizer's vocabulary ({vocab} tokens, added ones included) does not fit the "
                    f"graph's embedding table (source.vocab_size {table})"
                )
        limit = min(vocab, table) if table else vocab
        for name, tid in manifest.special_tokens.items():
            if tid >= limit:
                fail(f"special_tokens.{name} {tid} is outside the vocabulary ({limit} tokens)")
        special_ids = manifest.decode.get("special_ids", [])
        if not isinstance(special_ids, list) or any(
            isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < limit for i in special_ids
        ):
            fail(f"decode.special_ids must be token ids within the vocabulary ({limit} tokens)")
        if (
            manifest.prompt.slot_token is not None
            and tokenizer.token_to_id(manifest.prompt.slot_token) is None
        ):
            fail(f"slot token {manifest.prompt.slot_token!r} is not in the tokenizer's vocabulary")

    # -- options ----------------------------------------------------------------------------
    def resolve_options(self, asked: Mapping[str, Any]) -> dict[str, Any]:
        """Every option of the family: the call's value, else the manifest's, else the default."""
        unknown = set(asked) - set(self.options)
        if unknown:  # a TypeError, like an unexpected keyword argument
            raise InputTypeError(
                f"unknown option(s) {sorted(unknown)} for a {self.family!r} bundle "
                f"(accepted: {sorted(self.options) or 'none'})"
            )
        out = {}
        for name, default in self.options.items():
            value = asked.get(name)
            if value is None:
                value = self.manifest.options.get(name, default)
            out[name] = self.check_option(name, value)
        return out

    def check_option(self, name: str, value: Any) -> Any:
        return value

    # -- stages ---------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], instructions: Sequence[str], truncation: str) -> list[Encoded]:
        encoded = [self.prompts.encode(t, i, truncation) for t, i in zip(texts, instructions, strict=True)]
        rule = self.manifest.pooling.get("pool_start")
        if not rule:
            return encoded
        starts: dict[str, int] = {}  # one count per distinct instruction
        for i in instructions:
            if i not in starts:
                starts[i] = self.pool_start(i, rule)
        return [
            dataclasses.replace(e, pool_start=starts[i]) for e, i in zip(encoded, instructions, strict=True)
        ]

    def pool_start(self, instruction: str, rule: Mapping[str, Any]) -> int:
        """The manifest's `pooling.pool_start` rule: the token count of the instruction encoded
        alone (special tokens included; stripped first if `strip`) plus `offset` (-1 leaves its
        closing special token pooled, as INSTRUCTOR and sentence-transformers count); 0 for an
        empty instruction (nothing to leave out)."""
        if rule.get("count") != "instruction":
            raise BundleError(f"unknown pooling.pool_start rule {dict(rule)!r} in the manifest")
        counted = instruction.strip() if rule.get("strip") else instruction
        if not counted:
            return 0
        # A stand-in of a very long instruction counts differently, but past every position of the
        # (truncated) prompt either way: nothing of it is pooled, as with the full count.
        n = self.prompts.token_count(self.prompts.stand_in(counted))
        return max(n + int(rule.get("offset", 0)), 0)

    def feed(self, role: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The inputs graph `role` declares, taken from `arrays`."""
        return {name: arrays[name] for name in self.manifest.graphs[role].inputs}

    def run(self, role: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.manifest.graphs[role]
        feed = self.feed(role, arrays)
        try:
            outs = self.sessions[role].run(list(spec.outputs), feed)
        except Exception as e:  # onnxruntime's own kinds: a graph that loads but cannot run
            raise BundleError(
                f"graph {self.graph_files[role]!r} ({role}) failed in onnxruntime ({_first_line(e)}); the "
                "bundle may be damaged"
            ) from None
        if self._recording is not None:
            self._recording.setdefault(role, []).append((feed, outs))
        return dict(zip(spec.outputs, outs, strict=True))

    def pad(self, batch: Sequence[Encoded]) -> dict[str, np.ndarray]:
        return pad_batch(batch, self.pad_id)

    def embed_batch(
        self, batch: Sequence[Encoded], want_answers: bool, options: Mapping[str, Any]
    ) -> tuple[np.ndarray, list[str] | None]:
        """(B, D) float32 embeddings (before post-processing) and, if asked, B answer strings.
        `options` are the resolved per-call options (`resolve_options`)."""
        raise NotImplementedError

    def decode_answer(self, ids: Iterable[int]) -> str:
        text = self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)
        if self.manifest.decode.get("clean_up_tokenization_spaces"):
            for a, b in _CLEANUPS:
                text = text.replace(a, b)
        return text

    # -- what other stages need -------------------------------------------------------------
    def graph_feeds(
        self, pairs: Sequence[tuple[str, str]], **options: Any
    ) -> dict[str, list[dict[str, np.ndarray]]]:
        """Per graph role, the inputs of every call the graph gets while each (text, instruction)
        pair is embedded alone: what quantize measures sensitivity and fp16 overflow on, for any
        family (a decoder's prompt pass and its cached steps alike)."""
        return {
            role: [feed for feed, _ in calls] for role, calls in self.graph_calls(pairs, **options).items()
        }

    def graph_calls(self, pairs: Sequence[tuple[str, str]], **options: Any) -> dict[str, list[GraphCall]]:
        """`graph_feeds` with each call's outputs (in `graphs.<role>.outputs` order)."""
        resolved = self.resolve_options(options)
        self._recording = {}
        try:
            for text, instruction in pairs:
                self.embed_batch(self.tokenize([text], [instruction], "input"), self.answers, resolved)
            return self._recording
        finally:
            self._recording = None


class EmbeddingGraphPipeline(Pipeline):
    """Families whose graph pools and projects itself: one pass of graph "encoder", output
    "embedding" (B, D); no answers. Which positions are pooled is `Encoded.pool_start`, set by
    the prompt tokenizer from the manifest's `pooling.pool_start` rule."""

    answers = False
    graphs: ClassVar[Mapping[str, tuple[str, ...]]] = {"encoder": ("embedding",)}

    @classmethod
    def check_manifest(cls, manifest: Manifest, tokenizer: Tokenizer, origin: str) -> None:
        rule = manifest.pooling.get("pool_start")
        if rule is not None and (not isinstance(rule, dict) or rule.get("count") != "instruction"):
            raise BundleError(f"{origin}: unknown pooling.pool_start rule {rule!r}")
        super().check_manifest(manifest, tokenizer, origin)

    def embed_batch(
        self, batch: Sequence[Encoded], want_answers: bool, options: Mapping[str, Any]
    ) -> tuple[np.ndarray, list[str] | None]:
        out = self.run("encoder", self.pad(batch))
        return out["embedding"].astype(np.float32, copy=False), None  # (B, D)
