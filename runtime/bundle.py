"""The bundle: a directory of ONNX graph(s), `tokenizer.json` and the manifest `inbedder.json`.

Scope: the manifest schema (frozen dataclasses, JSON in and out, every field type-checked), loading
a bundle with integrity checks (every file a plain name inside the bundle, present, sizes and
sha256 as recorded, a known format version; one version seen whole while a replace runs), and
writing or replacing one atomically. This module needs only the standard library so that every
stage (export, quantize, the runtime, and later the C++ reader of the same JSON) shares one
definition of the format.

A bundle is valid only when `inbedder.json` exists and every file it lists matches its checksum.
`write_bundle` builds the directory under a temporary name beside the target, writes the manifest
last and publishes it in one step (a rename, or for an existing bundle a new version directory and
a pointer renamed into place: see "Layout" below), so an interrupted write leaves nothing new that
loads and never damages the previous bundle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock
    fcntl = None  # type: ignore[assignment]

from inbedder.errors import BundleError

from .stamp import (
    STAMP_NAME,
    Verify,
    is_stamp_file,
    read_stamp,
    stamp_entry,
    stampable,
    verify_mode,
    write_stamp,
)

MANIFEST_NAME = "inbedder.json"
FORMAT_NAME = "inbedder-bundle"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)


Precision = Literal["fp32", "int8", "int4", "fp16"]
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
    native one as "optimization.disable_specified_optimizers"). `row_ops` names the same graph
    rewritten with inbedder's row operators (quantize/row_ops.py; outputs bit-identical to
    `file`'s, weights read from the same `data`), or None.
    """

    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    data: str | None = None
    fusion: str | None = None
    cpu_disabled_optimizers: tuple[str, ...] = ()
    row_ops: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        """The bundle files this graph is made of: the graph, then its weights file if any."""
        return self.files_of(self.file)

    def files_of(self, graph: str) -> tuple[str, ...]:
        """The bundle files a session of `graph` (`file` or `row_ops`) reads."""
        return (graph, self.data) if self.data else (graph,)


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
        for g in d["graphs"].values():  # optional: absent unless the bundle has the graph
            if g["row_ops"] is None:
                del g["row_ops"]
        d = {"format": FORMAT_NAME, **d}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, origin: str = MANIFEST_NAME) -> Manifest:
        """Parse and type-check every field (types, ranges, known values, file names); a
        `BundleError` naming the field otherwise. Unknown top-level fields are ignored (newer
        optional fields)."""
        if not isinstance(d, Mapping):
            raise BundleError(f"{origin}: manifest is not a JSON object")
        if d.get("format") != FORMAT_NAME:
            raise BundleError(f"{origin}: not an inbedder manifest (format={d.get('format')!r})")
        version = d.get("format_version")
        if isinstance(version, bool) or version not in SUPPORTED_FORMAT_VERSIONS:
            raise BundleError(
                f"{origin}: unknown format_version {version!r}; this runtime reads "
                f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))} (upgrade inbedder?)"
            )
        try:
            return _parse(d, int(version))
        except _FieldError as e:
            raise BundleError(f"{origin}: {e}") from None


class _FieldError(Exception):
    """A manifest field of the wrong type, range or value (the message names it)."""


_MISSING: Any = object()
_KINDS = {str: "a string", int: "an int", dict: "an object", list: "a list", bool: "a boolean"}
POSTPROCESS_STEPS = ("standardize", "l2")
MAX_ANSWER_SLOTS = 8
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _json_kind(v: Any) -> str:
    if v is None:
        return "null"
    for t, name in _KINDS.items():
        if isinstance(v, t):
            return "a boolean" if isinstance(v, bool) else name
    return "a number" if isinstance(v, float) else type(v).__name__


