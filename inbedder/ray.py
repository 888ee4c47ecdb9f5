"""Ray Data: embed a Ray Dataset with one `Embedder` per actor, on one machine or a cluster.

Scope: `embed_dataset` (a `map_batches` over an actor pool: `concurrency` actors of `num_cpus` /
`num_gpus` each, `batch_size` rows per call), getting the bundle to every node (a local bundle
goes through Ray's object store, a URI such as `s3://...`, `gs://...` or `file:///shared/...` is
read by each node with `pyarrow.fs`; either way each node copies it once into a local cache,
under a file lock, with every file's sha256 checked against the manifest), and the CLI form
`inbedder embed --ray [ADDRESS]` (Parquet in, a Parquet directory out). Needs the `ray` extra.
Ray restarts an actor that dies and retries its batches, so a job survives a lost worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inbedder.errors import BundleError, InputError
from inbedder.runtime.bundle import MANIFEST_NAME as MANIFEST
from inbedder.runtime.bundle import POINTER_NAME as POINTER


def _require_ray() -> Any:
    try:
        import pyarrow  # noqa: F401 - checked here so the message names the extra
        import ray
        import ray.data
    except ImportError as e:
        raise SystemExit(
            f"Ray Data needs the ray extra ({getattr(e, 'name', None) or e} is missing): "
            "pip install 'inbedder[ray]'"
        ) from None
    return ray


def default_cache_dir() -> Path:
    """Where each node keeps its copies: $INBEDDER_CACHE, else ~/.cache/inbedder/ray."""
    env = os.environ.get("INBEDDER_CACHE")
    return Path(env) / "ray" if env else Path.home() / ".cache" / "inbedder" / "ray"


@dataclass(frozen=True)
class BundleSource:
    """A bundle every node can get: `uri` (read with pyarrow.fs) or `ref` (a Ray object holding
    {file name: bytes}, kept in a list so Ray does not fetch it into actors whose node has a copy).
    `key` names the copy in the node cache (the manifest's sha256: the manifest lists every
    file's checksum, so equal keys are equal bundles)."""

    key: str
    files: tuple[str, ...]
    uri: str | None = None
    ref: list[Any] | None = None


def stage_bundle(bundle: str | os.PathLike[str]) -> BundleSource:
    """Driver side: a local bundle directory (put into the object store) or a URI."""
    text = str(bundle)
    if "://" in text:
        fs, root = _fs(text)
        manifest_bytes = _read_uri(fs, f"{root}/{MANIFEST}", text)
        return BundleSource(
            key=hashlib.sha256(manifest_bytes).hexdigest(),
            files=_listed(manifest_bytes, text),
            uri=text,
        )
    ray = _require_ray()
    from inbedder.runtime.bundle import load_bundle
    from inbedder.runtime.hub import resolve_bundle

    b = load_bundle(resolve_bundle(bundle), verify=True)
    manifest_bytes = (b.root / MANIFEST).read_bytes()
    files = _listed(manifest_bytes, text)
    blobs = {name: (b.root / name).read_bytes() for name in (MANIFEST, *files)}
    return BundleSource(key=hashlib.sha256(manifest_bytes).hexdigest(), files=files, ref=[ray.put(blobs)])


def _listed(manifest_bytes: bytes, where: str) -> tuple[str, ...]:
    try:
        files = json.loads(manifest_bytes)["files"]
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"{where}: {MANIFEST} is not a bundle manifest with a 'files' table") from None
    return tuple(sorted(files))


def _fs(uri: str) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow's own kinds (unknown scheme, no credentials)
        raise BundleError(f"{uri}: not a location pyarrow.fs can open ({e})") from None
    path = path.rstrip("/")
    try:  # a versioned bundle: the pointer names the version directory
        with fs.open_input_stream(f"{path}/{POINTER}") as f:
            path = f"{path}/{f.read().decode('ascii').strip()}"
    except (FileNotFoundError, OSError):
        pass
    return fs, path


def _read_uri(fs: Any, path: str, uri: str) -> bytes:
    try:
        with fs.open_input_stream(path) as f:
            data: bytes = f.read()
            return data
    except (FileNotFoundError, OSError) as e:
        raise BundleError(f"{uri}: cannot read {path.rsplit('/', 1)[-1]} ({e})") from None


