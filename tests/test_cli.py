"""The command line end to end: export, embed (lines, JSONL, stdin), info, errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inbedder import Embedder
from inbedder.cli import main


def test_cli_export_then_embed_lines(tiny_roberta_dir: Path, tmp_path: Path, capsys):
    bundle = tmp_path / "bundle"
    assert main(["export", str(tiny_roberta_dir), str(bundle), "--recipe", "masked-answer-pair"]) == 0
    assert "recipe masked-answer-pair" in capsys.readouterr().out
    src = tmp_path / "in.txt"
    src.write_text("I love cats!\nThe flight was late.\n\n", encoding="utf-8")
    out, ans = tmp_path / "o" / "emb.npy", tmp_path / "answers.jsonl"
    rc = main(
        ["embed", "-m", str(bundle), "-i", "What animal?", str(src), "-o", str(out), "--answers", str(ans)]
    )
    assert rc == 0
    vecs = np.load(out)
    want, answers = Embedder(bundle).encode(
        ["I love cats!", "The flight was late.", ""], "What animal?", return_answers=True
    )
    assert vecs.dtype == np.float32 and vecs.shape == (3, 32)
    np.testing.assert_allclose(vecs, want, atol=1e-6)
    recs = [json.loads(line) for line in ans.read_text(encoding="utf-8").splitlines()]
    assert [r["answer"] for r in recs] == answers and recs[1]["text"] == "The flight was late."


def test_cli_embed_jsonl_with_per_record_instructions(masked_bundle: Path, tmp_path: Path):
    src = tmp_path / "in.jsonl"
    rows = [{"text": "I love cats!", "instruction": "What animal?"}, {"text": "Paris, in May."}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "emb.npy"
    assert main(["embed", "-m", str(masked_bundle), "-i", "Where?", str(src), "-o", str(out), "-q"]) == 0
    emb = Embedder(masked_bundle)
    want = emb.encode(["I love cats!", "Paris, in May."], ["What animal?", "Where?"])
    np.testing.assert_allclose(np.load(out), want, atol=1e-6)


def test_cli_embed_stdin(masked_bundle: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\ntwo\n"))
    out = tmp_path / "emb.npy"
    assert main(["embed", "-m", str(masked_bundle), "-i", "What?", "-", "-o", str(out), "--normalize"]) == 0
    np.testing.assert_allclose(np.linalg.norm(np.load(out), axis=1), 1.0, atol=1e-5)


def test_cli_errors_are_clear(masked_bundle: Path, tmp_path: Path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n', encoding="utf-8")
    with pytest.raises(SystemExit, match=r"bad\.jsonl:2: a JSONL record needs a string field 'text'"):
        main(["embed", "-m", str(masked_bundle), "-i", "q", str(bad), "-o", str(tmp_path / "o.npy")])
    with pytest.raises(SystemExit, match="no such input file"):
        main(["embed", "-m", str(masked_bundle), "-i", "q", str(tmp_path / "none.txt"), "-o", "x.npy"])
    plain = tmp_path / "plain.txt"
    plain.write_text("some text\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="instruction is required"):
        main(["embed", "-m", str(masked_bundle), str(plain), "-o", str(tmp_path / "o.npy")])
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "no such bundle directory" in capsys.readouterr().err


def test_cli_info(masked_bundle: Path, capsys):
    assert main(["info", str(masked_bundle)]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"] == "masked-answer"


def test_console_script_runs_without_torch(masked_bundle: Path, tmp_path: Path):
    """`inbedder embed` in a fresh interpreter must not import torch or transformers."""
    code = (
        "import sys; from inbedder.cli import main; "
        f"rc = main(['embed', '-m', {str(masked_bundle)!r}, '-i', 'q', '-', "
        f"'-o', {str(tmp_path / 'e.npy')!r}, '-q']); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'; "
        "sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code], input="hello\n", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "e.npy").shape == (1, 32)


def test_cli_models(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.startswith("hkunlp/instructor-large") and " 768 " in ln for ln in lines)
    assert any("BrandonZYW/roberta-large-InBedder" in ln and "[unverified]" in ln for ln in lines)
    assert main(["models", "--json"]) == 0
    assert {m["id"] for m in json.loads(capsys.readouterr().out)} >= {"hkunlp/instructor-xl"}
