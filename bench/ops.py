"""Where an int8 pass spends its time: onnxruntime's CPU kernels for the fused operators we leave
out of CPU graphs against the ops they replace, and a per-operator profile of a bundle.

    python bench/ops.py [--kernels fused,matmul,attention,gemm] [--bundle /tmp/inbedder-bench/int8
        --tokens 128 --batch 8 [--row-ops LIB]]

Kernels (roberta-large's shapes, 2 threads as the runtime sets them; ms per call, median of 50):
`fused` (the default), SkipLayerNormalization vs LayerNormalization on (8, 64, 1024), BiasGelu vs
Gelu on (8, 64, 4096): they back `CPU_SLOW_FUSIONS` (inbedder/onnxfile.py: what every graph's
`cpu_disabled_optimizers` names in the manifest, and what quantize leaves unfused for the CPU);
`matmul`, one weight MatMul as per-token int8 runs it against its GEMM alone (with its per-row
A scale and with a scalar one) and MatMulNBits 8-bit (`matmuls`); `attention`,
MultiHeadAttention with and without its mask and bias; `gemm`, the int8 GEMM at the model's weight
shapes for M = 64, 512, 1024 rows against the GEMM ceiling (`gemm_shapes`). With --bundle, the
bundle's graph (its row-ops form with `--row-ops LIB`) is run
on a batch of prompts of exactly `--tokens` tokens (bench/bench.py's texts) with onnxruntime's
profiler, session options as the runtime sets them, and the time per operator type is printed.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import INSTRUCTION, gemm_ceiling, texts_of  # bench/ is not a package: after the path insert

THREADS = 2


def _options() -> ort.SessionOptions:
    from inbedder.runtime.session import ThreadOptions

    opts = ort.SessionOptions()
    ThreadOptions(THREADS).apply(opts)  # the runtime's thread pool: THREADS threads, no spinning
    return opts


def time_model(model: onnx.ModelProto, inputs: dict[str, np.ndarray], runs: int = 50) -> float:
    """Median ms of one call of `model` on `inputs`."""
    sess = ort.InferenceSession(model.SerializeToString(), _options(), providers=["CPUExecutionProvider"])
    for _ in range(5):
        sess.run(None, inputs)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, inputs)
        times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[runs // 2]


def _model(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray], weights: dict[str, np.ndarray]):
    graph = helper.make_graph(
        nodes,
        "op",
        [
            helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for k, v in inputs.items()
        ],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


def time_op(node, inputs: dict[str, np.ndarray], weights: dict[str, np.ndarray], runs: int = 50) -> float:
    """Median ms of one call of a single-node graph."""
    return time_model(_model([node], inputs, weights), inputs, runs)


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


def matmuls(m: int = 1024) -> None:
    """One weight MatMul `Y = X W + b` (1, m, K) x (K, N) at both FFN shapes: as the per-token int8
    bundles run it (`quantize_model_int8_invariant` on the fp32 graph: the activation's quantization
    passes, the GEMM, the bias Add; and with uint8 weights), its `MatMulIntegerToFloat` alone on an
    already quantized input, and onnxruntime's `MatMulNBits` with 8-bit weights (block 32, accuracy
    level 4: the activation quantized per row and block inside the kernel)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from inbedder.quantize.pertoken import quantize_model_int8_invariant
    from inbedder.runtime.cpu import cpu_features

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    rng = np.random.default_rng(0)
    for k, n in ((1024, 4096), (4096, 1024)):
        x = rng.standard_normal((1, m, k), dtype=np.float32)
        w = {"w": rng.standard_normal((k, n), dtype=np.float32) * 0.02, "b": np.zeros(n, np.float32)}
        fp32 = [
            helper.make_node("MatMul", ["x", "w"], ["xw"], name="mm"),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ]
        pertoken = _model(fp32, {"x": x}, w)
        # the CPU's own range: 7-bit weights where its u8 x s8 kernels saturate (the same kernel)
        quantize_model_int8_invariant(pertoken, reduce_range=cpu_features().default_reduce_range())
        pertoken_u8 = _model(fp32, {"x": x}, w)  # the fallback's uint8 weights (u8 x u8 kernels)
        quantize_model_int8_invariant(pertoken_u8, reduce_range=False, u8_weights=True)
        nbits = MatMulNBitsQuantizer(_model(fp32, {"x": x}, w), bits=8, block_size=32, accuracy_level=4)
        nbits.process()
        scale = np.abs(x).max(axis=-1, keepdims=True) / 127  # (1, m, 1)
        xq = (np.rint(x / scale) + 128).astype(np.uint8)
        gemm = helper.make_node(
            "MatMulIntegerToFloat", ["xq", "wq", "s", "ws", "zp"], ["y"], domain="com.microsoft"
        )
        gemm_w = {
            "wq": np.ones((k, n), np.int8),
            "ws": np.full(n, 0.01, np.float32),
            "zp": np.array(128, np.uint8),
        }
        shape = f"({m},{k})x({k},{n})"
        print(f"{'per-token int8 ' + shape:36s} {time_model(pertoken, {'x': x}):7.3f} ms")
        print(f"{'  ... with uint8 weights':36s} {time_model(pertoken_u8, {'x': x}):7.3f} ms")
        print(f"{'  its GEMM alone':36s} {time_op(gemm, {'xq': xq, 's': scale}, gemm_w):7.3f} ms")
        # a scalar A scale: the GEMM without the separate per-row scaling pass after it
        one = {"s": np.array(0.01, np.float32)}
        print(f"{'  ... with a scalar A scale':36s} {time_op(gemm, {'xq': xq}, gemm_w | one):7.3f} ms")
        print(f"{'MatMulNBits bits=8 ' + shape:36s} {time_model(nbits.model.model, {'x': x}):7.3f} ms")