def node_copy(source: BundleSource, cache_dir: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """Node side: the bundle's directory in this node's cache, copied there first if it is not
    (once per node: concurrent actors wait on a file lock), every file checked against the
    manifest's sha256. Returns (directory, whether this call copied it)."""
    from filelock import FileLock  # a dependency of ray

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / source.key[:32]
    with FileLock(str(cache / f"{source.key[:32]}.lock")):
        if target.is_dir() and _intact(target, source):
            return target, False
        shutil.rmtree(target, ignore_errors=True)  # absent, or damaged since it was copied
        tmp = cache / f".{source.key[:32]}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _fetch(source, tmp)
            if not _intact(tmp, source):
                raise BundleError(
                    f"{source.uri or 'the bundle'}: a file's sha256 differs from its manifest after the copy"
                )
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target, True


def _fetch(source: BundleSource, into: Path) -> None:
    names = (MANIFEST, *source.files)
    if source.uri is not None:
        fs, root = _fs(source.uri)
        for name in names:
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(f"{root}/{name}") as src, open(into / name, "wb") as dst:
                while block := src.read(1 << 22):
                    dst.write(block)
        return
    import ray

    assert source.ref is not None
    blobs = ray.get(source.ref[0])
    for name in names:
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        (into / name).write_bytes(blobs[name])


def _intact(root: Path, source: BundleSource) -> bool:
    """The manifest is the one asked for and every file passes the runtime's own checks against
    it (`load_manifest`: names, sizes, sha256 — with the copy's verified-stamp, a copy already
    checked whole is not hashed again by the node's next actor)."""
    from inbedder.runtime.bundle import load_manifest

    try:
        if hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest() != source.key:
            return False
        load_manifest(root, verify="stamp")
    except (OSError, BundleError):
        return False
    return True


class EmbedBatch:
    """The callable class `map_batches` runs: one `Embedder` per actor (built once, from this
    node's copy of the bundle), a pyarrow Table in, the same Table plus the vector (and answer)
    column out. Subclass and override `embed` or `__call__` to change a stage."""

    def __init__(self, source: BundleSource, settings: dict[str, Any]):
        from inbedder.runtime import Embedder

        self.settings = settings
        local, _ = node_copy(source, settings.get("cache_dir"))
        self.emb = Embedder(local, device=settings["device"], threads=settings["threads"], verify=False)

    def embed(self, texts: list[str], instructions: list[str]) -> tuple[np.ndarray, list[str] | None]:
        s = self.settings
        vecs, answers, _ = self.emb.encode_chunk(
            texts,
            instructions,
            batch_size=s["batch_size"],
            normalize=s["normalize"],
            return_answers=s["answer_column"] is not None,
            truncation=s["truncation"],
            **s["options"],
        )
        return vecs, answers

    def __call__(self, batch: Any) -> Any:  # pyarrow.Table -> pyarrow.Table
        import pyarrow as pa

        s = self.settings
        texts = batch.column(s["text_column"]).to_pylist()
        for k, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"column {s['text_column']!r}: row {k} of a batch is {t!r}, not a string")
        given = s["instruction"]
        if s["instruction_column"] is not None:
            own = batch.column(s["instruction_column"]).to_pylist()
            instrs = [i if i is not None else given for i in own]
        else:
            instrs = [given] * len(texts)
        if s["needs_instruction"] and any(i is None for i in instrs):
            raise InputError("a row has no instruction and none was given (instruction=)")
        vecs, answers = self.embed(texts, [i or "" for i in instrs])
        flat = pa.array(np.ascontiguousarray(vecs, dtype=s["dtype"]).reshape(-1))
        out = batch.append_column(s["vector_column"], pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1]))
        if s["answer_column"] is not None:
            out = out.append_column(s["answer_column"], pa.array(answers, type=pa.string()))
        return out


def embed_dataset(
    ds: Any,
    bundle: str | os.PathLike[str] | BundleSource,
    *,
    instruction: str | None = None,
    text_column: str = "text",
    instruction_column: str | None = None,
    vector_column: str = "vector",
    answer_column: str | None = None,
    normalize: bool = False,
    truncation: str = "input",
    dtype: str = "float32",
    batch_size: int = 256,
    concurrency: int = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    cache_dir: str | None = None,
    udf: type[EmbedBatch] = EmbedBatch,
    **options: Any,
) -> Any:
    """`ds` with a `vector_column` (a fixed-size list of float32, or float16 with `dtype`) and,
    with `answer_column`, the model's answers: `ds.map_batches` over a pool of `concurrency`
    actors (one Embedder each, `num_cpus` onnxruntime threads; `num_gpus` > 0 runs on CUDA),
    `batch_size` rows per call. Lazy, like every Ray Dataset transform."""
    ray = _require_ray()
    from inbedder.runtime.pipeline import pipeline_class

    if dtype not in ("float32", "float16"):
        raise InputError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    source = bundle if isinstance(bundle, BundleSource) else stage_bundle(bundle)
    if source.ref is not None:
        manifest = json.loads(ray.get(source.ref[0])[MANIFEST])
    else:
        fs, root = _fs(source.uri or "")
        manifest = json.loads(_read_uri(fs, f"{root}/{MANIFEST}", source.uri or ""))
    family = pipeline_class(manifest["family"])
    needs = family.needs_instruction
    if needs and instruction is None and instruction_column is None:
        raise InputError(
            f"this bundle ({manifest.get('recipe')}) embeds a text under an instruction: pass "
            'instruction= (or "") or instruction_column='
        )
    if answer_column is not None and not family.answers:
        raise InputError(f"this bundle ({manifest.get('recipe')}) embeds texts without answering")
    settings = {
        "text_column": text_column,
        "instruction_column": instruction_column,
        "instruction": instruction,
        "needs_instruction": needs,
        "vector_column": vector_column,
        "answer_column": answer_column,
        "normalize": normalize,
        "truncation": truncation,
        "dtype": dtype,
        "batch_size": min(batch_size, 64),  # graph calls inside one Ray batch
        "device": "cuda" if num_gpus else "cpu",
        "threads": max(1, int(num_cpus)),
        "cache_dir": cache_dir,
        "options": options,
    }
    return ds.map_batches(
        udf,
        fn_constructor_args=(source, settings),
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,
    )


