"""A per-token int8 graph's row-ops form: the same graph with inbedder's row operators.

Scope: the graph rewrite and its check. The per-token graphs (quantize/pertoken.py) quantize each
weight MatMul's input with six stock nodes (Abs or the GELU shift Add, ReduceMax, Mul, Max,
Reciprocal, Mul, QuantizeLinear: about five passes over the activation), and
MatMulIntegerToFloat applies their per-row scale in a pass of its own before the bias and
residual Adds. The row operators (native/runtime/src/row_ops.hpp, domain `inbedder.row_ops`) do
each in one pass with the same float operations in the same order, so the rewritten graph's
outputs are bit-identical to the stock graph's:

- `RowQuantize(x) -> (xq, scale)` replaces each six-node chain;
- `RowScale(z, s[, bias[, residual]])`: every MatMulIntegerToFloat with a per-row A scale gets
  A scale 1, and one node after it computes `((z * s) + bias) + residual`, taking the bias Add
  and the residual Add when each is the only consumer. After an attention's packed projection it
  takes the Split too (attribute `widths`: one output each) and the MultiHeadAttention's bias,
  and writes K and V as (B, N, S, H) (attribute `heads`), so that MultiHeadAttention adds no bias
  and copies neither to its own layout; its core runs on the same values.

The row-ops graph is structure only (~0.2 MB): its weights are the stock graph's data file, at
the same offsets. `quantize_bundle(..., row_ops=LIB)` writes it beside the stock graph
(manifest `graphs.<role>.row_ops`) after checking, with the operator library LIB
(libinbedder_row_ops.so), that the bundle's vectors and answers are bit-identical with it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from inbedder.errors import QuantizationRefused
from inbedder.onnxfile import reads, used_names
from inbedder.quantize.gate import bit_identical
from inbedder.runtime import Embedder
from inbedder.runtime.bundle import GraphSpec, Manifest
from inbedder.runtime.pipeline import GraphCall
from inbedder.runtime.session import make_session

DOMAIN = "inbedder.row_ops"
MS_DOMAIN = "com.microsoft"
DOMAIN_VERSION = 1
# pertoken's `<x>.rowq/<step>` node suffixes: the plain chain and the one after the GELU shift
STOCK = frozenset({"abs", "amax", "scale", "floor", "inv", "norm", "q"})
SHIFTED = STOCK - {"abs"} | {"shift"}
ONE = "row_ops.one"  # the A scale 1 MatMulIntegerToFloat gets once RowScale applies the row's


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
        outputs = [f"{prefix}.q", f"{prefix}.scale"]  # the names pertoken's consumers read
        shifted = int(kinds == SHIFTED)
        node = helper.make_node("RowQuantize", [x], outputs, name=f"{prefix}/row_quantize", domain=DOMAIN)
        node.attribute.append(helper.make_attribute("shifted", shifted))
        out.append(node)
    _replace_nodes(model, out)
    return sum(1 for n in out if n.op_type == "RowQuantize")


def fuse_scale(model: onnx.ModelProto) -> int:
    """Give every MatMulIntegerToFloat with a per-row A scale the scale 1 and apply the row scale
    in a RowScale node after it, which also takes the bias Add that follows (a constant (N,)) and
    the residual Add after that (another tensor) when each is the only consumer; returns how many."""
    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in reads(n):  # an If reading a tensor in a branch consumes it too
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}

    def only_add(tensor: str) -> onnx.NodeProto | None:
        users = consumers.get(tensor, [])
        if tensor in outputs or len(users) != 1 or users[0].op_type != "Add":
            return None
        return users[0]

    absorbed: set[str] = set()
    reshaped: set[str] = set()  # tensors RowScale now writes in another shape
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
        results, attrs = [result], {}
        split = _split_of(result, consumers, inits, outputs) if len(inputs) == 2 else None
        if split is not None:  # RowScale writes the Split's outputs itself
            results, attrs["widths"] = list(split.output), _split_sizes(split, inits)
            last = split
            absorbed.add(split.name)
            mha = _attention_of(split, consumers, inits, attrs["widths"])
            if mha is not None:  # and adds the attention's bias, K and V in its (B, N, S, H) layout
                inputs.append(mha.input[3])
                mha.input[3] = ""
                heads = next(a.i for a in mha.attribute if a.name == "num_heads")
                attrs["heads"] = [0, heads, heads]
                reshaped.update(split.output[1:])
        n.input[2] = ONE
        n.output[0] = raw
        node = helper.make_node("RowScale", inputs, results, name=f"{n.name}/row_scale", domain=DOMAIN)
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        after[last.name] = node
    if after:
        model.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), ONE))
    out: list[onnx.NodeProto] = []
    for n in model.graph.node:
        if n.name not in absorbed:
            out.append(n)
        if n.name in after:
            out.append(after[n.name])
    _replace_nodes(model, out)
    kept = [v for v in model.graph.value_info if v.name not in reshaped]  # stale shapes go
    model.graph.ClearField("value_info")
    model.graph.value_info.extend(kept)
    return len(after)


def _split_sizes(split: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> list[int]:
    sizes = split.input[1] if len(split.input) > 1 else ""
    if sizes:
        return [int(v) for v in numpy_helper.to_array(inits[sizes])]
    return [int(v) for a in split.attribute if a.name == "split" for v in a.ints]


def _split_of(
    tensor: str,
    consumers: dict[str, list[onnx.NodeProto]],
    inits: dict[str, onnx.TensorProto],
    outputs: set[str],
) -> onnx.NodeProto | None:
    """The Split along axis -1, with constant sizes, that alone reads `tensor`, or None."""
    users = consumers.get(tensor, [])
    if tensor in outputs or len(users) != 1 or users[0].op_type != "Split" or users[0].domain:
        return None
    split = users[0]
    axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
    sizes = split.input[1] if len(split.input) > 1 else ""
    if axis != -1 or (sizes and sizes not in inits):
        return None
    widths = _split_sizes(split, inits)
    if len(widths) != len(split.output) or any(w <= 0 for w in widths):
        return None
    return split


def _attention_of(
    split: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]], inits, widths: list[int]
) -> onnx.NodeProto | None:
    """The MultiHeadAttention that alone reads `split`'s three outputs as its query, key and
    value, with a constant bias of their widths and no past, or None."""
    mhas = {id(n): n for o in split.output for n in consumers.get(o, [])}
    if len(split.output) != 3 or len(mhas) != 1:
        return None
    mha = next(iter(mhas.values()))
    inputs = list(mha.input) + [""] * (6 - len(mha.input))
    if (mha.op_type, mha.domain) != ("MultiHeadAttention", MS_DOMAIN) or inputs[:3] != list(split.output):
        return None
    if any(len(consumers.get(o, [])) != 1 for o in split.output) or any(inputs[6:]):
        return None
    bias = inits.get(inputs[3])
    heads = next((a.i for a in mha.attribute if a.name == "num_heads"), 0)
    if bias is None or list(bias.dims) != [sum(widths)] or heads <= 0:
        return None
    if widths[1] % heads or widths[2] % heads or len(mha.output) != 1:
        return None
    return mha


def _replace_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    model.graph.ClearField("node")
    model.graph.node.extend(nodes)
    if any(n.domain == DOMAIN for n in nodes) and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    used = used_names(model.graph)  # an If's branches read the outer graph's weights too
    keep = [t for t in model.graph.initializer if t.name in used]  # replaced constants go
    model.graph.ClearField("initializer")
    model.graph.initializer.extend(keep)


def rewrite(model: onnx.ModelProto) -> dict[str, int]:
    """Both rewrites, in place; the number of each row operator now in `model`, and of the
    RowScale nodes that write an attention's Q, K and V (`attention`)."""
    fuse_quantization(model)
    fuse_scale(model)
    ops = Counter(n.op_type for n in model.graph.node if n.domain == DOMAIN)
    ops["attention"] = sum(
        n.op_type == "RowScale" and any(a.name == "heads" for a in n.attribute) for n in model.graph.node
    )
    return {k: ops[k] for k in ("RowQuantize", "RowScale", "attention")}


