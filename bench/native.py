"""Native runtime (libinbedder) against the Python runtime on the same int8 bundle, in one run.

Scope: a RoBERTa masked-LM with random weights (speed does not depend on weight values), shape
"large" (roberta-large: 24 x 1024, FFN 4096, vocab 50265; bench/models.py), "base" (12 x 768, FFN
3072) or "small" (MiniLM-L6's 6 x 384, FFN 1536), the last two with the same vocabulary, exported by
inbedder and quantized to int8. Each (runtime, batch) runs in its own process so that its peak RSS
(VmHWM) is its own: texts/s at batch 1 and 8 on 32 prompts of exactly T tokens (median of RUNS), CPU
seconds per text (all threads: the work done, steadier than wall time on a shared machine), time
from open to the first vector, peak RSS against the bundle's weight size. The two runtimes
alternate, PAIRS times per batch size (A B, then B A, ...), and the ratios native/Python are taken
pair by pair, so a machine whose speed drifts (other jobs) does not favour one side. The native side
is `inbedder-bench` (C API, no Python). Also prints the shared library's size, the libraries it
links (ldd) and the CPU flags.

Throughput is also measured interleaved in one process (`--rounds`, 0 to skip): the Python
runtime and libinbedder (through its C API, ctypes) open the same bundle side by side, and each
round both encode all texts, the order alternating; the ratio is taken round by round. On a
machine whose speed drifts by 10-20% between and within processes (as here), per-process pairs
need many pairs to resolve a few percent; the interleaved rounds compare the two runtimes seconds
apart in the same process (same allocator state and page cache), so their ratio is the steadier
figure. Each call's CPU seconds are the process's (calls are sequential and neither pool spins).

    python bench/native.py --work /tmp/inbedder-native-bench [--shape large|base|small] [--runs 3] [--pairs 3]
        [--rounds 10]

Prints a table and writes native-results.json in the work directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# `python bench/native.py` puts bench/ first on sys.path, where bench/tokenize.py would shadow
# the standard library's tokenize (torch imports it).
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path.pop(0)
ROOT = HERE.parent
INSTRUCTION = "What is the main topic?"
SHAPES = {
    "large": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
    },
    "base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    # MiniLM-L6's sizes: a pass short enough that the work around it shows
    "small": {
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
    },
}


def _sibling(name: str):
    """bench/NAME.py as a module (bench/ is not put on sys.path: its tokenize.py would shadow
    the standard library's)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def build(work: Path, shape: str) -> Path:
    models = _sibling("models")
    byte_level_bpe, roberta_large_shaped = models.byte_level_bpe, models.roberta_large_shaped

    from inbedder.export import export_bundle
    from inbedder.quantize import quantize_bundle

    ckpt = work / f"ckpt-{shape}"
    if shape == "large":
        roberta_large_shaped(ckpt)
    elif not (ckpt / "config.json").exists():
        import torch
        from transformers import RobertaConfig, RobertaForMaskedLM

        cfg = RobertaConfig(
            vocab_size=50265, max_position_embeddings=514, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            **SHAPES[shape],
        )  # fmt: skip
        torch.manual_seed(0)
        RobertaForMaskedLM(cfg).eval().save_pretrained(ckpt)
        byte_level_bpe().save_pretrained(ckpt)
    fp32, int8 = work / f"fp32-{shape}", work / f"int8-{shape}"
    if not (fp32 / "inbedder.json").exists():
        export_bundle(str(ckpt), fp32, overwrite=True)
    if not (int8 / "inbedder.json").exists():
        quantize_bundle(fp32, int8, overwrite=True)
    return int8


def texts_of(bundle: Path, tokens: int, n: int) -> list[str]:
    return _sibling("bench").texts_of(bundle, tokens, n)


def python_worker(bundle: Path, texts_file: Path, batch: int, runs: int, threads: int) -> dict:
    """Runs in its own process (--worker)."""
    t0 = time.perf_counter()
    from inbedder import Embedder

    texts = texts_file.read_text(encoding="utf-8").splitlines()
    emb = Embedder(bundle, threads=threads)
    emb.encode(texts[:1], INSTRUCTION)
    first = time.perf_counter() - t0
    emb.encode(texts, INSTRUCTION, batch_size=batch)  # warm-up
    times, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        emb.encode(texts, INSTRUCTION, batch_size=batch)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    med = sorted(times)[len(times) // 2]
    peak_rss_mb = _sibling("bench").peak_rss_mb
    cpu_per_text = sorted(cpu)[len(cpu) // 2] / len(texts)
    return {"open_to_first_vector_s": first, "median_s": med, "texts_per_s": len(texts) / med,
            "cpu_s_per_text": cpu_per_text, "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def interleaved_worker(bundle: Path, texts_file: Path, build_dir: Path, rounds: int, threads: int) -> dict:
    """Runs in its own process (--interleaved): both runtimes in this process, alternating."""
    import statistics

    sys.path.insert(0, str(ROOT / "tests"))
    from inbedder import Embedder
    from native import CApi  # tests/native.py: libinbedder's C API through ctypes

    texts = texts_file.read_text(encoding="utf-8").splitlines()
    api = CApi(build_dir)
    model = api.open(bundle, threads=threads)
    emb = Embedder(bundle, threads=threads)

    def native(batch: int) -> None:
        status, msg, result = api.encode(model, texts, [INSTRUCTION], batch_size=batch)
        if status != "INBEDDER_OK":
            raise RuntimeError(f"{status}: {msg}")
        api.free(result)

    def python(batch: int) -> None:
        emb.encode(texts, INSTRUCTION, batch_size=batch)

    out = {}
    for batch in (1, 8):
        native(batch)  # warm-up
        python(batch)
        speed, work, per_text = [], [], {"native": [], "python": []}
        for k in range(rounds):
            took = {}
            order = (("native", native), ("python", python))
            for name, call in order if k % 2 == 0 else order[::-1]:
                t, c = time.perf_counter(), time.process_time()
                call(batch)
                took[name] = (time.perf_counter() - t, time.process_time() - c)
                per_text[name].append(took[name][0] / len(texts))
            speed.append(took["python"][0] / took["native"][0])  # native texts/s over Python's
            work.append(took["python"][1] / took["native"][1])
        out[str(batch)] = {
            "rounds": rounds, "speed_ratio_median": statistics.median(speed),
            "speed_ratio_min": min(speed), "speed_ratio_max": max(speed),
            "cpu_ratio_median": statistics.median(work),
            "native_texts_per_s": 1 / statistics.median(per_text["native"]),
            "python_texts_per_s": 1 / statistics.median(per_text["python"]),
        }  # fmt: skip
    api.close(model)
    return out


def native_build() -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from native import build_native

    return build_native()


def run_one(
    runtime: str, batch: int, args: argparse.Namespace, bundle: Path, texts_file: Path, tool: Path
) -> dict:
    """One process of one runtime at one batch size; its JSON line."""
    if runtime == "native":
        cmd = [str(tool), str(bundle), str(texts_file), INSTRUCTION, str(batch), str(args.runs),
               str(args.threads)]  # fmt: skip
    else:
        cmd = [sys.executable, __file__, "--work", str(args.work), "--shape", args.shape,
               "--worker", str(texts_file), "--batch", str(batch), "--runs", str(args.runs),
               "--threads", str(args.threads)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return (xs[(len(xs) - 1) // 2] + xs[len(xs) // 2]) / 2


def summary(rows: list[dict], weights_mb: float) -> list[dict]:
    """Per batch size: each runtime's medians, and the pair-by-pair ratios native/Python."""
    out = []
    for batch in sorted({r["batch"] for r in rows}):
        by = {rt: {r["pair"]: r for r in rows if r["batch"] == batch and r["runtime"] == rt}
              for rt in ("native", "python")}  # fmt: skip
        pairs = sorted(set(by["native"]) & set(by["python"]))
        speed = [by["native"][p]["texts_per_s"] / by["python"][p]["texts_per_s"] for p in pairs]
        work = [by["python"][p]["cpu_s_per_text"] / by["native"][p]["cpu_s_per_text"] for p in pairs]
        row = {"batch": batch, "pairs": len(pairs), "speed_ratio_median": _median(speed),
               "speed_ratio_min": min(speed), "speed_ratio_max": max(speed),
               "cpu_ratio_median": _median(work)}  # fmt: skip
        for rt in ("native", "python"):
            rs = list(by[rt].values())
            row[rt] = {k: _median([r[k] for r in rs]) for k in
                       ("texts_per_s", "cpu_s_per_text", "open_to_first_vector_s")}  # fmt: skip
            row[rt]["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
            row[rt]["rss_over_weights"] = row[rt]["peak_rss_mb"] / weights_mb
        out.append(row)
    return out


def cpu_flags() -> dict:
    info = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?"
    )
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    keep = [f for f in flags if f.startswith(("avx", "sse4", "fma", "amx", "vnni")) or f == "f16c"]
    return {"model": model, "cores": info.count("processor\t:"), "flags": keep}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/inbedder-native-bench"))
    ap.add_argument("--shape", choices=tuple(SHAPES), default="large")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--texts", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=3, help="alternating native/Python pairs per batch size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10, help="interleaved in-process rounds (0: skip)")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--interleaved", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--build-dir", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        bundle = args.work / f"int8-{args.shape}"
        print(json.dumps(python_worker(bundle, args.worker, args.batch, args.runs, args.threads)))
        return
    if args.interleaved is not None:
        bundle = args.work / f"int8-{args.shape}"
        result = interleaved_worker(bundle, args.interleaved, args.build_dir, args.rounds, args.threads)
        print(json.dumps(result))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    bundle = build(args.work, args.shape)
    build_dir = native_build()
    texts_file = args.work / f"texts-{args.tokens}.txt"
    texts_file.write_text("\n".join(texts_of(bundle, args.tokens, args.texts)) + "\n", encoding="utf-8")
    from inbedder.runtime.bundle import load_manifest

    m = load_manifest(bundle, verify=False)
    weights_mb = sum(int(r["bytes"]) for n, r in m.files.items() if n != m.tokenizer_file) / 2**20
    tool = build_dir / "native" / "runtime" / "inbedder-bench"
    rows = []
    for batch in (1, 8):
        for pair in range(args.pairs):
            for runtime in ("python", "native") if pair % 2 == 0 else ("native", "python"):
                rows.append({"runtime": runtime, "batch": batch, "pair": pair,
                             **run_one(runtime, batch, args, bundle, texts_file, tool)})  # fmt: skip
    interleaved = {}
    if args.rounds > 0:
        cmd = [sys.executable, __file__, "--work", str(args.work), "--shape", args.shape,
               "--interleaved", str(texts_file), "--build-dir", str(build_dir), "--rounds", str(args.rounds),
               "--threads", str(args.threads)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        interleaved = json.loads(done.stdout.strip().splitlines()[-1])
    lib = (build_dir / "native" / "runtime" / "libinbedder.so").resolve()
    ldd = subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    result = {
        "shape": args.shape, "tokens": args.tokens, "texts": args.texts, "threads": args.threads,
        "runs": args.runs, "weights_mb": weights_mb, "rows": rows, "summary": summary(rows, weights_mb),
        "interleaved": interleaved,
        "cpu": cpu_flags(), "load_average": os.getloadavg(), "libinbedder_bytes": lib.stat().st_size,
        "ldd": [ln.split()[0] for ln in ldd.splitlines() if ln.strip()],
    }  # fmt: skip
    (args.work / "native-results.json").write_text(json.dumps(result, indent=2))
    print(f"int8 roberta-{args.shape}-shaped bundle, weights {weights_mb:.0f} MB; {args.texts} prompts of "
          f"{args.tokens} tokens; {args.threads} threads; {result['cpu']['model']}")  # fmt: skip
    head = f"{'runtime':8} {'batch':>5} {'texts/s':>9} {'CPU ms/text':>12} {'open->1st vector s':>19}"
    print(f"{head} {'peak RSS MB':>12} {'RSS/weights':>12}")
    for row in result["summary"]:
        for rt in ("native", "python"):
            r = row[rt]
            print(
                f"{rt:8} {row['batch']:>5} {r['texts_per_s']:>9.2f} {1e3 * r['cpu_s_per_text']:>12.1f} "
                f"{r['open_to_first_vector_s']:>19.3f} {r['peak_rss_mb']:>12.0f} "
                f"{r['rss_over_weights']:>12.2f}"
            )
        print(
            f"  batch {row['batch']}: native/Python texts/s, pair by pair: median "
            f"{row['speed_ratio_median']:.3f} "
            f"(min {row['speed_ratio_min']:.3f}, max {row['speed_ratio_max']:.3f}, {row['pairs']} pairs); "
            f"CPU per text Python/native: {row['cpu_ratio_median']:.3f}"
        )
    for batch, r in interleaved.items():
        print(
            f"  batch {batch}, interleaved in one process ({r['rounds']} rounds): native/Python texts/s "
            f"median {r['speed_ratio_median']:.3f} (min {r['speed_ratio_min']:.3f}, max "
            f"{r['speed_ratio_max']:.3f}; native {r['native_texts_per_s']:.2f}, Python "
            f"{r['python_texts_per_s']:.2f} texts/s); CPU per text Python/native: {r['cpu_ratio_median']:.3f}"
        )
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in result['load_average'])}")
    print(f"libinbedder.so: {lib.stat().st_size / 1e6:.2f} MB; links {', '.join(result['ldd'])}")
    print(f"CPU flags: {' '.join(result['cpu']['flags'])}")


if __name__ == "__main__":
    main()
