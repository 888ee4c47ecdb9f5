"""Regression fuzz kept from the hostile review (issue 11): corrupted bundles, fuzzed texts,
threads sharing one Embedder, processes loading one bundle. Sized to run in seconds; README
("Hardening") records the counts and a larger run by hand."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from inbedder import Embedder

HERE = Path(__file__).parent
CASES_PER_FILE = 75  # x 4 files = 300 corrupted loads


def test_corrupted_bundles_give_a_clear_error_never_a_crash(masked_bundle: Path):
    """Random byte flips in each file (checksums updated, so the damage reaches the parsers), in a
    child process so that a crash would be seen as one."""
    code = (
        f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import fuzz_bundle; "
        f"print(json.dumps(fuzz_bundle.run(__import__('pathlib').Path({str(masked_bundle)!r}), "
        f"{CASES_PER_FILE}, seed=0)))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    outcomes = json.loads(r.stdout.strip().splitlines()[-1])
    print("corrupted-bundle fuzz:", outcomes)
    assert set(outcomes) == {"inbedder.json", "model.onnx", "model.onnx.data", "tokenizer.json"}
    for name, counts in outcomes.items():
        assert sum(counts.values()) == CASES_PER_FILE, (name, counts)


def test_corrupted_bundles_fail_their_checksum(masked_bundle: Path):
    sys.path.insert(0, str(HERE))
    import fuzz_bundle

    outcomes = fuzz_bundle.run(masked_bundle, 10, seed=1, rehash=False)
    outcomes.pop("inbedder.json")  # the manifest holds the checksums: its flips are the case above
    assert all(c == {"refused at load": 10} for c in outcomes.values()), outcomes


def _fuzzed_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pools = [(0x20, 0x7E), (0xA0, 0x2FF), (0x300, 0x36F), (0x590, 0x6FF), (0x900, 0x97F)]
    pools += [(0x3040, 0x30FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0x2000, 0x206F), (0, 0x1F)]
    texts = ["", " ", "\n", "<mask>", "{instruction}", "{input}", "<s></s>", "\u2028", "\ufeff"]
    while len(texts) < n:
        parts = []
        for _ in range(rng.choice([1, 2, 5, 20, 80, 400])):
            lo, hi = rng.choice(pools)
            parts.append(chr(rng.randint(lo, hi)))
            if rng.random() < 0.2:
                parts.append(rng.choice([" ", "  ", "\n", "\t", "<mask>", " the", "."]))
        texts.append("".join(parts))
    return texts


@pytest.mark.parametrize("fixture", ["masked_bundle", "pair_bundle"])
def test_fuzzed_texts_alone_equal_batch_deterministic_finite(fixture: str, request):
    emb = Embedder(request.getfixturevalue(fixture))
    texts = _fuzzed_texts(120, seed=11)
    instructions = [
        random.Random(i).choice(["What?", "", "Where did it happen?", "<mask>"]) for i in range(120)
    ]
    batch, answers = emb.encode(texts, instructions, batch_size=16, return_answers=True)
    again, answers2 = emb.encode(texts, instructions, batch_size=7, return_answers=True)
    assert np.isfinite(batch).all()
    np.testing.assert_allclose(again, batch, atol=1e-5, rtol=0)
    assert answers2 == answers
    repeat = emb.encode(texts, instructions, batch_size=16)
    assert np.array_equal(repeat, batch)  # deterministic: bit for bit
    for i, (t, q) in enumerate(zip(texts, instructions, strict=True)):
        alone, a = emb.encode([t], q, return_answers=True)
        np.testing.assert_allclose(alone[0], batch[i], atol=1e-5, rtol=0, err_msg=repr(t))
        assert a[0] == answers[i]


def test_eight_threads_on_one_embedder_equal_sequential(masked_bundle: Path):
    emb = Embedder(masked_bundle)
    texts = _fuzzed_texts(64, seed=5)
    chunks = [texts[i::8] for i in range(8)]
    want = [emb.encode(c, "What?", batch_size=4) for c in chunks]
    got: list[list[np.ndarray]] = [[] for _ in range(8)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(5):
                got[k].append(emb.encode(chunks[k], "What?", batch_size=4))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in range(8):
        for v in got[k]:
            np.testing.assert_allclose(v, want[k], atol=1e-6, rtol=0)


def test_several_processes_load_one_bundle(masked_bundle: Path, tmp_path: Path):
    code = (
        "import sys, numpy as np; from inbedder import Embedder; "
        f"e = Embedder({str(masked_bundle)!r}); "
        "np.save(sys.argv[1], e.encode(['I love cats!', 'Paris in May'], 'What?'))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"{k}.npy")], stderr=subprocess.PIPE)
        for k in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    want = Embedder(masked_bundle).encode(["I love cats!", "Paris in May"], "What?")
    for k in range(4):
        np.testing.assert_allclose(np.load(tmp_path / f"{k}.npy"), want, atol=1e-6, rtol=0)
