"""int4 weights: onnxruntime's MatMulNBits (4-bit values, one scale per block of K), weight-only.

Scope: one fused fp32 graph in (after `convert.fuse` and `embedding.quantize_tables`, so the
word-embedding table and a head tied to it are already int8 per row), one graph out in which every
MatMul with a constant 2-D fp32 weight, and every fused Attention's QKV projection (split out into
a MatMul + MultiHeadAttention as `pertoken.py` does for int8), is a `MatMulNBits`. The weights are
quantized by onnxruntime's `MatMulNBitsQuantizer` with its default algorithm: round to nearest,
per column, one scale (and with `symmetric=False` a 4-bit zero point) per block of `block_size`
consecutive rows of K; a K that is not a multiple of the block is zero-padded by the quantizer
(MatMulNBits takes K and the padded blocks as attributes).

`accuracy_level` is MatMulNBits' compute type: 0 (unset) dequantizes to fp32; 4 quantizes the
activations to int8 with one scale per block of each row of A. Measured on all-MiniLM-L6-v2 with
extreme batch neighbours (README "int4"; onnxruntime 1.32, AVX-512 VNNI): level 0 at any block
and level 4 at block 32 give a vector that does not depend on its batch (0.0 apart), level 4 at
blocks 64 and 128 does not (0.03 apart: another kernel path for other batch shapes), so the
default is block 32 (tests/test_quantize_int4.py checks the default alone vs batched).

The defaults (block 32, asymmetric, accuracy level 4) are the fastest of the settings whose vectors
are batch-independent and the most faithful of them on MiniLM's held-out part (README "int4").

The gate's fallback (`core._ladder_search`) keeps the MatMuls int4 hurts most at per-token int8
(`keep_int8`) rather than fp32: 4x smaller than fp32, as batch-independent as the rest.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from inbedder.onnxfile import save_graph

from .pertoken import quantize_model_int8_invariant, split_attention

BLOCK_SIZE = 32
SYMMETRIC = False
ACCURACY_LEVEL = 4


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMuls with a constant 2-D fp32 weight (what becomes MatMulNBits)."""
    inits = {i.name: i for i in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul"
        and n.domain in ("", "ai.onnx")
        and n.input[1] in inits
        and inits[n.input[1]].data_type == TensorProto.FLOAT
        and len(inits[n.input[1]].dims) == 2
        and n.input[0] not in inits
    ]


def quantize_int4(
    src: Path,
    dst: Path,
    *,
    reduce_range: bool,
    u8_weights: bool = False,
    keep_int8: Iterable[str] = (),
    only: Iterable[str] = (),
    block_size: int = BLOCK_SIZE,
    symmetric: bool = SYMMETRIC,
    accuracy_level: int = ACCURACY_LEVEL,
) -> dict[str, int]:
    """int4 (module docstring) of the fused fp32 graph `src`, written to `dst` in the bundle layout.
    Nodes named in `keep_int8` (fused-graph names: MatMuls, Attentions) become per-token int8
    instead (`reduce_range`, `u8_weights`: their weights' range and type, as int8 chooses); a
    non-empty `only` converts just those nodes to int4 and leaves the rest fp32 (the sensitivity
    probe). Returns the written graph's operator counts."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16 (MatMulNBits), got {block_size}")
    model = onnx.load(src)
    keep, wanted = set(keep_int8), set(only)
    if keep:
        quantize_model_int8_invariant(model, reduce_range=reduce_range, u8_weights=u8_weights, only=keep)
    qkv = split_attention(model)  # {Attention: its QKV MatMul}
    fused_name = {m: a for a, m in qkv.items()}
    targets = weight_matmuls(model)
    exclude = [n for n in targets if wanted and fused_name.get(n, n) not in wanted]
    # Its per-node INFO lines are progress chatter, not results.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    q = MatMulNBitsQuantizer(
        model,
        bits=4,
        block_size=block_size,
        is_symmetric=symmetric,
        accuracy_level=accuracy_level or None,  # 0: the attribute left out (fp32 compute)
        nodes_to_exclude=exclude,
    )
    q.process()
    out = q.model.model
    used = {i for n in out.graph.node for i in n.input} | {o.name for o in out.graph.output}
    kept = [t for t in out.graph.initializer if t.name in used]  # split_attention's spare constants
    out.graph.ClearField("initializer")
    out.graph.initializer.extend(kept)
    save_graph(out, dst)
    return dict(Counter(n.op_type for n in out.graph.node).most_common())


def simulate_weights(w: np.ndarray, block_size: int = BLOCK_SIZE, symmetric: bool = SYMMETRIC) -> np.ndarray:
    """(K, N) -> the (K, N) weights MatMulNBits computes with: per column, blocks of `block_size`
    rows, 4-bit round to nearest as onnxruntime's quantizer does (symmetric: the block's signed
    extreme maps to -8; asymmetric: its range, 0 included, over 0..15). For ranking only."""
    k, n = w.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), np.float64)
    padded[:k] = w
    b = padded.reshape(blocks, block_size, n)  # (blocks, block, N)
    if symmetric:
        hi, lo = b.max(axis=1, keepdims=True), b.min(axis=1, keepdims=True)
        scale = np.where(np.abs(hi) > np.abs(lo), hi, lo) / -8.0
        safe = np.where(scale == 0, 1.0, scale)
        q = np.clip(np.round(b / safe), -8, 7) * scale
    else:
        lo = np.minimum(b.min(axis=1, keepdims=True), 0)
        hi = np.maximum(b.max(axis=1, keepdims=True), 0)
        scale = (hi - lo) / 15.0
        safe = np.where(scale == 0, 1.0, scale)
        zero = np.clip(np.round(-lo / safe), 0, 15)
        q = (np.clip(np.round(b / safe + zero), 0, 15) - zero) * scale
    return q.reshape(-1, n)[:k].astype(np.float32)


def simulate_activations(x: np.ndarray, block_size: int = BLOCK_SIZE) -> np.ndarray:
    """(tokens, K) -> accuracy level 4's int8 activations: per row, per block of K, symmetric."""
    t, k = x.shape
    blocks = -(-k // block_size)
    padded = np.zeros((t, blocks * block_size), np.float64)
    padded[:, :k] = x
    b = padded.reshape(t, blocks, block_size)
    scale = np.abs(b).max(axis=2, keepdims=True) / 127.0
    safe = np.where(scale == 0, 1.0, scale)
    return (np.clip(np.round(b / safe), -127, 127) * scale).reshape(t, -1)[:, :k].astype(np.float32)