def read_parquet_groups(ray: Any, paths: list[str]) -> Any:
    """A Dataset of the Parquet files' rows, in file and row order: one item per row group, each
    read by a Ray task (pyarrow on the node that runs it). Ray Data's own `read_parquet` resolves
    paths on several threads at once and, where fsspec is installed without aiohttp, trips over
    fsspec's half-imported HTTP module (an ImportError); this reader has no such step."""
    import pyarrow.parquet as pq

    items = [{"path": p, "group": g} for p in paths for g in range(pq.ParquetFile(p).num_row_groups)]
    return ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        _read_groups, batch_format="pyarrow", batch_size=1
    )


def _read_groups(batch: Any) -> Any:  # (path, group) rows -> the row groups' rows
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [
        pq.ParquetFile(p).read_row_group(g)
        for p, g in zip(batch.column("path").to_pylist(), batch.column("group").to_pylist(), strict=True)
    ]
    return pa.concat_tables(tables)


def run_cli_job(spec: Any, address: str | None) -> int:
    """`inbedder embed --ray [ADDRESS]`: a Parquet file, directory or glob in, a Parquet directory
    out (written beside it under a temporary name, renamed into place when complete), rows in
    input order."""
    ray = _require_ray()
    if spec.resume:
        raise SystemExit(
            "--resume is not available with --ray (Ray retries failed tasks itself); "
            "run again with --overwrite"
        )
    if spec.answers is not None:
        raise SystemExit("--answers is for .npy outputs: with --ray the answers are an 'answer' column")
    if spec.session_cache is not None:
        raise SystemExit(
            "--session-cache is not available with --ray (the actors open their sessions on the nodes)"
        )
    if spec.row_ops is not None:
        raise SystemExit("--row-ops is not available with --ray (the library path is this machine's)")
    out = Path(spec.output)
    if out.exists() and not spec.overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to replace it")
    from inbedder.jobs.readers import resolve_inputs
    from inbedder.runtime.bundle import load_manifest
    from inbedder.runtime.hub import resolve_bundle
    from inbedder.runtime.pipeline import pipeline_class

    sources = resolve_inputs(spec.input, "parquet" if spec.fmt == "auto" else spec.fmt)
    if any(s.path is None or s.fmt != "parquet" for s in sources):
        raise SystemExit("--ray reads Parquet files (a file, a directory of them or a glob)")
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    if not spec.quiet:
        ray.data.DataContext.get_current().enable_progress_bars = bool(spec.progress)
    family = pipeline_class(load_manifest(resolve_bundle(spec.model), verify=False).family)
    started = time.perf_counter()
    import pyarrow.parquet as pq

    ds = read_parquet_groups(ray, [str(s.path) for s in sources])
    names = pq.ParquetFile(str(sources[0].path)).schema_arrow.names
    # As for local jobs: an 'instruction' column, when there is one, gives per-row instructions.
    icol = spec.columns.instruction or ("instruction" if "instruction" in names else None)
    ds = embed_dataset(
        ds,
        spec.model,
        instruction=spec.instruction,
        text_column=spec.columns.text,
        instruction_column=icol,
        answer_column="answer" if family.answers else None,
        normalize=spec.normalize,
        truncation=spec.truncation,
        dtype=spec.dtype,
        batch_size=max(spec.chunk_size // 4, 1),
        concurrency=spec.workers,
        num_cpus=spec.threads or 1,
        num_gpus=1 if spec.device == "cuda" else 0,
        **spec.options,
    )
    tmp = out.with_name(f".{out.name}.writing-{os.getpid()}")
    try:
        ds.write_parquet(str(tmp))
        import pyarrow.parquet as pq

        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(tmp.glob("*.parquet")))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    seconds = time.perf_counter() - started
    if not spec.quiet:
        print(
            f"wrote {out}: {rows} rows (Ray Data, {spec.workers} actor(s)); {rows} texts in {seconds:.1f} s "
            f"({rows / seconds:.0f} texts/s)",
            file=sys.stderr,
        )
    return 0
