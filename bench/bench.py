"""Throughput and memory of the masked answer-embedder, ours against the alternatives, in one run.

Scope: a roberta-large-shaped model with random weights (speed does not depend on weight values;
24 layers, hidden 1024, 16 heads, FFN 4096, vocab 50265) is built once, exported by inbedder
(fp32) and quantized (int8). Then each system embeds batches of prompts of exactly T tokens, each
(system, batch, T) in its own subprocess so that peak RSS is that configuration's alone:

  torch-reference   PyTorch eager fp32, full-vocabulary logits at every position (published code)
  torch-slots       PyTorch eager fp32, LM head only at the 3 answer slots
  inbedder-fp32     inbedder runtime, fp32 bundle
  inbedder-int8     inbedder runtime, int8 bundle
  optimum-int8      optimum's ONNX export (fill-mask) + ORTQuantizer dynamic int8 (needs a separate
                    Python with optimum-onnx, --optimum-python; it pins transformers<4.58)
plus the int8 GEMM ceiling: onnxruntime's MatMulInteger (u8 x s8) and DynamicQuantizeMatMul at
roberta-large's FFN shape, the faster of the two converted to texts/s with 2 x T x 302M
multiply-adds per text (the weight GEMMs).

    python bench/bench.py --work /tmp/inbedder-bench [--optimum-python /path/to/python] [--quick]

Prints a table and writes results.json in the work directory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SYSTEMS = ("torch-reference", "torch-slots", "inbedder-fp32", "inbedder-int8", "optimum-int8")
LAYER_WEIGHTS = 24 * (4 * 1024 * 1024 + 2 * 1024 * 4096)  # multiply-adds per token in weight GEMMs
INSTRUCTION = "What is the main topic?"


# -- setup ---------------------------------------------------------------------------------------
def build(work: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from models import roberta_large_shaped

    from inbedder.export import export_bundle
    from inbedder.quantize import quantize_bundle

    ckpt = roberta_large_shaped(work / "ckpt")
    if not (work / "fp32" / "inbedder.json").exists():
        export_bundle(str(ckpt), work / "fp32", overwrite=True)
    if not (work / "int8" / "inbedder.json").exists():
        quantize_bundle(work / "fp32", work / "int8", overwrite=True)


def texts_of(bundle: Path, tokens: int, n: int) -> list[str]:
    """n different texts whose prompt (template + instruction + slots) is exactly `tokens` long."""
    from tokenizers import Tokenizer

    from inbedder.runtime.bundle import bundle_root, load_manifest
    from inbedder.runtime.prompt import PromptTokenizer

    m = load_manifest(bundle, verify=False)
    tok = Tokenizer.from_file(str(bundle_root(bundle) / m.tokenizer_file))
    pt = PromptTokenizer(tok, m.prompt, m.truncation)
    words = [
        "the",
        "committee",
        "met",
        "on",
        "a",
        "rainy",
        "day",
        "to",
        "review",
        "budget",
        "plans",
        "and",
        "hiring",
    ]
    out = []
    for i in range(n):
        text, k = "", 0
        while len(pt.encode(text, INSTRUCTION).ids) < tokens:
            text += ("" if not text else " ") + words[(i + k) % len(words)]
            k += 1
        while len(pt.encode(text, INSTRUCTION).ids) > tokens:
            text = text[:-1]
        out.append(text)
    return out


# -- workers (one configuration per process) -----------------------------------------------------
def worker(system: str, work: Path, batch: int, tokens: int, runs: int) -> dict:
    import numpy as np

    texts = json.loads((work / f"texts-{tokens}-{batch}.json").read_text())
    t0 = time.perf_counter()
    if system.startswith("inbedder"):
        from inbedder import Embedder

        emb = Embedder(work / system.split("-")[1], threads=2)
        load = time.perf_counter() - t0

        def step() -> None:
            emb.encode(texts, INSTRUCTION, batch_size=batch)
    elif system.startswith("torch"):
        import torch
        from transformers import AutoModelForMaskedLM

        from inbedder.export import recipes
        from inbedder.export.masked_lm import ARCHS, MaskedAnswerGraph
        from inbedder.runtime import Embedder

        torch.set_num_threads(2)
        model = AutoModelForMaskedLM.from_pretrained(work / "ckpt", attn_implementation="eager").eval()
        load = time.perf_counter() - t0
        pipe = Embedder(work / "fp32", verify=False).pipeline
        arrays = pipe.pad(pipe.tokenize(texts, [INSTRUCTION] * batch, "input"))
        ids = torch.from_numpy(arrays["input_ids"])
        mask = torch.from_numpy(arrays["attention_mask"])
        slots = torch.from_numpy(arrays["slot_positions"])
        recipe = recipes()["masked-answer"][0]
        graph = MaskedAnswerGraph(model, ARCHS[model.config.model_type], recipe, False).eval()

        @torch.no_grad()
        def step() -> None:
            if system == "torch-reference":
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                is_mask = ids == 4
                for n in range(batch):
                    out.hidden_states[-1][n][is_mask[n]].mean(0)
                    out.logits[n][is_mask[n]].argmax(-1)
            else:
                graph(ids, mask, slots)
    else:  # optimum-int8, run by the optimum interpreter
        import onnxruntime as ort
        from transformers import AutoTokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        sess = ort.InferenceSession(str(work / "optimum-int8" / "model_quantized.onnx"), opts)
        load = time.perf_counter() - t0
        tok = AutoTokenizer.from_pretrained(work / "ckpt")
        template = "### Input:\n{input}\n\n### Instruction:\n{instruction}\n\n### Response:"
        prompts = [template.format(input=t, instruction=INSTRUCTION) + tok.mask_token * 3 for t in texts]

        def step() -> None:
            enc = tok(prompts, padding=True, return_tensors="np")
            feed = {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()}
            logits = sess.run(None, feed)[0]  # (B, T, V): optimum's fill-mask graph
            logits[enc["input_ids"] == tok.mask_token_id].argmax(-1)

    step()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = sorted(times)[len(times) // 2]
    rss = peak_rss_mb()
    return {"texts_per_s": batch / med, "median_s": med, "runs": runs, "load_s": load, "peak_rss_mb": rss}


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the address space, which exec
    replaces; `ru_maxrss` survives exec, so a worker started by a large parent would report the
    parent's size (seen: 15 GB for a 0.7 GB worker right after the build step)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def gemm_ceiling(
    m: int = 1024,
    k: int = 1024,
    n: int = 4096,
    runs: int = 20,
    options: Callable[[], Any] | None = None,
    kernels: tuple[str, ...] = ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulInteger u8 x u8"),
) -> dict[str, float]:
    """GOP/s of onnxruntime's int8 GEMMs at roberta-large's FFN shape (1024 rows): MatMulInteger
    (u8 x s8 -> int32), DynamicQuantizeMatMul (fp32 in, quantize, int8 GEMM, fp32 out: the
    kernel the stock int8 graphs run after onnxruntime's graph fusions) and MatMulInteger with
    uint8 weights (zero point 128: the kernel of `u8_weights` bundles, quantize/pertoken.py).
    `options` makes each session's SessionOptions (default: 2 intra-op threads, onnxruntime's
    spinning pool); `kernels` picks which are timed."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.integers(-127, 127, (k, n), dtype=np.int8), "W")
    scale = numpy_helper.from_array(np.array(0.01, dtype=np.float32), "S")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int8), "Z")
    w_u8 = numpy_helper.from_array(rng.integers(1, 256, (k, n), dtype=np.uint8), "W")
    zp_u8 = [numpy_helper.from_array(np.array(128, dtype=np.uint8), z) for z in ("AZ", "WZ")]
    cases = {
        "MatMulInteger": (
            helper.make_node("MatMulInteger", ["A", "W"], ["Y"]),
            TensorProto.UINT8, TensorProto.INT32, rng.integers(0, 255, (m, k), dtype=np.uint8), [w],
        ),
        "DynamicQuantizeMatMul": (
            helper.make_node("DynamicQuantizeMatMul", ["A", "W", "S", "Z"], ["Y"], domain="com.microsoft"),
            TensorProto.FLOAT, TensorProto.FLOAT, rng.standard_normal((m, k)).astype(np.float32),
            [w, scale, zero],
        ),
        "MatMulInteger u8 x u8": (
            helper.make_node("MatMulInteger", ["A", "W", "AZ", "WZ"], ["Y"]),
            TensorProto.UINT8, TensorProto.INT32, rng.integers(0, 255, (m, k), dtype=np.uint8),
            [w_u8, *zp_u8],
        ),
    }  # fmt: skip
    unknown = set(kernels) - set(cases)
    if unknown:
        raise ValueError(f"gemm_ceiling: unknown kernels {sorted(unknown)}; known: {sorted(cases)}")
    out = {}
    for name in kernels:
        node, a_type, y_type, a, inits = cases[name]
        graph = helper.make_graph(
            [node],
            "gemm",
            [helper.make_tensor_value_info("A", a_type, [m, k])],
            [helper.make_tensor_value_info("Y", y_type, [m, n])],
            inits,
        )
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        model = helper.make_model(graph, opset_imports=opsets)
        if options is None:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 2
        else:
            opts = options()
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        sess.run(None, {"A": a})
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            sess.run(None, {"A": a})
            times.append(time.perf_counter() - t)
        out[name] = 2 * m * k * n / sorted(times)[len(times) // 2] / 1e9
    return out


def export_optimum(python: str, work: Path) -> str | None:
    """optimum's ONNX export + dynamic int8 quantization, in the optimum interpreter."""
    target = work / "optimum-int8" / "model_quantized.onnx"
    if target.exists():
        return None
    code = f"""
from optimum.onnxruntime import ORTModelForMaskedLM, ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig
m = ORTModelForMaskedLM.from_pretrained({str(work / "ckpt")!r}, export=True)
m.save_pretrained({str(work / "optimum-fp32")!r})
q = ORTQuantizer.from_pretrained({str(work / "optimum-fp32")!r})
config = AutoQuantizationConfig.avx512_vnni(is_static=False)
q.quantize(save_dir={str(work / "optimum-int8")!r}, quantization_config=config)
"""
    r = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return None if r.returncode == 0 else r.stderr[-2000:]


def versions(python: str | None) -> dict:
    from importlib.metadata import version

    out = {p: version(p) for p in ("onnxruntime", "torch", "transformers", "tokenizers", "numpy")}
    if python:
        code = (
            "from importlib.metadata import version as v; "
            "print(v('optimum-onnx'), v('optimum'), v('transformers'))"
        )
        r = subprocess.run([python, "-c", code], capture_output=True, text=True)
        out["optimum (optimum-onnx, optimum, its transformers)"] = r.stdout.strip() or r.stderr[-200:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/inbedder-bench"))
    ap.add_argument("--optimum-python", default=None, help="a Python with optimum-onnx[onnxruntime]")
    ap.add_argument("--quick", action="store_true", help="batch 8 only")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, default=64, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.work, args.batch, args.tokens, args.runs)))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    build(args.work)
    systems = [s for s in args.systems.split(",") if s]
    notes = []
    if "optimum-int8" in systems:
        if not args.optimum_python:
            systems.remove("optimum-int8")
            notes.append("optimum-int8 skipped: no --optimum-python given")
        elif err := export_optimum(args.optimum_python, args.work):
            systems.remove("optimum-int8")
            notes.append(f"optimum-int8 failed to export: {err}")
    ceilings = gemm_ceiling()
    ceiling = max(ceilings["MatMulInteger"], ceilings["DynamicQuantizeMatMul"])  # u8 x s8: what bundles run
    results = []
    batches = (8,) if args.quick else (1, 8, 32)
    for tokens in (64, 128):
        for batch in batches:
            work_texts = args.work / f"texts-{tokens}-{batch}.json"
            work_texts.write_text(json.dumps(texts_of(args.work / "fp32", tokens, batch)))
            for system in systems:
                py = args.optimum_python if system == "optimum-int8" else sys.executable
                cmd = [py, __file__, "--work", str(args.work), "--worker", system, "--batch", str(batch),
                       "--tokens", str(tokens), "--runs", str(args.runs)]  # fmt: skip
                env = {**os.environ, "PYTHONPATH": ""}
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if r.returncode != 0:
                    notes.append(f"{system} b{batch} t{tokens} failed: {r.stderr[-500:]}")
                    continue
                res = json.loads(r.stdout.strip().splitlines()[-1])
                res.update(system=system, batch=batch, tokens=tokens)
                res["ceiling_texts_per_s"] = ceiling * 1e9 / (2 * tokens * LAYER_WEIGHTS)
                results.append(res)
                print(
                    f"{system:16s} T={tokens:3d} B={batch:2d} {res['texts_per_s']:7.2f} texts/s  "
                    f"peak RSS {res['peak_rss_mb']:6.0f} MB  load {res['load_s']:.2f} s",
                    flush=True,
                )
    int8_file = graph_mb(args.work / "int8")
    report = {
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
        "versions": versions(args.optimum_python),
        "int8_gemm_gops": ceilings,
        "int8_model_mb": int8_file,
        "results": results,
        "notes": notes,
    }
    (args.work / "results.json").write_text(json.dumps(report, indent=2))
    for name, gops in ceilings.items():
        print(f"int8 GEMM {name} 1024x1024x4096, 2 threads: {gops:.0f} GOP/s")
    for n in notes:
        print("note:", n[:300])
    print(f"results: {args.work / 'results.json'}")


def graph_mb(bundle: Path) -> float:
    """Size of a bundle's graph files (structure and weights), in MB."""
    from inbedder.runtime.bundle import load_manifest

    m = load_manifest(bundle, verify=False)
    return sum(int(m.files[f]["bytes"]) for g in m.graphs.values() for f in g.files) / 1e6


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
