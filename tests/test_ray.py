"""Ray Data (issue 13): a local cluster (`ray.init(num_cpus=2)`), one Embedder per actor, vectors
equal to the local Embedder's, an actor killed in the middle of the job, `inbedder embed --ray`,
and the per-node bundle cache (copied once, checksums verified)."""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from inbedder import BundleError, Embedder
from inbedder.cli import main

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import inbedder.ray as ir  # noqa: E402 - after the skips: needs the ray extra

N = 240
TEXTS = [
    f"row {k}: " + ("the cat sat on the mat " if k % 2 else "a rainy day in Paris ") * (1 + k % 5)
    for k in range(N)
]
INSTR = ["What animal?" if k % 3 else None for k in range(N)]


@pytest.fixture(scope="module")
def cluster():
    # The machine is shared: Ray's memory monitor would kill these small workers when other jobs
    # fill the memory (it retries them forever); the object store is kept small too.
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"  # noqa: SIM112 - Ray's own spelling
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=300 * 2**20)
    # The fault-injecting actor class below lives in this test module: ship it by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def _dataset(blocks: int = 6):
    table = pa.table({"id": [f"id-{k}" for k in range(N)], "text": TEXTS, "instruction": INSTR})
    step = N // blocks
    return ray.data.from_arrow([table.slice(s, step) for s in range(0, N, step)])


def _want(bundle: Path):
    return Embedder(bundle).encode(TEXTS, [i or "Where?" for i in INSTR], return_answers=True)


def test_cli_ray_reads_and_writes_parquet_directories(cluster, masked_bundle: Path, tmp_path: Path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for part in range(3):
        sl = slice(part * 80, (part + 1) * 80)
        pq.write_table(pa.table({"text": TEXTS[sl], "instruction": INSTR[sl]}), src / f"part-{part}.parquet")
    out = tmp_path / "out"
    args = [
        "embed",
        "--ray",
        "-m",
        str(masked_bundle),
        "-i",
        "Where?",
        str(src),
        "-o",
        str(out),
        "--workers",
        "1",  # one actor of the two CPUs: Ray Data's read and write tasks need the other
    ]
    assert main(args) == 0
    assert f"wrote {out}: {N} rows" in capsys.readouterr().err
    table = pq.read_table(out)
    assert table.column("text").to_pylist() == TEXTS  # rows in input order
    vecs, answers = _want(masked_bundle)
    assert np.abs(np.array(table.column("vector").to_pylist(), dtype=np.float32) - vecs).max() <= 1e-6
    assert table.column("answer").to_pylist() == answers
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        main(args)
    with pytest.raises(SystemExit, match="--resume is not available with --ray"):
        main([*args, "--resume"])
    with pytest.raises(SystemExit, match="--session-cache is not available with --ray"):
        main([*args, "--session-cache", str(tmp_path / "cache")])
    with pytest.raises(SystemExit, match="--row-ops is not available with --ray"):
        main([*args, "--row-ops", str(tmp_path / "libinbedder_row_ops.so")])


def test_vectors_equal_the_local_embedders_keyed_by_id(cluster, masked_bundle: Path, tmp_path: Path):
    ds = ir.embed_dataset(
        _dataset(),
        masked_bundle,  # a local bundle: through the object store, one copy per node
        instruction="Where?",
        instruction_column="instruction",
        answer_column="answer",
        concurrency=2,
        batch_size=50,
        cache_dir=str(tmp_path / "cache"),
    )
    rows = {r["id"]: r for r in ds.take_all()}
    assert sorted(rows) == sorted(f"id-{k}" for k in range(N))
    vecs, answers = _want(masked_bundle)
    got = np.array([rows[f"id-{k}"]["vector"] for k in range(N)], dtype=np.float32)
    assert got.shape == vecs.shape and np.abs(got - vecs).max() <= 1e-6
    assert [rows[f"id-{k}"]["answer"] for k in range(N)] == answers
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.is_dir()] == [
        ir.stage_bundle(masked_bundle).key[:32]
    ]


class DiesOnce(ir.EmbedBatch):
    """An actor that kills its own process (no cleanup, as a lost node would) on the first batch
    any actor of the job gets; the marker file makes it happen once."""

    def __call__(self, batch):
        marker = Path(self.settings["cache_dir"]) / "died"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().__call__(batch)
        os.close(fd)
        os._exit(1)


def test_an_actor_killed_mid_job_and_every_id_comes_once(cluster, masked_bundle: Path, tmp_path: Path):
    shutil.copytree(masked_bundle, tmp_path / "shared")  # a URI every node can reach
    ds = ir.embed_dataset(
        _dataset(blocks=8),
        (tmp_path / "shared").as_uri(),
        instruction="Where?",
        instruction_column="instruction",
        concurrency=2,
        batch_size=30,
        cache_dir=str(tmp_path / "cache"),
        udf=DiesOnce,
    )
    rows = ds.take_all()
    assert (tmp_path / "cache" / "died").exists()  # an actor did die
    counts = collections.Counter(r["id"] for r in rows)
    assert set(counts) == {f"id-{k}" for k in range(N)} and set(counts.values()) == {1}
    vecs, _ = _want(masked_bundle)
    got = {r["id"]: r["vector"] for r in rows}
    assert np.abs(np.array([got[f"id-{k}"] for k in range(N)], dtype=np.float32) - vecs).max() <= 1e-6


def _copy(args):
    source, cache = args
    return ir.node_copy(source, cache)[1]


def test_node_cache_copies_once_and_verifies_checksums(masked_bundle: Path, tmp_path: Path):
    shutil.copytree(masked_bundle, tmp_path / "shared")
    source = ir.stage_bundle((tmp_path / "shared").as_uri())
    cache = str(tmp_path / "cache")
    with mp.get_context("spawn").Pool(3) as pool:
        copied = pool.map(_copy, [(source, cache)] * 6)
    assert sorted(copied) == [False] * 5 + [True]  # six actors on one node: one copy
    local = Path(cache) / source.key[:32]
    graph = next(p for p in local.iterdir() if p.suffix == ".onnx")
    graph.write_bytes(graph.read_bytes()[:-1] + b"\x00")  # damaged in the cache: copied again
    path, again = ir.node_copy(source, cache)
    assert again and Embedder(path).dim == 32
    shared_graph = tmp_path / "shared" / graph.name  # damaged at the source: refused
    shared_graph.write_bytes(shared_graph.read_bytes()[:-1] + b"\x01")
    shutil.rmtree(local)
    with pytest.raises(BundleError, match="sha256 differs from its manifest"):
        ir.node_copy(source, cache)
    assert not [p for p in Path(cache).iterdir() if p.name.endswith(".tmp")]
