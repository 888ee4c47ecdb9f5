"""Where an int8 pass spends its time: onnxruntime's CPU kernels for the fused operators we leave
out of CPU graphs against the ops they replace, and a per-operator profile of a bundle.

    python bench/ops.py [--bundle /tmp/inbedder-bench/int8 --tokens 128 --batch 8]

Kernels (roberta-large's shapes at 64 tokens, batch 8, 2 threads; ms per call, median of 50):
SkipLayerNormalization vs LayerNormalization on (8, 64, 1024), BiasGelu vs Gelu on (8, 64, 4096).
They back `CPU_SLOW_FUSIONS` (inbedder/onnxfile.py: what every graph's `cpu_disabled_optimizers`
names in the manifest, and what quantize leaves unfused for the CPU). With --bundle, the bundle's
graph is run on a batch of prompts of exactly `--tokens` tokens (bench/bench.py's texts) with
onnxruntime's profiler, session options as the runtime sets them, and the time per operator type
is printed.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

THREADS = 2


def _options() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return opts


def time_op(node, inputs: dict[str, np.ndarray], weights: dict[str, np.ndarray], runs: int = 50) -> float:
    """Median ms of one call of a single-node graph."""
    graph = helper.make_graph(
        [node],
        "op",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    sess = ort.InferenceSession(model.SerializeToString(), _options(), providers=["CPUExecutionProvider"])
    for _ in range(5):
        sess.run(None, inputs)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, inputs)
        times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[runs // 2]


def kernels() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 64, 1024), dtype=np.float32)  # (B, T, H)
    skip = rng.standard_normal((8, 64, 1024), dtype=np.float32)
    ffn = rng.standard_normal((8, 64, 4096), dtype=np.float32)  # (B, T, 4H)
    norm = {"g": np.ones(1024, np.float32), "b": np.zeros(1024, np.float32)}
    ms = "com.microsoft"
    cases = {
        "SkipLayerNormalization (8,64,1024)": (
            helper.make_node("SkipLayerNormalization", ["x", "s", "g", "b"], ["y"], domain=ms, epsilon=1e-5),
            {"x": x, "s": skip},
            norm,
        ),
        "Add (8,64,1024)": (helper.make_node("Add", ["x", "s"], ["y"]), {"x": x, "s": skip}, {}),
        "LayerNormalization (8,64,1024)": (
            helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5),
            {"x": x},
            norm,
        ),
        "BiasGelu (8,64,4096)": (
            helper.make_node("BiasGelu", ["x", "b"], ["y"], domain=ms),
            {"x": ffn},
            {"b": np.zeros(4096, np.float32)},
        ),
        "Gelu (8,64,4096)": (helper.make_node("Gelu", ["x"], ["y"], domain=ms), {"x": ffn}, {}),
    }
    for name, (node, inputs, weights) in cases.items():
        print(f"{name:36s} {time_op(node, inputs, weights):7.3f} ms")


def profile(bundle: Path, tokens: int, batch: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import INSTRUCTION, texts_of
    from inbedder.runtime import Embedder
    from inbedder.runtime.bundle import bundle_root

    pipe = Embedder(bundle, verify=False).pipeline
    texts = texts_of(bundle, tokens, batch)
    arrays = pipe.pad(pipe.tokenize(texts, [INSTRUCTION] * batch, "input"))
    opts = _options()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    graph = pipe.manifest.graphs["encoder"].file
    pipe_root = bundle_root(bundle)  # the current version's directory (a replaced bundle: v-*/)
    sess = ort.InferenceSession(
        str(pipe_root / graph),
        opts,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(pipe.manifest.graphs["encoder"].cpu_disabled_optimizers),
    )
    feed = {i.name: arrays[i.name] for i in sess.get_inputs()}
    runs = 4
    for _ in range(runs):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]  # microseconds
    total = sum(per_op.values())
    print(f"{bundle} T={tokens} B={batch}: {total / runs / 1000:.0f} ms per pass (profiled)")
    for op, us in per_op.most_common(8):
        print(f"  {op:28s} {us / runs / 1000:8.1f} ms  {100 * us / total:5.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None, help="also profile this bundle's graph")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    kernels()
    if args.bundle is not None:
        profile(args.bundle, args.tokens, args.batch)


if __name__ == "__main__":
    main()
