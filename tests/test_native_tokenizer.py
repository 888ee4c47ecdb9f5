"""Parity of the native tokenizer (native/tokenizers, `inbedder-tokenize`) with `tokenizers`.

For every tokenizer of tests/tokenizer_zoo.py, the seeded corpus of tests/corpus.py (>= 20,000
strings: single texts, pairs, truncation with both strategies and directions) is tokenized by both;
ids, type ids, sequence ids, offsets (native byte offsets mapped to `tokenizers`' char offsets) and
decode strings (with and without skip_special_tokens, and after transformers' clean-up) must be
equal for every record. Also: bad
records and invalid UTF-8 get error lines while the tool goes on, a damaged tokenizer.json fails
cleanly, and one parity run under AddressSanitizer + UndefinedBehaviorSanitizer reports nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import corpus
import pytest
import tokenizer_zoo

from native import build_native

N_STRINGS = 20_000
N_STRINGS_ASAN = 4_000  # the sanitizer build is ~10x slower: a slice of the same corpus


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tokenizer-zoo")


@pytest.fixture(scope="session")
def tool() -> Path:
    return build_native() / "native" / "tokenizers" / "inbedder-tokenize"


def _specials(path: Path) -> list[str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [a["content"] for a in data["added_tokens"]]


def records_for(path: Path, n: int) -> list[dict]:
    return corpus.records(corpus.strings(n, _specials(path)))


def reference(path: Path, recs: list[dict]) -> list[dict]:
    """What `tokenizers` gives for each record (char offsets, None sequence ids as -1)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

    clean_up = PreTrainedTokenizerBase.clean_up_tokenization  # uses no state: called unbound
    tok = Tokenizer.from_file(str(path))
    out = []
    for rec in recs:
        if "max_length" in rec:
            tok.enable_truncation(
                rec["max_length"],
                strategy=rec.get("strategy", "longest_first"),
                direction=rec.get("direction", "right"),
            )
        else:
            tok.no_truncation()
        try:
            enc = tok.encode(rec["text"], rec.get("pair"))
        except Exception as e:
            out.append({"error": str(e)})
            continue
        skip = tok.decode(enc.ids, skip_special_tokens=True)
        out.append(
            {
                "ids": enc.ids,
                "type_ids": enc.type_ids,
                "offsets": [list(o) for o in enc.offsets],
                "sequence_ids": [-1 if s is None else s for s in enc.sequence_ids],
                "decoded": tok.decode(enc.ids, skip_special_tokens=False),
                "decoded_skip": skip,
                "decoded_clean": clean_up(None, skip),
            }
        )
    return out


def run_tool(tool: Path, path: Path, lines: list[bytes], env: dict | None = None):
    done = subprocess.run(
        [str(tool), str(path), "--decode", "--clean-up"],
        input=b"\n".join(lines) + b"\n",
        capture_output=True,
        env=env,
        timeout=1800,
    )
    # split on b"\n" only: decoded strings may hold U+2028 and the like, which splitlines() cuts
    return done, [json.loads(x) for x in done.stdout.split(b"\n") if x]


def _char_offsets(text: str, pair: str | None, got: dict) -> list[list[int]]:
    maps = []
    for s in (text, pair or ""):
        b2c = {}
        pos = 0
        for i, ch in enumerate(s):
            b2c[pos] = i
            pos += len(ch.encode("utf-8"))
        b2c[pos] = len(s)
        maps.append(b2c)
    out = []
    for (a, b), seq in zip(got["offsets"], got["sequence_ids"], strict=True):
        m = maps[seq] if seq >= 0 else {0: 0}
        out.append([m.get(a, -1), m.get(b, -1)])
    return out


def compare(recs: list[dict], want: list[dict], got: list[dict]) -> list[str]:
    """Mismatch descriptions (empty when equal)."""
    assert len(got) == len(want) == len(recs)
    bad = []
    for i, (rec, w, g) in enumerate(zip(recs, want, got, strict=True)):
        if "error" in w or "error" in g:
            if ("error" in w) != ("error" in g):
                bad.append(f"record {i + 1} {rec!r}: error mismatch: want {w} got {g}")
            continue
        g = dict(g, offsets=_char_offsets(rec["text"], rec.get("pair"), g))
        keys = ("ids", "type_ids", "sequence_ids", "offsets", "decoded", "decoded_skip", "decoded_clean")
        for key in keys:
            if w[key] != g[key]:
                bad.append(f"record {i + 1} {rec!r}: {key}: want {w[key]!r} got {g[key]!r}")
                break
    return bad