def attention(batches: tuple[int, ...] = (1, 8), tokens: int = 128) -> None:
    """`MultiHeadAttention` (1024 wide, 16 heads) as the int8 graphs call it (the QKV bias and the
    key lengths as the mask), and without the mask, the bias, or both."""
    rng = np.random.default_rng(0)
    for b in batches:
        qkv = {name: rng.standard_normal((b, tokens, 1024), dtype=np.float32) for name in "qkv"}  # (B, T, H)
        lengths = np.full(b, tokens, np.int32)
        for use_bias, use_mask in ((True, True), (False, True), (True, False), (False, False)):
            names = ["q", "k", "v", "bias" if use_bias else "", "m" if use_mask else ""]
            while names[-1] == "":
                names.pop()
            node = helper.make_node("MultiHeadAttention", names, ["y"], domain="com.microsoft", num_heads=16)
            inputs = qkv | ({"m": lengths} if use_mask else {})
            weights = {"bias": np.zeros(3 * 1024, np.float32)} if use_bias else {}
            label = f"MHA ({b},{tokens},1024) bias {'y' if use_bias else 'n'} mask {'y' if use_mask else 'n'}"
            print(f"{label:36s} {time_op(node, inputs, weights):7.3f} ms")


def gemm_shapes(ms: tuple[int, ...] = (64, 512, 1024), runs: int = 20) -> None:
    """The int8 GEMM at roberta-large's weight shapes (QKV, attention output, FFN up, FFN down) for
    M = B x T rows, as GOP/s and as a share of the ceiling (bench/bench.py's `gemm_ceiling` shape,
    1024 x 1024 x 4096, `MatMulInteger`): `MatMulInteger` (u8 x s8 -> int32) and
    `MatMulIntegerToFloat` as the row-ops graphs call it (A scale 1, a scale per column: the int32
    sum times that scale, one rounding)."""
    rng = np.random.default_rng(0)

    def rates(m: int, k: int, n: int) -> tuple[float, float]:
        a = {"a": rng.integers(0, 255, (m, k), dtype=np.uint8)}
        w = {"w": rng.integers(-127, 127, (k, n), dtype=np.int8), "zp": np.array(128, np.uint8)}
        integer = helper.make_node("MatMulInteger", ["a", "w", "zp"], ["y"])
        to_float = helper.make_node(
            "MatMulIntegerToFloat", ["a", "w", "one", "ws", "zp"], ["y"], domain="com.microsoft"
        )
        scales = {"one": np.array(1.0, np.float32), "ws": rng.random(n, dtype=np.float32) * 0.01}
        model = _model([integer], a, w)
        model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT32
        ops = 2 * m * k * n / 1e6  # GOP per call x 1000: ms -> GOP/s
        return ops / time_model(model, a, runs), ops / time_op(to_float, a, w | scales, runs)

    def reference() -> float:  # the ceiling, with the same thread pool as the shapes
        return gemm_ceiling(runs=runs, options=_options, kernels=("MatMulInteger",))["MatMulInteger"]

    shapes = [(m, k, n) for m in ms for k, n in ((1024, 3072), (1024, 1024), (1024, 4096), (4096, 1024))]
    first = reference()
    got = {shape: rates(*shape) for shape in shapes}
    ceiling = max(first, reference())  # timed before and after: the clock settles
    print(f"{'ceiling (1024,1024)x(1024,4096)':36s} {ceiling:7.0f} GOP/s MatMulInteger (best of 2)")
    for (m, k, n), (integer, to_float) in got.items():
        print(
            f"{f'({m},{k})x({k},{n})':36s} MatMulInteger {integer:5.0f} GOP/s {integer / ceiling:4.0%}"
            f"  MatMulIntegerToFloat {to_float:5.0f} GOP/s {to_float / ceiling:4.0%}"
        )


def profile(bundle: Path, tokens: int, batch: int, row_ops: Path | None = None) -> None:
    from inbedder.runtime import Embedder
    from inbedder.runtime.bundle import bundle_root

    pipe = Embedder(bundle, verify=False, row_ops=row_ops).pipeline
    texts = texts_of(bundle, tokens, batch)
    arrays = pipe.pad(pipe.tokenize(texts, [INSTRUCTION] * batch, "input"))
    opts = _options()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    graph = pipe.graph_files["encoder"]  # the row-ops form when given the library
    if row_ops is not None:
        opts.register_custom_ops_library(str(row_ops))
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
    print(f"{bundle} ({graph}) T={tokens} B={batch}: {total / runs / 1000:.0f} ms per pass (profiled)")
    for op, us in per_op.most_common(10):
        print(f"  {op:28s} {us / runs / 1000:8.1f} ms  {100 * us / total:5.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None, help="also profile this bundle's graph")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--row-ops", type=Path, default=None, help="profile the bundle's row-ops graph (LIB)")
    ap.add_argument(
        "--kernels", default="fused", help="comma-separated: fused, matmul, attention, gemm (none: skip)"
    )
    args = ap.parse_args()
    parts = {"fused": kernels, "matmul": matmuls, "attention": attention, "gemm": gemm_shapes}
    for part in filter(None, args.kernels.split(",")):
        if part != "none":
            parts[part]()
    if args.bundle is not None:
        profile(args.bundle, args.tokens, args.batch, args.row_ops)


if __name__ == "__main__":
    main()
