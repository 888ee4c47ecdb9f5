"""`--workers N`: a job's chunks embedded by N processes on one machine, written in input order.

Scope: a small process pool (spawned, so no onnxruntime state is forked) with one `Embedder` per
process and `threads` (default: the cores divided between the workers) onnxruntime threads each.
Workers ignore SIGINT and SIGTERM: the parent decides when to stop (after the chunks in flight)
and ends them; a worker that dies is an error naming its exit code. At most 2 x N chunks are in
flight, so memory stays bounded.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from inbedder.errors import InbedderError
from inbedder.jobs.readers import Record


def threads_per_worker(workers: int, threads: int | None) -> int:
    """`--threads`, else the cores split evenly between the workers (at least one each)."""
    if threads is not None:
        return threads
    from inbedder.runtime.session import available_cores

    return max(1, available_cores() // workers)


def _worker(spec: Any, bundle_dir: str, threads: int, tasks: Any, results: Any, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from inbedder.jobs.loop import embed_records
    from inbedder.runtime import Embedder

    try:
        emb = Embedder(
            bundle_dir,
            device=spec.device,
            threads=threads,
            verify=spec.verify,
            spinning=spec.spinning,
            session_cache=spec.session_cache,
            row_ops=spec.row_ops,
        )
    except BaseException as e:
        results.put((-1, "error", _portable(e)))
        return
    while True:
        try:
            task = tasks.get(timeout=2.0)
        except queue.Empty:
            if os.getppid() != parent:  # the parent is gone (killed): stop too
                return
            continue
        if task is None:
            return
        seq, chunk, want_answers = task
        try:
            results.put((seq, "ok", embed_records(emb, chunk, spec, want_answers)))
        except BaseException as e:
            results.put((seq, "error", _portable(e)))


def _portable(e: BaseException) -> BaseException:
    """The exception itself when it pickles as what it is (inbedder's errors, OSError), else a
    RuntimeError carrying the worker's traceback."""
    if isinstance(e, (InbedderError, OSError, SystemExit)):
        return e
    return RuntimeError("a worker failed:\n" + "".join(traceback.format_exception(e)))


class WorkerPool:
    """N spawned worker processes sharing one task queue (each takes the next chunk when free)."""

    def __init__(self, spec: Any, bundle_dir: Path, on_chunk: Callable[[int], object]):
        ctx = mp.get_context("spawn")
        self.tasks = ctx.Queue()
        self.results = ctx.Queue()
        self.on_chunk = on_chunk
        threads = threads_per_worker(spec.workers, spec.threads)
        self.procs = [
            ctx.Process(
                target=_worker,
                args=(spec, str(bundle_dir), threads, self.tasks, self.results, os.getpid()),
                daemon=True,
                name=f"inbedder-worker-{k}",
            )
            for k in range(spec.workers)
        ]
        for p in self.procs:
            p.start()

    def run(
        self, chunks: Iterator[list[Record]], spec: Any, want_answers: bool
    ) -> Iterator[tuple[list[Record], Any]]:
        pending: dict[int, list[Record]] = {}
        ready: dict[int, Any] = {}
        submitted = written = 0
        source = iter(chunks)
        exhausted = False
        while True:
            while not exhausted and submitted - written < 2 * len(self.procs):
                chunk = next(source, None)
                if chunk is None:
                    exhausted = True
                    break
                pending[submitted] = chunk
                self.tasks.put((submitted, chunk, want_answers))
                submitted += 1
            if written == submitted:
                return
            while written not in ready:
                seq, kind, value = self._get()
                if kind == "error":
                    raise value
                ready[seq] = value
            chunk = pending.pop(written)
            result = ready.pop(written)
            written += 1
            self.on_chunk(len(chunk))
            yield chunk, result

    def _get(self) -> tuple[int, str, Any]:
        while True:
            try:
                got: tuple[int, str, Any] = self.results.get(timeout=1.0)
                return got
            except queue.Empty:
                dead = [p for p in self.procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(
                        f"worker {dead[0].name} exited with code {dead[0].exitcode} in the middle of the job"
                    ) from None

    def close(self) -> None:
        # Chunks not yet taken are dropped (a stop at once): the workers then see their sentinels.
        with contextlib.suppress(queue.Empty, OSError, ValueError):
            while True:
                self.tasks.get_nowait()
        for _ in self.procs:
            self.tasks.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        self.tasks.close()
        self.results.close()
