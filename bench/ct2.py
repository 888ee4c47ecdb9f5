"""inbedder against CTranslate2 on the roberta-large-shaped model, on a quiet CPU and a busy one.

Scope: one run that times every system on the same prompts of exactly T tokens (the same token
ids: the prompts are tokenized by the bundle's tokenizer in both), each (system, point, load,
repeat) in a fresh process, systems alternating within each repeat, best of `--repeats`:

  inbedder-int8   the int8 bundle through `Embedder` (tokenize, graph, pooling, answers)
  inbedder-fp32   the fp32 bundle
  ct2-int8        CTranslate2 `Encoder.forward_batch` on the checkpoint converted with
                  `ct2-transformers-converter --quantization int8`, tokenization by `tokenizers`
                  and the mean over the answer slots in numpy (no LM head: less work than ours)
  ct2-fp32        the same converted without quantization
  inbedder-int8-spin   inbedder-int8 with `spinning=True` (the thread-pool option, item 2)
  inbedder-int8-rowops inbedder-int8 running the bundle's row-ops graph (`row_ops=LIB`: the
                  per-token passes fused, bit-identical; `--row-ops LIB`, default the native
                  build's build/pytest/native/runtime/libinbedder_row_ops.so; `--setup` writes
                  that graph when the library is there)
  inbedder-native-int8 the native runtime (libinbedder's C API through ctypes, the build beside
                  that library) on the int8 bundle: its row-ops graph when the bundle has one

Points: batch 1 latency (p50 and p95 ms per text over `--calls` single-text calls) at T = 32,
64, 128, 512 (not 16: the prompt around an empty text is already 25 tokens; 64, 128 and 512 are
issue 17's target points at batch 1 and 8), and throughput (texts/s =
batch / median of `--runs` timed calls after a warm-up) at batch 8 and 32, T = 64, 128, 512.
Load "busy": a one-core busy loop (a Python `while True` process) started before the worker and
stopped after it, so the condition is the same for every system. The model: random weights with
roberta-large's shapes and GPT-2's real byte-level BPE vocabulary (bench/models.py; speed does not
depend on weight values).

CTranslate2 is not a dependency of inbedder: `--setup` makes its own venv in the work directory
(`python -m venv WORK/ct2-venv && WORK/ct2-venv/bin/pip install ctranslate2 torch==2.13.0
transformers`) and converts the checkpoint (transformers 5 dropped RobertaConfig's
`position_embedding_type`, which the converter reads: the converter's copy of config.json gets
"absolute", the value it had). Or pass `--ct2-python` for a Python that has `ctranslate2`.

    .venv/bin/python bench/ct2.py --work /tmp/inbedder-ct2 --setup
    .venv/bin/python bench/ct2.py --work /tmp/inbedder-ct2 [--systems ...] [--loads quiet,busy]
        [--latency 32,128,512] [--throughput 8x64,8x128,8x512,32x64,32x128,32x512]

Prints one line per point and writes ct2-results.json in the work directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import INSTRUCTION, _cpu, peak_rss_mb, texts_of  # noqa: E402  (after the path insert)

SYSTEMS = (
    "inbedder-int8",
    "ct2-int8",
    "inbedder-fp32",
    "ct2-fp32",
    "inbedder-int8-spin",
    "inbedder-int8-rowops",
    "inbedder-native-int8",
)
ROW_OPS = HERE.parent / "build" / "pytest" / "native" / "runtime" / "libinbedder_row_ops.so"
ROW_OPS_ENV = "INBEDDER_BENCH_ROW_OPS"  # how main tells its workers the library
THREADS = 2
SLOTS = 3  # the masked-answer prompt's answer slots (the pooled positions)


# -- setup ---------------------------------------------------------------------------------------
def setup(work: Path, ct2_python: str | None, row_ops: Path | None = None, on_request: bool = False) -> None:
    """Build the model and bundles, the CTranslate2 venv (unless given) and its conversions;
    `on_request`: the int8 bundle quantized with `answers_on_request=True`."""
    from models import roberta_large_shaped

    from inbedder.export import export_bundle
    from inbedder.quantize import quantize_bundle

    work.mkdir(parents=True, exist_ok=True)
    ckpt = roberta_large_shaped(work / "ckpt", vocab="gpt2")
    if not (work / "fp32" / "inbedder.json").exists():
        export_bundle(str(ckpt), work / "fp32", overwrite=True)
    if not (work / "int8" / "inbedder.json").exists():
        lib = row_ops if row_ops is not None and row_ops.is_file() else None
        quantize_bundle(
            work / "fp32", work / "int8", overwrite=True, row_ops=lib, answers_on_request=on_request
        )
    if ct2_python is None:
        venv = work / "ct2-venv"
        if not (venv / "bin" / "ct2-transformers-converter").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = [str(venv / "bin" / "pip"), "install", "ctranslate2", "torch==2.13.0", "transformers"]
            subprocess.run(pip, check=True)
        ct2_python = str(venv / "bin" / "python")
    conv_ckpt = work / "ckpt-ct2"
    conv_ckpt.mkdir(exist_ok=True)
    for p in ckpt.iterdir():
        if p.is_file() and p.name != "config.json" and not (conv_ckpt / p.name).exists():
            os.link(p, conv_ckpt / p.name)
    config = json.loads((ckpt / "config.json").read_text())
    config.setdefault("position_embedding_type", "absolute")
    (conv_ckpt / "config.json").write_text(json.dumps(config, indent=1))
    converter = str(Path(ct2_python).with_name("ct2-transformers-converter"))
    for precision, extra in (("int8", ["--quantization", "int8"]), ("fp32", [])):
        out = work / f"ct2-{precision}"
        if not (out / "model.bin").exists():
            cmd = [converter, "--model", str(conv_ckpt), "--output_dir", str(out), "--force", *extra]
            subprocess.run(cmd, check=True)


# -- workers (one configuration per process) -----------------------------------------------------
def _prompts(work: Path, tokens: int, n: int) -> tuple[list[str], list[list[int]]]:
    """n texts whose prompt is exactly `tokens` long, and those prompts' token ids (cached)."""
    path = work / f"ct2-texts-{tokens}-{n}.json"
    if not path.exists():
        from inbedder.runtime import Embedder

        pipe = Embedder(work / "fp32", verify="none").pipeline
        shortest = len(pipe.tokenize([""], [INSTRUCTION], "input")[0].ids)
        if tokens < shortest:  # texts_of would never get there
            raise SystemExit(f"T={tokens}: the prompt with an empty text is already {shortest} tokens")
        texts = texts_of(work / "fp32", tokens, n)
        ids = [list(map(int, e.ids)) for e in pipe.tokenize(texts, [INSTRUCTION] * n, "input")]
        assert all(len(i) == tokens for i in ids), "prompt lengths"
        path.write_text(json.dumps({"texts": texts, "ids": ids}))
    d = json.loads(path.read_text())
    return d["texts"], d["ids"]