def row_ops_name(graph_file: str) -> str:
    """The row-ops graph's file name beside `graph_file`: model.onnx -> model.row_ops.onnx."""
    stem = graph_file.removesuffix(".onnx")
    return f"{stem}.row_ops.onnx"


def write_row_ops_graph(graph: Path, out: Path) -> dict[str, int]:
    """Write `graph`'s row-ops form to `out` (in the same directory: it reads `graph`'s data file
    by the name `graph` records); the row operator counts, all 0 (and nothing written) when
    `graph` has nothing to rewrite."""
    if out.parent.resolve() != graph.parent.resolve():
        raise ValueError(f"{out}: the row-ops graph must sit beside {graph} (it reads its data file)")
    model = onnx.load(str(graph), load_external_data=False)  # structure only: weights stay put
    counts = rewrite(model)
    if any(counts.values()):
        onnx.save(model, str(out))
    return counts


def add_row_ops(
    stage_dir: Path,
    manifest: Manifest,
    library: Path,
    pairs: Sequence[tuple[str, str]],
    calls: Mapping[str, list[GraphCall]] | None = None,
) -> tuple[dict[str, GraphSpec], dict[str, Any]]:
    """Write the row-ops form of each graph of the staged bundle `stage_dir` that has one, and check
    it against the stock graph: every graph pass the runtime makes on `pairs` (a decode's included)
    must give bit-identical outputs with `library` (libinbedder_row_ops.so) registered, else
    `QuantizationRefused`. `calls`: those passes with the stock graphs' outputs when the caller has
    them (else they are run). Returns the graphs with their `row_ops` set and the manifest's record."""
    if calls is None:
        calls = Embedder(stage_dir, verify=False).pipeline.graph_calls(pairs)  # the stock graphs' outputs
    graphs = dict(manifest.graphs)
    record: dict[str, Any] = {"library": library.name, "graphs": {}}
    for role, g in manifest.graphs.items():
        name = row_ops_name(g.file)
        counts = write_row_ops_graph(stage_dir / g.file, stage_dir / name)
        if not any(counts.values()):
            continue
        rows = make_session(stage_dir / name, "cpu", None, g.cpu_disabled_optimizers, None, library)
        passes = calls.get(role, [])
        for k, (feed, want) in enumerate(passes):
            got = rows.run(list(g.outputs), feed)
            for out, w, x in zip(g.outputs, want, got, strict=True):
                if not bit_identical(w, x):
                    if w.shape == x.shape:
                        how = f"largest difference {float(np.max(np.abs(w.astype(np.float64) - x))):.3g}"
                    else:
                        how = f"shape {x.shape} against {w.shape}"
                    raise QuantizationRefused(
                        f"row-ops graph {name} differs from {g.file} ({role}): output {out!r} of pass "
                        f"{k} ({how}); the row operators must reproduce the stock nodes bit for bit"
                    )
        graphs[role] = dataclasses.replace(g, row_ops=name)
        record["graphs"][role] = {"file": name, "ops": counts, "bit_identical_passes": len(passes)}
    return graphs, record