def _get(d: Mapping[str, Any], key: str, kind: type, where: str, default: Any = _MISSING) -> Any:
    """`d[key]` checked to be of JSON type `kind` (None allowed only when it is the default)."""
    name = f"{where}.{key}" if where else key
    if key not in d or (d[key] is None and default is None):
        if default is _MISSING:
            raise _FieldError(f"{name} is missing")
        return default
    v = d[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
        raise _FieldError(f"{name} must be {_KINDS[kind]}, got {_json_kind(v)} {shown}")
    return v


def _int(
    d: Mapping[str, Any], key: str, where: str, lo: int, hi: int | None = None, default: Any = _MISSING
) -> int:
    v = _get(d, key, int, where, default)
    if v < lo or (hi is not None and v > hi):
        name = f"{where}.{key}" if where else key
        span = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        raise _FieldError(f"{name} must be {span}, got {v}")
    return int(v)


def _strings(d: Mapping[str, Any], key: str, where: str, default: Any = _MISSING) -> tuple[str, ...]:
    v = _get(d, key, list, where, default)
    for i, x in enumerate(v):
        if not isinstance(x, str):
            raise _FieldError(f"{where}.{key}[{i}] must be a string, got {_json_kind(x)}")
    return tuple(v)


def _choice(
    d: Mapping[str, Any], key: str, where: str, choices: tuple[str, ...], default: Any = _MISSING
) -> Any:
    v = _get(d, key, str, where, default)
    if v not in choices:
        name = f"{where}.{key}" if where else key
        raise _FieldError(f"{name} must be one of {list(choices)}, got {v!r}")
    return v


def check_file_name(name: Any, where: str) -> str:
    """A bundle file name: one plain path component inside the bundle directory (no absolute path,
    no separator, no `..`, no drive)."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or any(c in name for c in "/\\:\0")
        or os.path.isabs(name)
    ):
        raise _FieldError(f"{where} {name!r} is not a plain file name inside the bundle")
    if is_stamp_file(name):
        raise _FieldError(f"{where} {name!r} is the name of the verified-stamp, not a bundle file")
    return name


def _parse(d: Mapping[str, Any], version: int) -> Manifest:
    family = _get(d, "family", str, "")
    recipe = _get(d, "recipe", str, "")
    if not family or not recipe:
        raise _FieldError("family and recipe must not be empty")
    p = _get(d, "prompt", dict, "")
    segments = _strings(p, "segments", "prompt")
    if len(segments) not in (1, 2):
        raise _FieldError(f"prompt.segments needs 1 or 2 templates, got {len(segments)}")
    if not any("{input}" in seg for seg in segments):
        raise _FieldError("prompt.segments: no template holds {input} (every text would get the same vector)")
    slot_token = _get(p, "slot_token", str, "prompt", None)
    answer_slots = _int(p, "answer_slots", "prompt", 0, MAX_ANSWER_SLOTS, 0)
    if answer_slots and not slot_token:
        raise _FieldError("prompt.answer_slots > 0 needs a prompt.slot_token")
    t = _get(d, "truncation", dict, "")
    unknown = set(t) - {"max_length", "side", "strategy"}
    if unknown:
        raise _FieldError(f"truncation has unknown fields {sorted(unknown)}")
    truncation = TruncationSpec(
        max_length=_int(t, "max_length", "truncation", 1),
        side=_choice(t, "side", "truncation", get_args(TruncationSide), "right"),
        strategy=_choice(t, "strategy", "truncation", get_args(TruncationStrategy), "longest_first"),
    )
    graphs_raw = _get(d, "graphs", dict, "")  # the graphs a family needs: its pipeline checks
    graphs = {}
    for role, g in graphs_raw.items():
        where = f"graphs.{role}"
        if not isinstance(g, dict):
            raise _FieldError(f"{where} must be an object, got {_json_kind(g)}")
        data = _get(g, "data", str, where, None)
        row_ops = _get(g, "row_ops", str, where, None)
        graphs[role] = GraphSpec(
            file=check_file_name(_get(g, "file", str, where), f"{where}.file"),
            inputs=_strings(g, "inputs", where),
            outputs=_strings(g, "outputs", where),
            data=None if data is None else check_file_name(data, f"{where}.data"),
            fusion=_get(g, "fusion", str, where, None),
            cpu_disabled_optimizers=_strings(g, "cpu_disabled_optimizers", where, []),
            row_ops=None if row_ops is None else check_file_name(row_ops, f"{where}.row_ops"),
        )
    postprocess = _strings(d, "postprocess", "", [])
    for step in postprocess:
        if step not in POSTPROCESS_STEPS:
            raise _FieldError(f"postprocess step {step!r} is not one of {list(POSTPROCESS_STEPS)}")
    special = _get(d, "special_tokens", dict, "", {})
    for k in special:
        _int(special, k, "special_tokens", 0)
    files_raw = _get(d, "files", dict, "", {})
    files: dict[str, dict[str, Any]] = {}
    for name, rec in files_raw.items():
        check_file_name(name, "files entry")
        where = f"files[{name!r}]"
        if not isinstance(rec, dict):
            raise _FieldError(f"{where} must be an object, got {_json_kind(rec)}")
        _int(rec, "bytes", where, 0)
        if not _SHA256.fullmatch(_get(rec, "sha256", str, where)):
            raise _FieldError(f"{where}.sha256 must be 64 lowercase hex digits")
        files[name] = dict(rec)
    return Manifest(
        family=family,
        recipe=recipe,
        prompt=PromptSpec(
            segments=segments,
            slot_token=slot_token,
            answer_slots=answer_slots,
            strip=_get(p, "strip", bool, "prompt", False),
        ),
        truncation=truncation,
        graphs=graphs,
        embedding_dim=_int(d, "embedding_dim", "", 1),
        pooling=dict(_get(d, "pooling", dict, "")),
        postprocess=postprocess,
        special_tokens=dict(special),
        decode=dict(_get(d, "decode", dict, "", {})),
        precision=_choice(d, "precision", "", PRECISIONS, "fp32"),
        source=dict(_get(d, "source", dict, "", {})),
        exporter=dict(_get(d, "exporter", dict, "", {})),
        validation=dict(_get(d, "validation", dict, "", {})),
        options=dict(_get(d, "options", dict, "", {})),
        files=files,
        tokenizer_file=check_file_name(
            _get(d, "tokenizer_file", str, "", "tokenizer.json"), "tokenizer_file"
        ),
        format_version=version,
    )


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))


def sha256_file(path: Path, chunk: int = 1 << 16) -> str:
    return _sha256_and_stat(path, chunk)[0]


def _sha256_and_stat(path: Path, chunk: int = 1 << 16) -> tuple[str, os.stat_result]:
    """The file's sha256 and the status of the open file once read (what was hashed)."""
    # One small reused buffer: chunks past glibc's mmap threshold (128 KiB) raise that threshold
    # when freed, and then the weight buffers onnxruntime frees after pre-packing stay in the
    # heap (seen: +170 MB resident for a 407 MB int8 graph hashed in 4 MiB reads).
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0, opener=_nofollow) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
        return h.hexdigest(), os.fstat(f.fileno())