def parity(tool: Path, name: str, zoo_dir: Path, n: int, env: dict | None = None):
    path = tokenizer_zoo.build(name, zoo_dir)
    recs = records_for(path, n)
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in recs]
    ran: list = []  # the tool runs on the second core while tokenizers computes the reference
    worker = threading.Thread(target=lambda: ran.append(run_tool(tool, path, lines, env)))
    worker.start()
    want = reference(path, recs)
    worker.join()
    done, got = ran[0]
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return recs, compare(recs, want, got), done


@pytest.mark.parametrize("name", sorted(tokenizer_zoo.ZOO))
def test_parity(tool, zoo_dir, name):
    recs, bad, _ = parity(tool, name, zoo_dir, N_STRINGS)
    assert len(recs) >= 20_000
    assert not bad, f"{len(bad)} mismatches of {len(recs)}:\n" + "\n".join(bad[:10])


def test_bad_records_get_error_lines(tool, zoo_dir):
    path = tokenizer_zoo.build("gpt2-roberta", zoo_dir)
    lines = [
        b'{"text": "fine"}',
        b"not json",
        b'{"text": 3}',
        b'{"text": "caf\xc3"}',  # invalid UTF-8 inside the JSON string
        b'{"text": "x", "max_length": -1}',
        b'{"text": "x", "pair": "y", "max_length": 5, "strategy": "sideways"}',
        b"[1, 2]",
        b'{"text": "also fine", "pair": "yes"}',
    ]
    done, got = run_tool(tool, path, lines)
    assert done.returncode == 0
    assert len(got) == len(lines)
    assert "ids" in got[0] and "ids" in got[-1]
    for i, g in enumerate(got[1:-1], start=2):
        assert g["error"].startswith(f"record {i}:"), g


def _damaged_cases(good: str) -> dict[str, str]:
    data = json.loads(good)
    model = data["model"]
    return {
        "truncated": good[: len(good) // 2],
        "truncated-early": good[:300],
        "empty": "",
        "not-an-object": "[1, 2, 3]",
        "wrong-type": json.dumps({**data, "model": {**model, "vocab": [1, 2]}}),
        "wrong-type-id": json.dumps({**data, "model": {**model, "vocab": {"a": "zero"}}}),
        "missing-merges": json.dumps({**data, "model": {k: v for k, v in model.items() if k != "merges"}}),
        "bad-merge": json.dumps({**data, "model": {**model, "merges": ["zzq qqz"]}}),
        "id-out-of-range": json.dumps({**data, "model": {**model, "vocab": {"a": -3}}}),
        "added-id-out-of-range": json.dumps({**data, "added_tokens": [{"id": 1 << 40, "content": "x"}]}),
        "unsupported": json.dumps({**data, "normalizer": {"type": "ByteLevel"}}),
    }


def test_damaged_tokenizer_json(tool, zoo_dir, tmp_path):
    good = tokenizer_zoo.build("gpt2-roberta", zoo_dir).read_text(encoding="utf-8")
    cases = _damaged_cases(good)
    for name, text in cases.items():
        p = tmp_path / f"{name}.json"
        p.write_text(text, encoding="utf-8")
        done = subprocess.run([str(tool), str(p)], input=b'{"text": "a"}\n', capture_output=True)
        err = done.stderr.decode()
        assert done.returncode == 1, (name, done.returncode, err)
        assert "inbedder-tokenize:" in err and "Sanitizer" not in err, (name, err)
    assert (
        "ByteLevel"
        in subprocess.run(
            [str(tool), str(tmp_path / "unsupported.json")], capture_output=True, text=True
        ).stderr
    )


def test_parity_under_sanitizers(zoo_dir):
    tool = build_native(sanitize=True) / "native" / "tokenizers" / "inbedder-tokenize"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    for name in ("gpt2-roberta", "minilm", "t5-unigram", "llama-bpe"):
        _, bad, done = parity(tool, name, zoo_dir, N_STRINGS_ASAN, env)
        err = done.stderr.decode()
        assert "Sanitizer" not in err and "runtime error" not in err, err[-3000:]
        assert not bad, f"{name}: " + "\n".join(bad[:5])
    # damaged files under the sanitizers too: a clear error, no report
    for case, text in _damaged_cases(tokenizer_zoo.build("gpt2-roberta", zoo_dir).read_text("utf-8")).items():
        p = zoo_dir / f"damaged-{case}.json"
        p.write_text(text, encoding="utf-8")
        done = subprocess.run([str(tool), str(p)], input=b"{}", capture_output=True, env=env)
        err = done.stderr.decode()
        assert done.returncode == 1 and "Sanitizer" not in err and "runtime error" not in err, (case, err)
