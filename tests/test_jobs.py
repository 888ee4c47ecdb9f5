"""Batch jobs (issue 13, one machine): streaming in chunks, every input format, .npy / Parquet /
float16 outputs, the progress record, a real run stopped by SIGTERM / SIGINT and resumed to the
same bytes as an uninterrupted run, and --workers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from inbedder import Embedder
from inbedder.cli import main

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TEXTS = [
    f"text number {k} about {'cats' if k % 3 else 'a rainy Tuesday in Paris'}" * (1 + k % 4)
    for k in range(23)
]
INSTR = ["What animal?" if k % 2 else "Where?" for k in range(23)]


@pytest.fixture(scope="module")
def emb(masked_bundle: Path) -> Embedder:
    return Embedder(masked_bundle)


@pytest.fixture(scope="module")
def want(emb: Embedder):
    return emb.encode(TEXTS, INSTR, return_answers=True)


def _jsonl(path: Path) -> Path:
    rows = [
        {"id": f"r{k}", "text": t, "instruction": i}
        for k, (t, i) in enumerate(zip(TEXTS, INSTR, strict=True))
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_chunks_stream_to_npy_and_answers_equal_to_encode(
    masked_bundle: Path, emb: Embedder, want, tmp_path: Path, capsys
):
    src = _jsonl(tmp_path / "in.jsonl")
    out, ans = tmp_path / "e.npy", tmp_path / "a.jsonl"
    args = ["embed", "-m", str(masked_bundle), str(src), "-o", str(out), "--answers", str(ans)]
    assert main([*args, "--chunk-size", "5", "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    truncated = sum(e.truncated for e in emb.pipeline.tokenize(TEXTS, INSTR, "input"))
    assert truncated > 0  # the tiny model's 130 positions: the longest texts are cut
    assert (
        "23 texts in" in err
        and "texts/s" in err
        and f"{truncated} truncated" in err
        and "read as jsonl" in err
    )
    vecs = np.load(out)
    assert vecs.dtype == np.float32 and vecs.shape == (23, 32)
    assert np.abs(vecs - want[0]).max() <= 1e-6
    assert [json.loads(x)["answer"] for x in ans.read_text(encoding="utf-8").splitlines()] == want[1]
    assert not (tmp_path / "e.npy.progress.json").exists() and not (tmp_path / "e.partial.npy").exists()
    # float16: the same vectors, rounded
    assert main([*args, "--overwrite", "--dtype", "float16", "-q"]) == 0
    half = np.load(out)
    assert half.dtype == np.float16 and np.array_equal(half, want[0].astype(np.float16))


def test_npy_header_counts_rows_after_every_chunk(masked_bundle: Path, tmp_path: Path, monkeypatch):
    """The partial .npy is a valid array of the rows done at every point of the run."""
    import inbedder.jobs.writers as writers

    seen = []
    real = writers.NpyWriter.write

    def spy(self, vecs):
        real(self, vecs)
        seen.append(np.load(self.path).shape)

    monkeypatch.setattr(writers.NpyWriter, "write", spy)
    src = _jsonl(tmp_path / "in.jsonl")
    assert (
        main(
            [
                "embed",
                "-m",
                str(masked_bundle),
                str(src),
                "-o",
                str(tmp_path / "e.npy"),
                "--chunk-size",
                "10",
                "-q",
            ]
        )
        == 0
    )
    assert seen == [(10, 32), (20, 32), (23, 32)]
    import io

    whole = io.BytesIO()
    np.save(whole, np.load(tmp_path / "e.npy"))
    assert (tmp_path / "e.npy").read_bytes() == whole.getvalue()  # the same file np.save writes


def test_parquet_output_has_id_text_answer_vector(masked_bundle: Path, want, tmp_path: Path):
    src = _jsonl(tmp_path / "in.jsonl")
    out = tmp_path / "e.parquet"
    assert (
        main(["embed", "-m", str(masked_bundle), str(src), "-o", str(out), "--chunk-size", "10", "-q"]) == 0
    )
    f = pq.ParquetFile(out)
    assert f.num_row_groups == 3  # one per chunk
    t = f.read()
    assert t.column_names == ["id", "text", "answer", "vector"]
    assert t.schema.field("vector").type == pa.list_(pa.float32(), 32)
    assert t.column("id").to_pylist() == [f"r{k}" for k in range(23)]
    assert t.column("text").to_pylist() == TEXTS and t.column("answer").to_pylist() == want[1]
    assert np.abs(np.array(t.column("vector").to_pylist(), dtype=np.float32) - want[0]).max() <= 1e-6
    out16 = tmp_path / "h.parquet"
    assert (
        main(["embed", "-m", str(masked_bundle), str(src), "-o", str(out16), "--dtype", "float16", "-q"]) == 0
    )
    assert pq.read_table(out16).schema.field("vector").type == pa.list_(pa.float16(), 32)


def test_csv_tsv_parquet_directory_and_glob_inputs(masked_bundle: Path, emb: Embedder, tmp_path: Path):
    d = tmp_path / "in"
    d.mkdir()
    # CSV with a quoted newline and a custom column name; TSV without quoting; Parquet with ids
    (d / "a.csv").write_text('body,instruction\n"line one\nline two",Why?\nplain,\n', encoding="utf-8")
    (d / "b.tsv").write_text('body\tinstruction\n"quoted" stays\tWho?\n', encoding="utf-8")
    pq.write_table(pa.table({"body": ["from parquet"], "instruction": [None], "key": [7]}), d / "c.parquet")
    (d / "_SUCCESS").write_text("")
    out = tmp_path / "e.npy"
    args = ["embed", "-m", str(masked_bundle), "-i", "What?", "--text-column", "body", "-q"]
    assert main([*args, str(d), "-o", str(out)]) == 0
    texts = ["line one\nline two", "plain", '"quoted" stays', "from parquet"]
    instrs = ["Why?", "What?", "Who?", "What?"]  # an empty CSV field is "" (given), a null is -i's
    instrs[1] = ""
    assert np.abs(np.load(out) - emb.encode(texts, instrs)).max() <= 1e-6
    assert main([*args, str(d / "*.csv"), "-o", str(tmp_path / "g.npy")]) == 0
    assert np.load(tmp_path / "g.npy").shape == (2, 32)
    with pytest.raises(SystemExit, match="matches no files"):
        main([*args, str(d / "*.xml"), "-o", str(tmp_path / "x.npy")])
    with pytest.raises(SystemExit, match=r"no column 'nope' in the CSV header"):
        main([*args, "--text-column", "nope", str(d / "a.csv"), "-o", str(tmp_path / "y.npy")])


def test_a_bad_record_anywhere_fails_before_anything_is_embedded(
    masked_bundle: Path, tmp_path: Path, monkeypatch
):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"t{k}"}) + "\n" for k in range(50)) + '{"txt": 1}\n')
    called = []
    monkeypatch.setattr(Embedder, "encode_chunk", lambda *a, **k: called.append(1))
    with pytest.raises(SystemExit, match=r"in\.jsonl:51: a JSONL record needs a string field 'text'"):
        main(
            [
                "embed",
                "-m",
                str(masked_bundle),
                "-i",
                "q",
                str(src),
                "-o",
                str(tmp_path / "e.npy"),
                "--chunk-size",
                "8",
            ]
        )
    assert not called and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_an_unfinished_run_needs_resume_or_overwrite(masked_bundle: Path, tmp_path: Path, monkeypatch):
    import inbedder.jobs.loop as loop

    src = _jsonl(tmp_path / "in.jsonl")
    out = tmp_path / "e.npy"
    args = ["embed", "-m", str(masked_bundle), str(src), "-o", str(out), "--chunk-size", "5", "-q"]
    real = loop.embed_records
    calls = []

    def stop_on_third(*a, **k):  # Ctrl-C during the third chunk: two are kept
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(loop, "embed_records", stop_on_third)
    assert main(args) == 130
    monkeypatch.setattr(loop, "embed_records", real)
    record = json.loads((tmp_path / "e.npy.progress.json").read_text())
    assert (
        record["rows"] == 10
        and record["total"] == 23
        and np.load(tmp_path / "e.partial.npy").shape == (10, 32)
    )
    with pytest.raises(SystemExit, match=r"an unfinished run \(10 of 23 texts done\).*--resume.*--overwrite"):
        main(args)
    with pytest.raises(SystemExit, match=r"different dtype"):
        main([*args, "--resume", "--dtype", "float16"])
    src.write_text(src.read_text() + '{"text": "one more", "instruction": "q"}\n')
    with pytest.raises(SystemExit, match=r"different input"):
        main([*args, "--resume"])
    with pytest.raises(SystemExit, match="nothing to resume"):
        main(["embed", "-m", str(masked_bundle), str(src), "-o", str(tmp_path / "other.npy"), "--resume"])
    assert main([*args, "--overwrite"]) == 0 and np.load(out).shape == (24, 32)
    assert not (tmp_path / "e.npy.progress.json").exists()


def _start(bundle: Path, src: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "inbedder.cli",
        "embed",
        "-m",
        str(bundle),
        "-i",
        "What?",
        str(src),
        "-o",
        str(out),
    ]
    return subprocess.Popen(
        [*cmd, "--chunk-size", "64", "--threads", "1", "--no-progress", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop_partway(p: subprocess.Popen, record: Path, sig: int, rows: int) -> tuple[int, str]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if p.poll() is not None:
            break
        try:
            if json.loads(record.read_text())["rows"] >= rows:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    return p.returncode, err


@pytest.mark.parametrize("sig, suffix", [(signal.SIGTERM, ".npy"), (signal.SIGINT, ".parquet")])
def test_a_killed_run_resumes_to_the_bytes_of_an_uninterrupted_one(
    masked_bundle: Path, tmp_path: Path, sig, suffix
):
    src = tmp_path / "in.txt"
    src.write_text("".join(f"line {k} " + "word " * (k % 13) + "\n" for k in range(2500)), encoding="utf-8")
    whole = tmp_path / f"whole{suffix}"
    extra = ("--answers", str(tmp_path / "whole.jsonl")) if suffix == ".npy" else ()
    assert _start(masked_bundle, src, whole, *extra).wait(timeout=300) == 0

    out = tmp_path / f"e{suffix}"
    extra = ("--answers", str(tmp_path / "e.jsonl")) if suffix == ".npy" else ()
    record = tmp_path / f"e{suffix}.progress.json"
    if suffix == ".npy":
        rc, err = _stop_partway(_start(masked_bundle, src, out, *extra), record, sig, 128)
    else:  # Parquet's record moves only when the run stops: the working file appears with the
        # first chunk's rows, so a signal sent then stops the run after one or two chunks (a
        # sleep here made the test depend on the machine's speed: 2,500 texts take 1.5 s quiet).
        p = _start(masked_bundle, src, out, *extra)
        while p.poll() is None and not (tmp_path / f".e{suffix}.writing").exists():
            time.sleep(0.01)
        rc, err = _stop_partway(p, record, sig, 0)
    assert rc == 128 + sig, err
    assert "Traceback" not in err and "--resume" in err and "to continue:" in err
    done = json.loads(record.read_text())["rows"]
    assert 0 < done < 2500 and done % 64 == 0, done
    partial = tmp_path / f"e.partial{suffix}"
    n = np.load(partial).shape[0] if suffix == ".npy" else pq.ParquetFile(partial).metadata.num_rows
    assert n == done  # readable, with the rows done
    assert not out.exists()
    resumed = _start(masked_bundle, src, out, *extra, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert out.read_bytes() == whole.read_bytes()
    if suffix == ".npy":
        assert (tmp_path / "e.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert not record.exists() and not partial.exists()


def test_workers_write_the_same_bytes_as_one_process(masked_bundle: Path, tmp_path: Path):
    src = _jsonl(tmp_path / "in.jsonl")
    one, two = tmp_path / "one.npy", tmp_path / "two.npy"
    base = ["embed", "-m", str(masked_bundle), str(src), "--chunk-size", "4", "-q"]
    assert main([*base, "-o", str(one), "--answers", str(tmp_path / "one.jsonl")]) == 0
    assert main([*base, "-o", str(two), "--answers", str(tmp_path / "two.jsonl"), "--workers", "2"]) == 0
    assert one.read_bytes() == two.read_bytes()
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()


def test_missing_pyarrow_is_one_line(masked_bundle: Path, tmp_path: Path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_arrow(name, *a, **kw):
        if name.startswith("pyarrow"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_arrow)
    src = _jsonl(tmp_path / "in.jsonl")
    with pytest.raises(
        SystemExit, match=r"needs pyarrow \(the parquet extra\): pip install 'inbedder\[parquet\]'"
    ):
        main(["embed", "-m", str(masked_bundle), str(src), "-o", str(tmp_path / "e.parquet"), "-q"])
