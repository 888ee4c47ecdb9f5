"""The bundle: a directory of ONNX graph(s), `tokenizer.json` and the manifest `inbedder.json`.

Scope: the manifest schema (frozen dataclasses, JSON in and out), loading a bundle with integrity
checks (every file present, sizes and sha256 as recorded, a known format version), and writing one
atomically. This module needs only the standard library so that every stage (export, quantize, the
runtime, and later the C++ reader of the same JSON) shares one definition of the format.

A bundle is valid only when `inbedder.json` exists and every file it lists matches its checksum.
`write_bundle` builds the directory under a temporary name beside the target, writes the manifest
last and renames the directory into place, so an interrupted write leaves nothing that loads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from inbedder.errors import BundleError

MANIFEST_NAME = "inbedder.json"
FORMAT_NAME = "inbedder-bundle"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)


Precision = Literal["fp32", "int8", "fp16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
TruncationSide = Literal["left", "right"]
TruncationStrategy = Literal["longest_first", "only_first", "only_second"]


@dataclass(frozen=True)
class PromptSpec:
    """How a (text, instruction) pair becomes the model's input.

    `segments` are one template (a single sequence) or two (a text pair, the tokenizer adds the
    separators). Each template holds `{input}` and/or `{instruction}`, filled in a single pass (the
    published code chains two `str.replace` calls, so an input containing the literal text
    `{instruction}` gets rewritten there; here it does not). `slot_token` is appended
    `answer_slots` times to the last segment: those positions are the answer slots.
    `strip` strips the filled string (INSTRUCTOR does).
    """

    segments: tuple[str, ...]
    slot_token: str | None = None
    answer_slots: int = 0
    strip: bool = False

    def __post_init__(self) -> None:
        if len(self.segments) not in (1, 2):
            raise BundleError(f"prompt needs 1 or 2 segments, got {len(self.segments)}")
        if self.answer_slots and not self.slot_token:
            raise BundleError("answer_slots > 0 needs a slot_token")


@dataclass(frozen=True)
class TruncationSpec:
    """Token limit and how the runtime keeps within it.

    Mode "input" (the default) cuts the end of the input text and keeps the template, the
    instruction and the answer slots. Mode "reference" reproduces the published tokenizer call:
    `side` ("left" drops the start of the prompt) and `strategy` (for pairs: "longest_first").
    """

    max_length: int
    side: TruncationSide = "right"
    strategy: TruncationStrategy = "longest_first"


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the bundle and the names of its inputs and outputs.

    `data` names the file holding the graph's weights (ONNX external data, found by onnxruntime
    through the graph itself; listed here so that readers know which files belong to which graph),
    or None when the weights are inside `file`. `fusion` is the onnxruntime transformer-optimizer
    model type that fits the graph ("bert", "t5"; None: no fusions), written by the exporter and
    read by quantize. `cpu_disabled_optimizers` are onnxruntime session optimizers every CPU
    session of this graph disables (the Python runtime passes them as `disabled_optimizers`, the
    native one as "optimization.disable_specified_optimizers").
    """

    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    data: str | None = None
    fusion: str | None = None
    cpu_disabled_optimizers: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        """The bundle files this graph is made of: the graph, then its weights file if any."""
        return (self.file, self.data) if self.data else (self.file,)


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to turn texts into embeddings with this bundle."""

    family: str  # selects the runtime pipeline: "masked-lm", "causal-lm", "instructor", ...
    recipe: str  # the reference procedure reproduced: "masked-answer", "instructor", ...
    prompt: PromptSpec
    truncation: TruncationSpec
    graphs: Mapping[str, GraphSpec]
    embedding_dim: int
    pooling: Mapping[str, Any]
    postprocess: tuple[str, ...] = ()
    special_tokens: Mapping[str, int] = field(default_factory=dict)
    decode: Mapping[str, Any] = field(default_factory=dict)
    precision: Precision = "fp32"
    source: Mapping[str, Any] = field(default_factory=dict)
    exporter: Mapping[str, Any] = field(default_factory=dict)
    validation: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)  # family-specific extras
    files: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tokenizer_file: str = "tokenizer.json"
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d = {"format": FORMAT_NAME, **d}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, origin: str = MANIFEST_NAME) -> Manifest:
        if d.get("format") != FORMAT_NAME:
            raise BundleError(f"{origin}: not an inbedder manifest (format={d.get('format')!r})")
        version = d.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise BundleError(
                f"{origin}: unknown format_version {version!r}; this runtime reads "
                f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))} (upgrade inbedder?)"
            )
        try:
            p = d["prompt"]
            return cls(
                family=d["family"],
                recipe=d["recipe"],
                prompt=PromptSpec(
                    segments=tuple(p["segments"]),
                    slot_token=p.get("slot_token"),
                    answer_slots=int(p.get("answer_slots", 0)),
                    strip=bool(p.get("strip", False)),
                ),
                truncation=TruncationSpec(**d["truncation"]),
                graphs={
                    k: GraphSpec(
                        file=g["file"],
                        inputs=tuple(g["inputs"]),
                        outputs=tuple(g["outputs"]),
                        data=g.get("data"),
                        fusion=g.get("fusion"),
                        cpu_disabled_optimizers=tuple(g.get("cpu_disabled_optimizers", ())),
                    )
                    for k, g in d["graphs"].items()
                },
                embedding_dim=int(d["embedding_dim"]),
                pooling=dict(d["pooling"]),
                postprocess=tuple(d.get("postprocess", ())),
                special_tokens=dict(d.get("special_tokens", {})),
                decode=dict(d.get("decode", {})),
                precision=d.get("precision", "fp32"),
                source=dict(d.get("source", {})),
                exporter=dict(d.get("exporter", {})),
                validation=dict(d.get("validation", {})),
                options=dict(d.get("options", {})),
                files={k: dict(v) for k, v in d.get("files", {}).items()},
                tokenizer_file=d.get("tokenizer_file", "tokenizer.json"),
                format_version=int(version),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{origin}: malformed manifest ({type(e).__name__}: {e})") from e


def sha256_file(path: Path, chunk: int = 1 << 16) -> str:
    # One small reused buffer: chunks past glibc's mmap threshold (128 KiB) raise that threshold
    # when freed, and then the weight buffers onnxruntime frees after pre-packing stay in the
    # heap (seen: +170 MB resident for a 407 MB int8 graph hashed in 4 MiB reads).
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def load_manifest(bundle_dir: str | os.PathLike[str], *, verify: bool = True) -> Manifest:
    """Read and check a bundle's manifest.

    Every file the manifest lists must exist with the recorded size; with `verify` (the default)
    its sha256 must match too. Files the runtime needs (graphs, tokenizer) must be listed.
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle directory")
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        raise BundleError(f"{mpath}: missing manifest; {root} is not a complete bundle")
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath}: unreadable manifest ({e})") from e
    if not isinstance(raw, dict):
        raise BundleError(f"{mpath}: manifest is not a JSON object")
    manifest = Manifest.from_json(raw, origin=str(mpath))
    needed = [manifest.tokenizer_file, *(f for g in manifest.graphs.values() for f in g.files)]
    for name in needed:
        if name not in manifest.files:
            raise BundleError(f"{mpath}: file {name!r} is used but has no checksum entry")
    for name, rec in manifest.files.items():
        path = root / name
        if not path.is_file():
            raise BundleError(f"{path}: missing bundle file")
        if path.stat().st_size != rec.get("bytes"):
            raise BundleError(
                f"{path}: size {path.stat().st_size} differs from the manifest's {rec.get('bytes')}"
                " (changed or truncated file)"
            )
        if verify and sha256_file(path) != rec.get("sha256"):
            raise BundleError(f"{path}: sha256 differs from the manifest (changed or corrupted file)")
    return manifest


def write_bundle(
    out_dir: str | os.PathLike[str],
    manifest: Manifest,
    populate: Callable[[Path], None],
    *,
    overwrite: bool = False,
) -> Manifest:
    """Write a bundle atomically and return the manifest as written (with file checksums).

    `populate(tmp_dir)` writes the graph(s) and tokenizer into a temporary directory beside
    `out_dir`; then every file there is hashed, the manifest is written last, and the directory is
    renamed into place. On any error the temporary directory is removed.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a bundle gets the usual permissions
    try:
        populate(tmp)
        files = {
            p.name: file_record(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != MANIFEST_NAME
        }
        final = dataclasses.replace(manifest, files=files)
        mtmp = tmp / (MANIFEST_NAME + ".tmp")
        mtmp.write_text(json.dumps(final.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(mtmp, tmp / MANIFEST_NAME)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def move_files(src: Path, dst: Path) -> None:
    """Move every file of `src` except a manifest into `dst` (a `write_bundle` populate step for
    a staged directory that becomes the bundle)."""
    for p in src.iterdir():
        if p.is_file() and p.name != MANIFEST_NAME:
            shutil.move(str(p), dst / p.name)
