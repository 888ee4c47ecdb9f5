"""What fusing per-token int8's passes around each weight GEMM saves (issue 17): the bundle's
stock graph against its row-ops forms, graph sessions alone.

Scope: a measurement of the row operators (native/runtime/src/row_ops.cpp, the graphs of
quantize/row_ops.py; README "Row operators"). The per-token graphs quantize each weight MatMul's
input with six stock nodes (~5 passes over the activation), and MatMulIntegerToFloat applies their
per-row scale in a pass of its own before the bias and residual Adds; RowQuantize and RowScale do
each in one pass on the session's thread pool. This script rewrites a per-token int8 bundle's
graph in two stages (VARIANTS: RowQuantize only, then RowScale too, which is what quantize's
row_ops= writes), checks that every output is bit-identical to the stock graph's, and times the
graphs in one process, alternating, at each (batch x tokens) point.

    python bench/fused_quant.py --bundle /work/bench/ct2/int8 [--points 1x32,8x128] [--rounds 10]
        [--profile] [--build BUILD_DIR]

`--build`: a native build directory holding libinbedder_row_ops.so (default: tests/native.py's
build/pytest, configured and built when needed). INBEDDER_ROW_OPS_ISA=avx2|scalar times a lower
kernel path.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from inbedder.quantize.row_ops import fuse_quantization, fuse_scale

HERE = Path(__file__).resolve().parent


def library(build: Path | None) -> Path:
    """The row operators' library: from `build` (a native build directory), else built by
    tests/native.py's build_native (build/pytest)."""
    if build is None:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from native import build_native

        build = build_native()
    lib = build / "native" / "runtime" / "libinbedder_row_ops.so"
    if not lib.is_file():
        raise SystemExit(f"fused_quant: no {lib} (build the native tree: cmake --build {build})")
    return lib


def session(
    path: Path, disabled: list[str], lib: Path | None, profile: Path | None = None
) -> ort.InferenceSession:
    from inbedder.runtime.session import ThreadOptions

    opts = ort.SessionOptions()
    ThreadOptions(2).apply(opts)  # the runtime's pool: 2 threads, no spinning
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile / path.stem)
    if lib is not None:
        opts.register_custom_ops_library(str(lib))
    return ort.InferenceSession(
        str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )


VARIANTS = {
    "quant": (fuse_quantization,),
    "quant+scale": (fuse_quantization, fuse_scale),
}  # stages of row_ops.rewrite


def compare(
    bundle: Path, lib: Path, points: list[tuple[int, int]], rounds: int, profile: Path | None = None
) -> None:
    """Time the bundle's graph ("stock") against each of VARIANTS, alternating, per point; with
    `profile` (a directory), also print each graph's time per operator type over all its passes."""
    sys.path.insert(0, str(HERE))
    from bench import INSTRUCTION, texts_of
    from inbedder.runtime import Embedder
    from inbedder.runtime.bundle import bundle_root

    pipe = Embedder(bundle, verify="none").pipeline
    spec = pipe.manifest.graphs["encoder"]
    src = bundle_root(bundle) / spec.file
    disabled = list(spec.cpu_disabled_optimizers)
    # onnxruntime reads external data only from the graph's own directory: each variant's graph is
    # written beside the bundle's, under a name no bundle uses, and removed after the run.
    paths = {v: src.with_name(f".fused-quant-{os.getpid()}-{i}.onnx") for i, v in enumerate(VARIANTS)}
    try:
        sessions = {"stock": session(src, disabled, None, profile)}
        for variant, passes in VARIANTS.items():
            model = onnx.load(src, load_external_data=False)
            counts = [f"{p.__name__} {p(model)}" for p in passes]
            onnx.save(model, paths[variant])
            sessions[variant] = session(paths[variant], disabled, lib, profile)
            print(f"{variant}: {', '.join(counts)} nodes fused")
        print(f"{src}; {_cpu()}")
        passes: collections.Counter[str] = collections.Counter()  # runs per session, for the profile
        for batch, tokens in points:
            texts = texts_of(bundle, tokens, batch)
            arrays = pipe.pad(pipe.tokenize(texts, [INSTRUCTION] * batch, "input"))
            feed = {i.name: arrays[i.name] for i in sessions["stock"].get_inputs()}
            ref = sessions["stock"].run(None, feed)
            passes.update({v: rounds + 1 for v in sessions} | {"stock": rounds + 2})
            same = {
                v: all(np.array_equal(x, y) for x, y in zip(ref, s.run(None, feed), strict=True))
                for v, s in sessions.items()
            }
            times: dict[str, list[float]] = {v: [] for v in sessions}
            for _ in range(rounds):
                for v, sess in sessions.items():
                    t = time.perf_counter()
                    sess.run(None, feed)
                    times[v].append(time.perf_counter() - t)
            ms = {v: 1000 * float(np.median(t)) for v, t in times.items()}
            row = ", ".join(
                f"{v} {ms[v]:.1f} ms ({ms['stock'] / ms[v]:.3f}x{'' if same[v] else ', outputs DIFFER'})"
                for v in VARIANTS
            )
            print(f"B={batch} T={tokens}: stock {ms['stock']:.1f} ms, {row} (median of {rounds})", flush=True)
        if profile is not None:
            for variant, sess in sessions.items():
                _print_profile(variant, Path(sess.end_profiling()), passes[variant])
    finally:
        for path in paths.values():
            path.unlink(missing_ok=True)


def _print_profile(variant: str, trace: Path, passes: int) -> None:
    per_op: collections.Counter[str] = collections.Counter()
    for e in json.loads(trace.read_text()):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]  # microseconds
    total = sum(per_op.values())
    top = ", ".join(f"{op} {100 * us / total:.1f}%" for op, us in per_op.most_common(8))
    print(f"profile {variant}: {total / passes / 1000:.0f} ms per pass; {top}")


def _cpu() -> str:
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return f"{platform.machine()}, {' '.join(f for f in wanted if f in flags) or 'no AVX2'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True, help="a per-token int8 bundle")
    ap.add_argument("--points", default="1x32,1x128,1x512,8x64,8x128,8x512", help="BATCHxTOKENS")
    ap.add_argument("--rounds", type=int, default=15, help="timed passes per graph and point")
    ap.add_argument("--build", type=Path, help="native build directory (default: build/pytest)")
    ap.add_argument("--profile", action="store_true", help="also onnxruntime's per-operator profile")
    args = ap.parse_args()
    points = [(int(b), int(t)) for b, t in (p.split("x") for p in args.points.split(","))]
    lib = library(args.build)
    with tempfile.TemporaryDirectory() as tmp:
        compare(args.bundle, lib, points, args.rounds, Path(tmp) if args.profile else None)


if __name__ == "__main__":
    main()