def file_record(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


# -- loading ------------------------------------------------------------------------------------
# Layout. A bundle path is either a *plain* bundle directory (the manifest and its files, as
# written the first time), or a *versioned* one: a pointer file `inbedder.current` holding the
# name of a sub-directory `v-...` that is a plain bundle. Version directories are never changed
# once the pointer names them; a replace writes a new one and renames a new pointer over the old
# (one atomic step: the path never goes missing), then removes the versions no loader holds.
# Loaders take a shared `flock` on the directory they read for the duration of the load (the
# writer removes a version only under an exclusive non-blocking lock), and retry when the pointer
# moved while they read.
POINTER_NAME = "inbedder.current"
VERSION_PREFIX = "v-"
_VERSION_NAME = re.compile(r"v-[A-Za-z0-9_-]{1,64}")
MAX_MANIFEST_BYTES = 1 << 24
LOAD_ATTEMPTS = 50
log = logging.getLogger("inbedder")


@dataclass
class Bundle:
    """One complete, checked version of a bundle: where its files are, its manifest, and the
    tokenizer's text exactly as hashed (what the runtime parses: never re-read)."""

    root: Path
    manifest: Manifest
    tokenizer_json: str | None  # None once taken

    def take_tokenizer_json(self) -> str:
        """The tokenizer's text, once: the bundle lets go of it, so that the text (3.5 MB for a
        50k BPE vocabulary) is not held while the sessions load (the open's peak memory)."""
        text = self.tokenizer_json
        if text is None:
            raise BundleError(f"{self.root}: the tokenizer's text was already taken (one pipeline per load)")
        self.tokenizer_json = None
        return text


def _read_pointer(top: Path) -> str | None:
    """The version directory the pointer names, or None (a plain bundle)."""
    ptr = top / POINTER_NAME
    try:
        st = os.lstat(ptr)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > 256:
        raise BundleError(f"{ptr}: the bundle pointer is not a small regular file")
    raw = ptr.read_bytes()
    name = raw.decode("ascii", errors="replace").removesuffix("\n")
    if not _VERSION_NAME.fullmatch(name):
        raise BundleError(f"{ptr}: bad bundle pointer {name!r} (must name a v-... directory of the bundle)")
    return name


def _version_dir(top: Path, version: str | None) -> Path:
    if version is None:
        return top
    d = top / version
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        raise BundleError(
            f"{top / POINTER_NAME}: the bundle pointer names {version!r}, which does not exist"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise BundleError(f"{d}: the bundle pointer must name a directory (not a link or file)")
    return d


def bundle_root(bundle_dir: str | os.PathLike[str]) -> Path:
    """The directory holding the current version's files (the bundle itself when plain)."""
    top = Path(bundle_dir)
    return _version_dir(top, _read_pointer(top))


@contextlib.contextmanager
def _shared_lock(d: Path) -> Iterator[None]:
    """Hold a shared lock on directory `d` (no writer removes it meanwhile); fails if `d` was
    removed or replaced before the lock was had."""
    if fcntl is None:  # no flock (Windows): the pointer check and retry alone
        yield
        return
    fd = os.open(d, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        held, now = os.fstat(fd), os.stat(d)
        if (held.st_ino, held.st_dev) != (now.st_ino, now.st_dev):
            raise BundleError(f"{d}: replaced while loading")
        yield
    finally:
        os.close(fd)


def _read_checked(root: Path, verify: Verify) -> Bundle:
    mpath = root / MANIFEST_NAME
    try:
        st = os.lstat(mpath)
    except FileNotFoundError:
        raise BundleError(f"{mpath}: missing manifest; {root} is not a complete bundle") from None
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{mpath}: the manifest must be a regular file (not a link)")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath}: manifest of {st.st_size} bytes is too large")
    with open(mpath, "rb", opener=_nofollow) as f:
        data = f.read(MAX_MANIFEST_BYTES + 1)
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath}: unreadable manifest ({e})") from e
    except RecursionError:
        raise BundleError(f"{mpath}: unreadable manifest (nested too deeply)") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{mpath}: manifest is not a JSON object")
    manifest = Manifest.from_json(raw, origin=str(mpath))
    needed = [manifest.tokenizer_file, *(f for g in manifest.graphs.values() for f in g.files)]
    needed += [g.row_ops for g in manifest.graphs.values() if g.row_ops]
    for name in needed:
        if name not in manifest.files:
            raise BundleError(f"{mpath}: file {name!r} is used but has no checksum entry")
    # No link may lead out of the bundle (a graph's external data is opened by onnxruntime by
    # name); the files the manifest lists may not be links at all.
    real = os.path.realpath(root)
    for entry in os.scandir(root):
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            if entry.name in manifest.files or os.path.commonpath([real, target]) != real:
                what = "leaving the bundle" if os.path.commonpath([real, target]) != real else "(not allowed)"
                raise BundleError(f"{entry.path}: a symbolic link {what}; bundle files must be regular files")
    stats = {}
    for name, rec in manifest.files.items():
        path = root / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise BundleError(f"{path}: missing bundle file") from None
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{path}: not a regular file")
        if st.st_size != rec["bytes"]:
            raise BundleError(
                f"{path}: size {st.st_size} differs from the manifest's {rec['bytes']} "
                "(changed or truncated file)"
            )
        stats[name] = st
    # verify "stamp": a file whose stamp entry still matches (stamp.py) is not hashed again.
    stamp = read_stamp(root) if verify == "stamp" else {}
    started = time.time_ns()
    entries: dict[str, dict[str, Any]] = {}
    tokenizer_json = ""
    for name, rec in manifest.files.items():
        path, st = root / name, stats[name]
        known = stamp.get(name) == stamp_entry(rec["sha256"], st)
        if known:
            entries[name] = stamp[name]
        if name == manifest.tokenizer_file:  # read once: what is hashed is what gets parsed
            with open(path, "rb", opener=_nofollow) as f:
                tok = f.read(st.st_size + 1)
                after = os.fstat(f.fileno())
            # Always hashed (a few MB): the bytes parsed are the bytes checked, stamp or not.
            if len(tok) != rec["bytes"] or (
                verify != "none" and hashlib.sha256(tok).hexdigest() != rec["sha256"]
            ):
                raise BundleError(f"{path}: sha256 differs from the manifest (changed or corrupted file)")
            if verify != "none" and stampable(st, after, started):
                entries[name] = stamp_entry(rec["sha256"], st)
            try:
                tokenizer_json = tok.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BundleError(f"{path}: the tokenizer is not UTF-8 text ({e.reason})") from None
        elif verify != "none" and not known:
            digest, after = _sha256_and_stat(path)
            if digest != rec["sha256"]:
                raise BundleError(f"{path}: sha256 differs from the manifest (changed or corrupted file)")
            if stampable(st, after, started):
                entries[name] = stamp_entry(rec["sha256"], st)
    if verify != "none" and entries != stamp:  # every file matched: record what was seen
        write_stamp(root, entries)
    return Bundle(root=root, manifest=manifest, tokenizer_json=tokenizer_json)


T = TypeVar("T")


def load_bundle(
    bundle_dir: str | os.PathLike[str],
    build: Callable[[Bundle], T] | None = None,
    *,
    verify: Verify | bool = "stamp",
) -> Any:
    """Check one complete version of the bundle and return `build(bundle)` (run while the version
    is locked: a replace cannot remove it meanwhile), or the `Bundle` itself.

    Every file the manifest lists must exist as a regular file inside the bundle with the recorded
    size. `verify`: "stamp" (the default; True) checks every file's sha256 too, except a file the
    bundle's verified-stamp shows unchanged since it was last hashed whole (`stamp.py`; the
    tokenizer is always hashed); "full" hashes every file; "none" (False) checks sizes only (for
    a bundle its own writer just hashed). "stamp" and "full" write the stamp after a load in which
    every file matched. When the bundle is replaced while being read (the pointer moved), the
    load starts again on the new version.
    """
    mode = verify_mode(verify)
    top = Path(bundle_dir)
    if not top.is_dir():
        raise BundleError(f"{top}: no such bundle directory")
    last: Exception | None = None
    for _ in range(LOAD_ATTEMPTS):
        version = _read_pointer(top)
        try:
            root = _version_dir(top, version)
            with _shared_lock(root):
                b = _read_checked(root, mode)
                return build(b) if build is not None else b
        except (BundleError, OSError) as e:
            if _read_pointer(top) == version:
                if isinstance(e, FileNotFoundError) and version is None:
                    raise BundleError(f"{e.filename}: missing bundle file") from e
                raise
            last = e  # replaced meanwhile: load the new version
    raise BundleError(f"{top}: the bundle was replaced {LOAD_ATTEMPTS} times while loading") from last


def load_manifest(bundle_dir: str | os.PathLike[str], *, verify: Verify | bool = "stamp") -> Manifest:
    """Read and check a bundle's manifest (see `load_bundle`). Family-specific checks (the
    tokenizer, the graphs' inputs) run when the bundle is opened by `Embedder`."""
    bundle: Bundle = load_bundle(bundle_dir, verify=verify)
    return bundle.manifest


# -- writing ------------------------------------------------------------------------------------
OWNER_NAME = ".inbedder-owner"
_STAGING = re.compile(r"(partial|export|quantize|old)-[A-Za-z0-9_]+")


def remove_stale_staging(out: Path) -> None:
    """Remove temporary directories beside `out` whose owner process is gone (killed by SIGKILL,
    a power cut): each holds an owner file its live owner keeps an exclusive lock on."""
    if fcntl is None or not out.parent.is_dir():
        return
    prefix = f".{out.name}."
    for entry in out.parent.iterdir():
        if not entry.name.startswith(prefix) or not _STAGING.fullmatch(entry.name[len(prefix) :]):
            continue
        try:
            fd = os.open(entry / OWNER_NAME, os.O_RDONLY)
        except OSError:
            continue  # no owner file: not made by this version, left alone
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its owner is alive
            pid = os.read(fd, 64).decode(errors="replace").strip()
            shutil.rmtree(entry, ignore_errors=True)
            log.warning("inbedder: removed %s, left by an interrupted run (process %s)", entry, pid or "?")
        finally:
            os.close(fd)


@contextlib.contextmanager
def staging(out: Path, kind: str) -> Iterator[Path]:
    """A temporary directory `.NAME.KIND-XXXX` beside `out`, removed on exit (error, Ctrl-C and,
    through the CLI, SIGTERM alike). Stale ones of earlier killed runs are removed first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-", dir=out.parent))
    fd = -1
    try:
        if fcntl is not None:  # locked before it gets its name: a cleaner never sees it unlocked
            fd = os.open(tmp / (OWNER_NAME + ".new"), os.O_CREAT | os.O_WRONLY, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.replace(tmp / (OWNER_NAME + ".new"), tmp / OWNER_NAME)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if fd >= 0:
            os.close(fd)


def _fsync_dir(d: Path) -> None:
    if fcntl is None:
        return
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _try_remove(d: Path) -> bool:
    """Remove directory `d` unless a loader holds it (a shared lock)."""
    if fcntl is None:
        shutil.rmtree(d, ignore_errors=True)
        return True
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        shutil.rmtree(d, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def _remove_old_versions(out: Path, keep: str) -> None:
    """Versions other than `keep` that no loader holds, and the files of a plain layout the
    pointer now hides (under an exclusive lock on the bundle directory: plain loaders hold it)."""
    for entry in out.iterdir():
        if (
            entry.name.startswith(VERSION_PREFIX)
            and entry.name != keep
            and not entry.is_symlink()
            and entry.is_dir()
        ):
            _try_remove(entry)
        elif entry.name.startswith(f".{POINTER_NAME}.") and entry.name.endswith(".tmp"):
            entry.unlink(missing_ok=True)  # a pointer a killed writer did not rename
    old = out / MANIFEST_NAME
    if not old.is_file() or fcntl is None:
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # a plain loader is reading: removed by a later replace
        try:
            names = list(json.loads(old.read_text(encoding="utf-8")).get("files", {}))
        except (ValueError, RecursionError, AttributeError, OSError):
            names = []
        old.unlink(missing_ok=True)
        (out / STAMP_NAME).unlink(missing_ok=True)
        for name in names:
            with contextlib.suppress(_FieldError, OSError):
                p = out / check_file_name(name, "file")
                if p.is_file() and not p.is_symlink():
                    p.unlink()
    finally:
        os.close(fd)


def publish(content: Path, out: Path, *, overwrite: bool) -> None:
    """Make the complete bundle directory `content` (beside or inside `out`'s parent, same file
    system) the bundle at `out` in one step: a rename when `out` does not exist; for an existing
    bundle, a new version directory and the pointer renamed over the old one (`out` never goes
    missing and a loader sees the old or the new version, whole)."""
    out = Path(out)
    if not os.path.lexists(out):
        try:
            os.rename(content, out)
            return
        except OSError:
            if not os.path.lexists(out):
                raise
    if not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if (
        out.is_dir()
        and not out.is_symlink()
        and ((out / MANIFEST_NAME).exists() or (out / POINTER_NAME).exists())
    ):
        name = f"{VERSION_PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"
        os.rename(content, out / name)
        ptmp = out / f".{POINTER_NAME}.{secrets.token_hex(4)}.tmp"
        with open(ptmp, "w", encoding="ascii") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(ptmp, out / POINTER_NAME)
        _fsync_dir(out)
        _remove_old_versions(out, keep=name)
        return
    # Not a bundle (nothing there loads): moved away, replaced, removed.
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    try:
        os.replace(out, trash / "old")
        os.rename(content, out)
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def write_bundle(
    out_dir: str | os.PathLike[str],
    manifest: Manifest,
    populate: Callable[[Path], None],
    *,
    overwrite: bool = False,
) -> Manifest:
    """Write a bundle atomically and return the manifest as written (with file checksums).

    `populate(dir)` writes the graph(s) and tokenizer into a temporary directory beside `out_dir`;
    then every file there is hashed, the manifest is written last, and the directory is published
    (`publish`: renamed into place, or made the new version of an existing bundle). On any error
    the temporary directory is removed.
    """
    out = Path(out_dir)
    if os.path.lexists(out) and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    with staging(out, "partial") as tmp:
        content = tmp / "bundle"
        content.mkdir()
        umask = os.umask(0)
        os.umask(umask)
        content.chmod(0o777 & ~umask)
        populate(content)
        files = {
            p.name: file_record(p)
            for p in sorted(content.iterdir())
            if p.is_file() and not p.is_symlink() and p.name != MANIFEST_NAME and not is_stamp_file(p.name)
        }
        final = dataclasses.replace(manifest, files=files)
        mtmp = content / (MANIFEST_NAME + ".tmp")
        with open(mtmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(final.to_json(), indent=2, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(mtmp, content / MANIFEST_NAME)
        publish(content, out, overwrite=overwrite)
    return final


def move_files(src: Path, dst: Path) -> None:
    """Move every file of `src` except a manifest (and a staging directory's owner file) into
    `dst` (a `write_bundle` populate step for a staged directory that becomes the bundle)."""
    for p in src.iterdir():
        if (
            p.is_file()
            and p.name != MANIFEST_NAME
            and not p.name.startswith(OWNER_NAME)
            and not is_stamp_file(p.name)  # vouches for files where they were, not where they go
        ):
            shutil.move(str(p), dst / p.name)