def precision_of(system: str) -> str:
    """inbedder-native-int8 -> int8, ct2-fp32 -> fp32: the bundle (or converted model) it runs."""
    return next(part for part in system.split("-") if part in ("int8", "fp32"))


def worker(system: str, work: Path, batch: int, tokens: int, runs: int, calls: int) -> dict:
    import numpy as np

    texts, ids = _prompts(work, tokens, max(batch, calls if batch == 1 else batch))
    t0 = time.perf_counter()
    if system.startswith("inbedder-native"):
        sys.path.insert(0, str(HERE.parent / "tests"))
        from native import CApi  # tests/native.py: libinbedder's C API through ctypes

        api = CApi(Path(os.environ[ROW_OPS_ENV]).parents[2])  # BUILD/native/runtime/lib...so
        model = api.open(work / precision_of(system), threads=THREADS)
        load = time.perf_counter() - t0

        def step(chunk: list[int]) -> None:
            status, msg, result = api.encode(
                model, [texts[i] for i in chunk], [INSTRUCTION], batch_size=batch
            )
            if status != "INBEDDER_OK":
                raise RuntimeError(f"{status}: {msg}")
            api.free(result)
    elif system.startswith("inbedder"):
        from inbedder import Embedder

        bundle = work / precision_of(system)
        lib = os.environ[ROW_OPS_ENV] if system.endswith("-rowops") else None
        emb = Embedder(bundle, threads=THREADS, spinning=system.endswith("-spin"), row_ops=lib)
        load = time.perf_counter() - t0

        def step(chunk: list[int]) -> None:
            emb.encode([texts[i] for i in chunk], INSTRUCTION, batch_size=batch)
    else:
        import ctranslate2
        from tokenizers import Tokenizer

        precision = precision_of(system)
        compute = {"int8": "int8", "fp32": "float32"}[precision]
        enc = ctranslate2.Encoder(
            str(work / f"ct2-{precision}"), device="cpu", compute_type=compute, intra_threads=THREADS
        )
        load = time.perf_counter() - t0
        from inbedder_prompts import prompt_strings  # written beside the texts by the parent

        tok = Tokenizer.from_file(str(work / "ct2-tokenizer.json"))
        prompts = prompt_strings(texts, INSTRUCTION)
        mask_id = tok.token_to_id("<mask>")

        def step(chunk: list[int]) -> None:
            encs = tok.encode_batch([prompts[i] for i in chunk])
            batch_ids = [e.ids for e in encs]
            out = enc.forward_batch(batch_ids)
            hidden = np.asarray(out.last_hidden_state)  # (B, T, H)
            slots = np.asarray(batch_ids) == mask_id  # (B, T)
            (hidden * slots[..., None]).sum(1) / SLOTS  # (B, H): the answer slots' mean

        # Same ids as ours: the run would compare different work otherwise.
        got = [e.ids for e in tok.encode_batch(prompts[:4])]
        assert got == ids[:4], "CTranslate2's prompts tokenize differently from the bundle's"
    res: dict = {"load_s": load}
    if batch == 1:
        step([0])
        step([1 % len(texts)])  # warm-up
        lat = []
        for i in range(calls):
            t = time.perf_counter()
            step([i % len(texts)])
            lat.append(time.perf_counter() - t)
        lat.sort()
        res.update(
            p50_ms=1000 * lat[len(lat) // 2], p95_ms=1000 * lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        )
    else:
        chunk = list(range(batch))
        step(chunk)  # warm-up
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            step(chunk)
            times.append(time.perf_counter() - t)
        res["texts_per_s"] = batch / sorted(times)[len(times) // 2]
    res["peak_rss_mb"] = peak_rss_mb()
    return res


# -- the run -------------------------------------------------------------------------------------
@contextlib.contextmanager
def background(load: str) -> Iterator[None]:
    """ "busy": one single-threaded busy loop beside the worker for its whole life."""
    if load == "quiet":
        yield
        return
    # The loop ends by itself when this process dies (it polls its parent): a benchmark killed
    # mid-run must not leave a core busy for the next one (seen: it spoilt a whole "quiet" run).
    loop = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass\n"
    proc = subprocess.Popen([sys.executable, "-c", loop])
    try:
        time.sleep(0.2)  # running before the worker starts
        yield
    finally:
        proc.kill()
        proc.wait()


def write_prompt_helper(work: Path) -> None:
    """The CTranslate2 worker runs in another Python without inbedder: it gets the bundle's
    tokenizer and the prompt template as plain files."""
    from inbedder.runtime.bundle import bundle_root, load_manifest

    m = load_manifest(work / "fp32", verify="none")
    (work / "ct2-tokenizer.json").write_bytes((bundle_root(work / "fp32") / m.tokenizer_file).read_bytes())
    assert len(m.prompt.segments) == 1 and not m.prompt.strip
    code = (
        f"TEMPLATE = {m.prompt.segments[0]!r}\nSLOT = {m.prompt.slot_token!r}\n"
        f"N = {m.prompt.answer_slots}\n\n\n"
        "def prompt_strings(texts, instruction):\n"
        "    return [TEMPLATE.replace('{input}', t).replace('{instruction}', instruction) + SLOT * N"
        " for t in texts]\n"
    )
    (work / "inbedder_prompts.py").write_text(code)


def run_point(args, python: str, system: str, batch: int, tokens: int, load: str) -> dict | str:
    cmd = [python, __file__, "--work", str(args.work), "--worker", system, "--batch", str(batch),
           "--tokens", str(tokens), "--runs", str(args.runs), "--calls", str(args.calls)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(args.work) if system.startswith("ct2") else ""}
    with background(load):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return f"{system} b{batch} t{tokens} {load} failed: {r.stderr[-800:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/inbedder-ct2"))
    ap.add_argument("--setup", action="store_true", help="build the bundles, the CTranslate2 venv and models")
    ap.add_argument("--ct2-python", default=None, help="a Python with ctranslate2 (default: WORK/ct2-venv)")
    ap.add_argument("--systems", default="inbedder-int8,ct2-int8")
    ap.add_argument("--loads", default="quiet,busy")
    ap.add_argument("--latency", default="32,64,128,512", help="token counts timed at batch 1")
    ap.add_argument("--throughput", default="8x64,8x128,8x512,32x64,32x128,32x512", help="BATCHxTOKENS")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per point (best is kept)")
    ap.add_argument("--runs", type=int, default=3, help="timed calls per throughput process")
    ap.add_argument("--calls", type=int, default=20, help="timed single-text calls per latency process")
    ap.add_argument(
        "--row-ops", type=Path, default=ROW_OPS, help="libinbedder_row_ops.so (inbedder-int8-rowops)"
    )
    ap.add_argument(
        "--answers-on-request",
        action="store_true",
        help="--setup: quantize the int8 bundle with answers_on_request (no LM head without answers)",
    )
    ap.add_argument("--out", default="ct2-results.json")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = worker(args.worker, args.work, args.batch, args.tokens, args.runs, args.calls)
        print(json.dumps(res))
        return
    ct2_python = args.ct2_python or str(args.work / "ct2-venv" / "bin" / "python")
    if args.setup:  # set-up only, as the module docstring runs it: timing is the next command
        setup(args.work, args.ct2_python, args.row_ops, args.answers_on_request)
        print(f"set up in {args.work}; now run without --setup")
        return
    os.environ[ROW_OPS_ENV] = str(args.row_ops)
    write_prompt_helper(args.work)
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")
    points = [(1, int(t)) for t in args.latency.split(",") if t]
    points += [tuple(map(int, p.split("x"))) for p in args.throughput.split(",") if p]
    for batch, tokens in points:  # texts (and their ids) made once, before any timing
        _prompts(args.work, tokens, max(batch, args.calls if batch == 1 else batch))
    best: dict[tuple, dict] = {}
    notes = []
    for rep in range(args.repeats):
        for batch, tokens in points:
            for load in args.loads.split(","):
                for system in systems:  # alternating: every system in each repeat, same condition
                    python = ct2_python if system.startswith("ct2") else sys.executable
                    res = run_point(args, python, system, batch, tokens, load)
                    if isinstance(res, str):
                        notes.append(res)
                        print("note:", res[:300], flush=True)
                        continue
                    key = (system, batch, tokens, load)
                    old = best.get(key)
                    better = old is None or (
                        res["p50_ms"] < old["p50_ms"]
                        if batch == 1
                        else res["texts_per_s"] > old["texts_per_s"]
                    )
                    if better:
                        best[key] = {**res, "repeat": rep}
                    fig = (
                        f"p50 {res['p50_ms']:7.1f} ms  p95 {res['p95_ms']:7.1f} ms"
                        if batch == 1
                        else f"{res['texts_per_s']:7.2f} texts/s"
                    )
                    print(
                        f"rep {rep} {system:19s} B={batch:2d} T={tokens:3d} {load:5s} {fig}  "
                        f"load {res['load_s']:.2f} s  RSS {res['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
    results = [dict(zip(("system", "batch", "tokens", "load"), k, strict=True), **v) for k, v in best.items()]
    report = {
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "flags": cpu_flags(), "threads": THREADS},
        "results": results,
        "notes": notes,
    }
    (args.work / args.out).write_text(json.dumps(report, indent=2))
    print_table(results, systems)
    print(f"results: {args.work / args.out}")


def print_table(results: list[dict], systems: list[str]) -> None:
    """Best of the repeats per point, and ours / CTranslate2 (same precision) as a ratio."""
    by = {(r["system"], r["batch"], r["tokens"], r["load"]): r for r in results}
    for (system, batch, tokens, load), r in sorted(by.items(), key=lambda kv: kv[0][1:] + kv[0][:1]):
        fig = (
            f"p50 {r['p50_ms']:.1f} p95 {r['p95_ms']:.1f} ms"
            if batch == 1
            else f"{r['texts_per_s']:.2f} texts/s"
        )
        ratio = ""
        if system.startswith("inbedder"):
            peer = by.get(("ct2-" + precision_of(system), batch, tokens, load))
            if peer:
                x = peer["p50_ms"] / r["p50_ms"] if batch == 1 else r["texts_per_s"] / peer["texts_per_s"]
                ratio = f"  ours/ct2 {x:.2f}x"
        print(f"{system:19s} B={batch:2d} T={tokens:3d} {load:5s} {fig}{ratio}")


def cpu_flags() -> list[str]:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")})


if __name__ == "__main__":
    main()
