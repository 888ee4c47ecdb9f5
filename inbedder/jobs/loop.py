"""The streaming loop of a batch job: chunks in, vectors out, a progress record after each chunk.

Scope: checking outputs and the resume record before any work, a first pass over the input
files (every record checked and counted, each file's sha256: the fingerprint a resume must
match), then chunks of `chunk_size` records, each embedded (sorted by length inside the chunk,
order restored, by the `Embedder`) and written before the next is read. SIGINT/SIGTERM stop after
the current chunk (a second one stops at once); the partial output stays readable and the record
beside it says how to resume. Memory holds a few chunks, whatever the input's size.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from inbedder.errors import InbedderError, InputError
from inbedder.jobs.readers import Columns, Record, Stats, records, resolve_inputs
from inbedder.jobs.writers import AnswersWriter, NpyWriter, ParquetWriter, partial_path

RECORD_VERSION = 1
DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class JobSpec:
    """What `inbedder embed` was asked (see the CLI's help for each)."""

    model: str
    input: str
    output: str
    answers: str | None = None
    fmt: str = "auto"
    columns: Columns = field(default_factory=Columns)
    instruction: str | None = None
    batch_size: int = 32
    chunk_size: int = 1024
    normalize: bool = False
    truncation: str = "input"
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None
    verify: str = "stamp"  # checksums: Embedder's `verify`
    spinning: bool = False
    session_cache: str | None = None  # Embedder's `session_cache`
    row_ops: str | None = None  # Embedder's `row_ops` (the operator library's path)
    workers: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    resume: bool = False
    progress: bool | None = None
    quiet: bool = False
    command: tuple[str, ...] = ()  # the command line, to print how to resume


@dataclass
class JobResult:
    output: Path
    rows: int  # rows in the output (all runs)
    dim: int
    embedded: int  # texts embedded by this run
    seconds: float
    truncated: int
    blank: int
    formats: list[str]
    sources: list[str]
    stopped: int | None = None  # the signal that stopped the job, if one did


def output_path(name: str) -> Path:
    """Parquet for `.parquet`/`.pq`; otherwise the file `np.save` writes (`.npy` appended)."""
    path = Path(name)
    if path.suffix.lower() in (".parquet", ".pq", ".npy"):
        return path
    return path.with_name(path.name + ".npy")


def record_path(out: Path) -> Path:
    return out.with_name(out.name + ".progress.json")


def _file_digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
                size += len(block)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    return {"size": size, "sha256": h.hexdigest()}


def _write_record(path: Path, rec: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(rec, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


class Interrupted(KeyboardInterrupt):
    """A job stopped at once (a second signal, or Ctrl-C outside the loop's handlers): `kept`
    rows are in the partial output (0: nothing was changed)."""

    def __init__(self, signum: int, kept: int):
        super().__init__(f"signal {signum}")
        self.signum, self.kept = signum, kept


class _Stop:
    """SIGINT/SIGTERM: the first asks to stop after the current chunk, a second stops at once."""

    def __init__(self, quiet: bool):
        self.signum: int | None = None
        self.quiet = quiet
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for s in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise Interrupted(signum, 0)
        self.signum = signum
        if not self.quiet:
            print(
                f"\ninbedder embed: {signal.Signals(signum).name}: stopping after the current chunk "
                "(again to stop now)",
                file=sys.stderr,
            )

    def __exit__(self, *exc: object) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


def run_job(spec: JobSpec, stdin: Any = None) -> JobResult:
    """Run (or resume) one job; see the module docstring. Raises `SystemExit` (a message) for
    a bad input file or an existing output, `InbedderError` for a bad value, `OSError` naming the
    file; a `KeyboardInterrupt` leaves the done chunks resumable."""
    from inbedder.runtime.bundle import MANIFEST_NAME, load_bundle
    from inbedder.runtime.hub import resolve_bundle
    from inbedder.runtime.pipeline import pipeline_class

    if spec.dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {DTYPES}, got {spec.dtype!r}")
    for name, value in (("--chunk-size", spec.chunk_size), ("--workers", spec.workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive int, got {value!r}")
    sources = resolve_inputs(spec.input, spec.fmt)
    out = output_path(spec.output)
    parquet = out.suffix.lower() in (".parquet", ".pq")
    if parquet and spec.answers is not None:
        raise SystemExit("--answers is for .npy outputs: a Parquet output has an 'answer' column")
    finals = [out] + ([Path(spec.answers)] if spec.answers is not None else [])
    rec_path = record_path(out)
    for p in finals:
        if p.is_dir():
            raise SystemExit(f"{p} is a directory; name the output file")
    old: dict[str, Any] | None = None
    if rec_path.exists():
        try:
            old = json.loads(rec_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SystemExit(f"{rec_path}: not a progress record inbedder can read ({e})") from None
        if not spec.resume and not spec.overwrite:
            raise SystemExit(
                f"{rec_path}: an unfinished run ({old.get('rows')} of {old.get('total')} texts done) "
                f"is beside {out}; pass --resume to continue it or --overwrite to start again"
            )
    if spec.resume:
        if old is None:
            complete = f" ({out} is complete)" if out.exists() else ""
            raise SystemExit(f"{rec_path}: no progress record: nothing to resume{complete}")
        if sources[0].path is None:
            raise SystemExit("--resume needs an input file: stdin cannot be read again")
    else:
        old = None
        if not spec.overwrite:
            for p in finals:
                if p.exists():
                    raise SystemExit(f"{p} exists; pass --overwrite to replace it")

    bundle_dir = resolve_bundle(spec.model)
    bundle = load_bundle(bundle_dir, verify=False)  # Embedder verifies the checksums below
    manifest = bundle.manifest
    family = pipeline_class(manifest.family)
    manifest_sha = hashlib.sha256((bundle.root / MANIFEST_NAME).read_bytes()).hexdigest()
    for name in set(spec.options) - set(family.options):
        accepted = ", ".join(_flag(o) for o in sorted(family.options)) or "none"
        raise SystemExit(
            f"{_flag(name)} does not apply to this bundle ({manifest.family}; its options: {accepted})"
        )
    if spec.answers is not None and not family.answers:
        raise InputError(
            f"this bundle ({manifest.recipe}) embeds texts without answering; --answers is not available"
        )
    want_answers = family.answers and (parquet or spec.answers is not None)
    need = family.needs_instruction and spec.instruction is None
    dim = manifest.embedding_dim

    # The first pass: every record checked and counted, each file hashed (not for stdin).
    total: int | None = None
    fingerprint: list[dict[str, Any]] | None = None
    if sources[0].path is not None:
        stats = Stats()
        total = sum(1 for _ in records(sources, spec.columns, spec.instruction, need, stats))
        fingerprint = [_file_digest(s.path) for s in sources if s.path is not None]
    job = {
        "input": fingerprint,
        "formats": [s.fmt for s in sources],
        "model": manifest_sha,
        "instruction": spec.instruction,
        "columns": [spec.columns.text, spec.columns.instruction, spec.columns.id],
        "normalize": spec.normalize,
        "truncation": spec.truncation,
        "dtype": spec.dtype,
        "chunk_size": spec.chunk_size,
        "options": dict(sorted(spec.options.items())),
        "answers": spec.answers,
    }
    if old is not None:
        if old.get("version") != RECORD_VERSION:
            raise SystemExit(f"{rec_path}: a progress record of another inbedder version; start again")
        differ = sorted(k for k in job if old.get("job", {}).get(k) != job[k])
        if differ:
            raise SystemExit(
                f"{rec_path}: the run being resumed had a different {', '.join(differ)} (input files, "
                "bundle and options must be the same); resume with those, or pass --overwrite"
            )
    elif spec.overwrite:
        for p in [rec_path, *(partial_path(f) for f in finals)]:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # the open below says
                p.unlink()

    done = int(old["rows"]) if old else 0
    states = old["outputs"] if old else {}
    writers: list[Any] = []
    main: Any
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "job": job,
        "total": total,
        "rows": done,
        "outputs": states,
    }
    try:
        for f in finals:
            try:
                f.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OSError(e.errno, e.strerror, str(f)) from None
        if parquet:
            main = ParquetWriter(out, dim, spec.dtype, want_answers, states.get("vectors"))
        else:
            main = NpyWriter(out, dim, spec.dtype, states.get("vectors"))
        writers.append(main)
        answers = AnswersWriter(Path(spec.answers), states.get("answers")) if spec.answers else None
        if answers is not None:
            writers.append(answers)
    except BaseException:
        for w in writers:
            _close_quietly(w)
        if done == 0:
            _remove_partials(finals, rec_path)
        raise

    def save_record() -> None:
        record["rows"] = main.state()["rows"]
        record["outputs"] = {"vectors": main.state()} | (
            {"answers": answers.state()} if answers is not None else {}
        )
        _write_record(rec_path, record)

    stats = Stats()
    show = False if spec.quiet else (spec.progress if spec.progress is not None else sys.stderr.isatty())
    bar = tqdm(total=total, initial=done, unit="text", desc="embedding", disable=not show, smoothing=0.05)
    started = time.perf_counter()
    embedded = truncated = 0
    stop = _Stop(spec.quiet)
    interrupted: BaseException | None = None
    try:
        if old is None:
            save_record()  # the run is marked before anything is embedded
        with stop, _engine(spec, bundle_dir, bar.update) as engine:
            it: Iterator[Record] = records(sources, spec.columns, spec.instruction, need, stats, stdin)
            for _ in itertools.islice(it, done):
                pass  # done by an earlier run

            def chunks() -> Iterator[list[Record]]:
                while stop.signum is None and (chunk := list(itertools.islice(it, spec.chunk_size))):
                    yield chunk

            row = done
            for chunk, (vecs, ans, trunc) in engine.run(chunks(), spec, want_answers):
                texts = [r[0] for r in chunk]
                if parquet:
                    ids = [r[2] if r[2] is not None else row + k for k, r in enumerate(chunk)]
                    main.write(ids, texts, ans, vecs)
                else:
                    main.write(vecs)
                    if answers is not None:
                        answers.write(texts, ans or [])
                    save_record()
                row += len(chunk)
                embedded += len(chunk)
                truncated += trunc
    except BaseException as e:
        interrupted = e
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    if interrupted is None and stop.signum is None:
        if answers is not None:
            answers.finish()
        main.finish()
        rec_path.unlink(missing_ok=True)
    else:
        # The last record saved is what the partial files durably hold (.npy: after every chunk;
        # a chunk whose write failed is cut off on resume). Parquet: the footer written now.
        if parquet:
            if interrupted is None or isinstance(interrupted, KeyboardInterrupt):
                with contextlib.suppress(Exception):
                    main.close()  # the partial file now holds every done chunk
                    save_record()
            main.discard()
        kept = int(record["rows"])
        for w in writers:
            _close_quietly(w)
        if not kept:
            _remove_partials(finals, rec_path)
        if not spec.quiet or interrupted is not None:
            _say_how_to_resume(spec, kept, total, partial_path(out), sources[0].path is None, stop.signum)
        if interrupted is not None:
            if isinstance(interrupted, InbedderError):  # the library's names, as the flags typed
                message = str(interrupted)
                for name in (*spec.options, "batch_size"):
                    message = message.replace(name, _flag(name))
                raise type(interrupted)(message) from None
            if isinstance(interrupted, KeyboardInterrupt):
                signum = getattr(interrupted, "signum", None) or stop.signum or signal.SIGINT
                raise Interrupted(signum, kept) from None
            raise interrupted
    return JobResult(
        output=out,
        rows=int(record["rows"]) if stop.signum is not None else done + embedded,
        dim=dim,
        embedded=embedded,
        seconds=seconds,
        truncated=truncated,
        blank=stats.blank,
        formats=sorted(stats.formats or {s.fmt for s in sources}),
        sources=[s.name for s in sources],
        stopped=stop.signum,
    )


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _close_quietly(w: Any) -> None:
    with contextlib.suppress(Exception):
        w.close()


def _remove_partials(finals: list[Path], rec: Path) -> None:
    for p in [rec, *(partial_path(f) for f in finals), *(f.with_name(f".{f.name}.writing") for f in finals)]:
        with contextlib.suppress(OSError):
            p.unlink(missing_ok=True)


def _say_how_to_resume(
    spec: JobSpec, kept: int, total: int | None, partial: Path, stdin: bool, signum: int | None
) -> None:
    if not kept:
        return
    of = f" of {total}" if total is not None else ""
    if stdin:
        print(
            f"inbedder embed: stopped: {kept}{of} texts done are in {partial} (the input was stdin, "
            "so the run cannot be resumed)",
            file=sys.stderr,
        )
        return
    cmd = list(spec.command) or ["inbedder", "embed", "..."]
    cmd = [a for a in cmd if a not in ("--overwrite", "--resume")] + ["--resume"]
    print(
        f"inbedder embed: stopped: {kept}{of} texts done are in {partial}; to continue: {shlex.join(cmd)}",
        file=sys.stderr,
    )


class _InProcess:
    """workers=1: one Embedder in this process; the bar advances per batch."""

    def __init__(self, spec: JobSpec, bundle_dir: Path, on_batch: Callable[[int], object]):
        from inbedder.runtime import Embedder

        self.emb = Embedder(
            bundle_dir,
            device=spec.device,  # type: ignore[arg-type]  # a CLI string: Embedder checks it
            threads=spec.threads,
            verify=spec.verify,  # type: ignore[arg-type]  # likewise
            spinning=spec.spinning,
            session_cache=spec.session_cache,
            row_ops=spec.row_ops,
        )
        self.on_batch = on_batch

    def run(
        self, chunks: Iterator[list[Record]], spec: JobSpec, want_answers: bool
    ) -> Iterator[tuple[list[Record], tuple[Any, list[str] | None, int]]]:
        for chunk in chunks:
            yield chunk, embed_records(self.emb, chunk, spec, want_answers, self.on_batch)

    def close(self) -> None:
        self.emb.close()


def embed_records(
    emb: Any, chunk: list[Record], spec: JobSpec, want_answers: bool, on_batch: Any = None
) -> tuple[Any, list[str] | None, int]:
    vecs, ans, trunc = emb.encode_chunk(
        [r[0] for r in chunk],
        [r[1] or "" for r in chunk],
        batch_size=spec.batch_size,
        normalize=spec.normalize,
        return_answers=want_answers,
        truncation=spec.truncation,
        on_batch=on_batch,
        **spec.options,
    )
    return vecs.astype(spec.dtype, copy=False), ans, trunc


@contextlib.contextmanager
def _engine(spec: JobSpec, bundle_dir: Path, on_batch: Callable[[int], object]) -> Iterator[Any]:
    if spec.workers == 1:
        engine: Any = _InProcess(spec, bundle_dir, on_batch)
    else:
        from inbedder.jobs.workers import WorkerPool

        engine = WorkerPool(spec, bundle_dir, on_batch)
    try:
        yield engine
    finally:
        engine.close()
