"""Batch jobs: embed files of any size, streaming, resumable, on one or several processes.

Scope: the machinery under `inbedder embed` (the CLI only parses flags into a `JobSpec`):
`readers` (lines, JSONL, CSV/TSV, Parquet; files, directories, globs, stdin), `writers` (an
incremental `.npy`, the answers JSONL, Parquet row groups), `loop` (chunks in, vectors out, the
progress record, SIGINT/SIGTERM, resume) and `workers` (several processes on one machine). Ray
Data, for more than one machine, is `inbedder.ray`.
"""

from inbedder.jobs.loop import JobResult, JobSpec, run_job

__all__ = ["JobResult", "JobSpec", "run_job"]
