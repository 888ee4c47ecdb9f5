"""What fusing per-token int8's passes around each weight GEMM would save (issue 17).

Scope: a measurement, not a runtime feature. The per-token graphs (quantize/pertoken.py) quantize
each weight MatMul's input with six stock nodes (Abs or the GELU shift Add, ReduceMax, Mul, Max,
Reciprocal, Mul, QuantizeLinear: ~5 passes over the activation), and MatMulIntegerToFloat applies
their per-row scale in a pass of its own before the bias and residual Adds. `fused_quant/
fused_ops.cc` has the same arithmetic as two onnxruntime custom operators, RowQuantize and
RowScale (one pass each, on the session's thread pool). This script builds them with g++ against
onnxruntime's headers (scripts/install.sh's `.cache/onnxruntime/include`, or
`$ONNXRUNTIME_ROOT/include`), rewrites a bundle's graph to use them (VARIANTS), checks that every
output is bit-identical to the bundle graph's, and times the graphs in one process, alternating,
at each (batch x tokens) point.

    python bench/fused_quant.py --bundle /work/bench/ct2/int8 [--points 1x32,8x128] [--rounds 10]
        [--profile]

Shipping them would mean a compiled operator library that both runtimes register (the Python
runtime today needs only onnxruntime, tokenizers and numpy) and bundles that name it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "fused_quant" / "fused_ops.cc"
DOMAIN = "inbedder.bench"
STOCK = {"abs", "amax", "scale", "floor", "inv", "norm", "q"}  # pertoken's `.rowq/` node suffixes
SHIFTED = STOCK - {"abs"} | {"shift"}


def build(out_dir: Path, march: str = "native") -> Path:
    """Compile the operator library; returns its path."""
    root = os.environ.get("ONNXRUNTIME_ROOT")
    include = Path(root) / "include" if root else HERE.parent / ".cache" / "onnxruntime" / "include"
    if not (include / "onnxruntime_cxx_api.h").exists():
        raise SystemExit(f"fused_quant: no onnxruntime headers in {include} (run scripts/install.sh)")
    lib = out_dir / "libfused_ops.so"
    flags = [f"-march={march}"] if march else []
    # no FMA contraction: z * s + b must round twice, as the stock Mul and Add do
    cmd = [
        "g++",
        "-O3",
        *flags,
        "-ffp-contract=off",
        "-std=c++17",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-shared",
        "-fPIC",
    ]
    subprocess.run([*cmd, f"-I{include}", str(SOURCE), "-o", str(lib)], check=True)
    return lib


def fuse_quantization(model: onnx.ModelProto) -> int:
    """Replace every per-token row quantization of `model` (pertoken's `<x>.rowq/*` nodes) by one
    RowQuantize node, in place; returns how many."""
    groups: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        if ".rowq/" in n.name:
            groups.setdefault(n.name.rsplit("/", 1)[0], []).append(n)
    out: list[onnx.NodeProto] = []
    for n in model.graph.node:
        prefix = n.name.rsplit("/", 1)[0] if ".rowq/" in n.name else None
        if prefix is None:
            out.append(n)
            continue
        group = groups.pop(prefix, None)
        if group is None:  # already replaced, at the group's first node
            continue
        kinds = {g.name.rsplit("/", 1)[1] for g in group}
        if kinds not in (STOCK, SHIFTED):
            raise ValueError(f"{prefix}: not pertoken's row quantization ({sorted(kinds)})")
        x = prefix.removesuffix(".rowq")
        outputs = [f"{prefix}.q", f"{prefix}.scale"]
        shifted = int(kinds == SHIFTED)
        out.append(
            helper.make_node(
                "RowQuantize", [x], outputs, name=f"{prefix}/fused", domain=DOMAIN, shifted=shifted
            )
        )
    _replace_nodes(model, out)
    return sum(1 for n in out if n.op_type == "RowQuantize")


def fuse_scale(model: onnx.ModelProto) -> int:
    """Give every MatMulIntegerToFloat with a per-row A scale the scale 1 and apply the row scale
    in a RowScale node after it, which also takes the bias Add that follows (a constant (N,)) and
    the residual Add after that (another tensor) when each is the only consumer; returns how many."""
    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}

    def only_add(tensor: str) -> onnx.NodeProto | None:
        users = consumers.get(tensor, [])
        if tensor in outputs or len(users) != 1 or users[0].op_type != "Add":
            return None
        return users[0]

    one = "fused.one"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.0, np.float32), one))
    absorbed: set[str] = set()
    after: dict[str, onnx.NodeProto] = {}  # node name -> the RowScale to insert after it
    for n in model.graph.node:
        if n.op_type != "MatMulIntegerToFloat" or n.input[2] in inits:
            continue
        scale, raw = n.input[2], f"{n.output[0]}.unscaled"
        inputs, result, last = [raw, scale], n.output[0], n
        bias_add = only_add(result)
        if bias_add is not None:
            bias = next((i for i in bias_add.input if i != result), "")
            t = inits.get(bias)
            if t is not None and list(t.dims) == [inits[n.input[3]].dims[-1]]:
                inputs.append(bias)
                result, last = bias_add.output[0], bias_add
                absorbed.add(bias_add.name)
                res_add = only_add(result)
                other = next((i for i in res_add.input if i != result), "") if res_add else ""
                if res_add is not None and other not in inits:
                    inputs.append(other)
                    result, last = res_add.output[0], res_add
                    absorbed.add(res_add.name)
        n.input[2] = one
        n.output[0] = raw
        after[last.name] = helper.make_node(
            "RowScale", inputs, [result], name=f"{n.name}/row_scale", domain=DOMAIN
        )
    out: list[onnx.NodeProto] = []
    for n in model.graph.node:
        if n.name not in absorbed:
            out.append(n)
        if n.name in after:
            out.append(after[n.name])
    _replace_nodes(model, out)
    return len(after)


def _replace_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]  # replaced constants go
    model.graph.ClearField("initializer")
    model.graph.initializer.extend(keep)


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


VARIANTS = {"quant": (fuse_quantization,), "quant+scale": (fuse_quantization, fuse_scale)}


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
    ap.add_argument("--march", default="native", help="g++ -march (empty: the compiler's default)")
    ap.add_argument("--profile", action="store_true", help="also onnxruntime's per-operator profile")
    args = ap.parse_args()
    points = [(int(b), int(t)) for b, t in (p.split("x") for p in args.points.split(","))]
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(Path(tmp), args.march)
        compare(args.bundle, lib, points, args.rounds, Path(tmp) if args.profile else None)


if __name__ == "__main__":
    main()
