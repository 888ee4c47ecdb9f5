"""The command line under hostile input and a hostile file system (issue 11, items 4, 7, 8, 11, 12)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import inbedder.jobs.writers as writers
from inbedder import Embedder
from inbedder.cli import main

ODD = ["a\u2028b", "c\u0085d", "e\x0cf", "g\rh", "plain", "\u2029", "tab\there", "x\x0by"]


@pytest.fixture(scope="module")
def emb(masked_bundle: Path) -> Embedder:
    return Embedder(masked_bundle)


# -- item 4: lines are lines --------------------------------------------------------------------
def test_line_mode_splits_on_newline_only(masked_bundle: Path, emb: Embedder, tmp_path: Path):
    src = tmp_path / "in.txt"
    # CRLF line ends lose their \r; every other separator stays inside its line.
    src.write_bytes(("\n".join(ODD[:-1]) + "\r\n" + ODD[-1] + "\n").encode("utf-8"))
    out = tmp_path / "e.npy"
    assert main(["embed", "-m", str(masked_bundle), "-i", "q", str(src), "-o", str(out), "-q"]) == 0
    vecs = np.load(out)
    assert vecs.shape[0] == len(ODD)
    for i, line in enumerate(ODD):  # row i is line i
        np.testing.assert_allclose(vecs[i], emb.encode([line], "q")[0], atol=1e-5)


def test_line_mode_from_stdin_splits_on_newline_only(masked_bundle: Path, tmp_path: Path, monkeypatch):
    data = "one\u2028two\r\nthree\rfour\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.encode("utf-8")), encoding="utf-8"))
    out = tmp_path / "e.npy"
    assert main(["embed", "-m", str(masked_bundle), "-i", "q", "-", "-o", str(out), "-q"]) == 0
    assert np.load(out).shape[0] == 2


def test_jsonl_lines_split_on_newline_only(masked_bundle: Path, tmp_path: Path):
    src = tmp_path / "in.jsonl"
    rows = [{"text": t} for t in ODD]
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "e.npy"
    assert main(["embed", "-m", str(masked_bundle), "-i", "q", str(src), "-o", str(out), "-q"]) == 0
    assert np.load(out).shape[0] == len(ODD)


# -- item 11: --answers round-trips -------------------------------------------------------------
def test_answers_jsonl_round_trips(masked_bundle: Path, tmp_path: Path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in ODD) + "\n", encoding="utf-8")
    out, ans = tmp_path / "e.npy", tmp_path / "a.jsonl"
    args = ["embed", "-m", str(masked_bundle), "-i", "q", "-q"]
    assert main([*args, str(src), "-o", str(out), "--answers", str(ans)]) == 0
    raw = ans.read_text(encoding="utf-8")
    assert "\u2028" not in raw and "\u2029" not in raw and "\x85" not in raw
    assert [json.loads(x)["text"] for x in raw.split("\n") if x] == ODD
    again = tmp_path / "again.npy"
    assert main([*args, str(ans), "-o", str(again)]) == 0  # the answers file is valid input
    np.testing.assert_array_equal(np.load(again), np.load(out))


# -- item 8: lone surrogates --------------------------------------------------------------------
def test_lone_surrogate_is_rejected_with_its_index(emb: Embedder):
    with pytest.raises(ValueError, match=r"texts\[1\] contains a lone surrogate U\+D800 at character 2"):
        emb.encode(["fine", "ab\ud800c"], "q")
    with pytest.raises(ValueError, match=r"instruction\[0\] contains a lone surrogate U\+DFFF"):
        emb.encode(["fine"], ["\udfff"])
    with pytest.raises(ValueError, match=r"instruction contains a lone surrogate"):
        emb.encode(["fine"], "q\udc80")


def test_lone_surrogate_through_the_cli_names_the_line(masked_bundle: Path, tmp_path: Path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "ok"}\n\n{"text": "bad \\ud800 here"}\n', encoding="utf-8")
    assert main(["embed", "-m", str(masked_bundle), "-i", "q", str(src), "-o", str(tmp_path / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert "in.jsonl:3" in err and "lone surrogate" in err and "rejected" in err
    assert not (tmp_path / "o.npy").exists()


def test_invalid_utf8_names_the_line(masked_bundle: Path, tmp_path: Path, capsys):
    src = tmp_path / "in.txt"
    src.write_bytes(b"ok\nbad \xff byte\n")
    assert main(["embed", "-m", str(masked_bundle), "-i", "q", str(src), "-o", str(tmp_path / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert "in.txt:2" in err and "UTF-8" in err


# -- item 7: outputs are replaced, never damaged -------------------------------------------------
def _embed_args(bundle: Path, src: Path, out: Path, ans: Path) -> list[str]:
    return [
        "embed",
        "-m",
        str(bundle),
        "-i",
        "q",
        str(src),
        "-o",
        str(out),
        "--answers",
        str(ans),
        "-q",
        "--overwrite",
    ]


def test_failed_write_keeps_the_previous_outputs(masked_bundle: Path, tmp_path: Path, monkeypatch, capsys):
    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n", encoding="utf-8")
    out, ans = tmp_path / "e.npy", tmp_path / "a.jsonl"
    assert main(_embed_args(masked_bundle, src, out, ans)) == 0
    before_npy, before_ans = out.read_bytes(), ans.read_bytes()
    src.write_text("three\nfour\nfive\n", encoding="utf-8")

    def full_disk(self, vecs):  # writes half, then the disk is full
        self.f.write(b"\x93NUMPY partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers.NpyWriter, "write", full_disk)
    assert main(_embed_args(masked_bundle, src, out, ans)) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert out.read_bytes() == before_npy and ans.read_bytes() == before_ans
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "e.npy", "in.txt"]  # no temp files


def test_interrupted_write_keeps_the_previous_outputs(masked_bundle: Path, tmp_path: Path, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text("one\n", encoding="utf-8")
    out, ans = tmp_path / "e.npy", tmp_path / "a.jsonl"
    assert main(_embed_args(masked_bundle, src, out, ans)) == 0
    before = out.read_bytes(), ans.read_bytes()

    def interrupted(obj):
        raise KeyboardInterrupt  # Ctrl-C while the first chunk is written: nothing was done

    monkeypatch.setattr(writers, "json_line", interrupted)
    assert main(_embed_args(masked_bundle, src, out, ans)) == 130
    monkeypatch.undo()
    assert (out.read_bytes(), ans.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "e.npy", "in.txt"]


@pytest.mark.parametrize("kind", ["read-only directory", "under a file"])
def test_unwritable_output_fails_before_embedding(
    masked_bundle: Path, tmp_path: Path, monkeypatch, capsys, kind: str
):
    src = tmp_path / "in.txt"
    src.write_text("one\n", encoding="utf-8")
    if kind == "read-only directory":
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        bad = tmp_path / "ro"
        bad.mkdir()
        bad.chmod(0o555)
        cause = "Permission denied"
    else:
        (tmp_path / "file").write_text("x")
        bad = tmp_path / "file" / "sub"
        cause = "Not a directory"
    called = []
    monkeypatch.setattr(Embedder, "encode", lambda *a, **k: called.append(1))
    try:
        rc = main(_embed_args(masked_bundle, src, tmp_path / "e.npy", bad / "a.jsonl"))
    finally:
        if kind == "read-only directory":
            bad.chmod(0o755)
    assert rc == 1 and not called
    err = capsys.readouterr().err
    assert "a.jsonl" in err and cause in err and "Traceback" not in err
    assert not (tmp_path / "e.npy").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# -- item 12: OS errors are one line --------------------------------------------------------------
def test_os_error_is_one_line_exit_1(masked_bundle: Path, tmp_path: Path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("one\n", encoding="utf-8")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(
        ["embed", "-m", str(masked_bundle), "-i", "q", str(src), "-o", str(blocker / "sub" / "e.npy"), "-q"]
    )
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "file" in err and err.startswith("inbedder embed: error:")
