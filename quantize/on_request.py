"""Graph outputs computed only when a call asks for them: a family's answer outputs behind an If.

Scope: the graph rewrite and its check. onnxruntime runs every node of a graph whatever outputs a
call fetches, so a masked-LM graph decodes its answers (the LM head's projection over the whole
vocabulary at the answer slots, ~50 MB of int8 weights read per pass for roberta-large) even for a
call that wants only vectors. The rewrite moves the nodes that only the family's on-request
outputs need (`Pipeline.on_request`) into the then-branch of an `If` on a new graph input
`want_answers` (int64, shape (1,)): 1 computes them as before, 0 returns them empty (shape (0, 0))
and skips that work. The other outputs come from the same nodes either way.

`add_on_request` gates each graph of an accepted staged bundle (quantize, with
`answers_on_request=True`: off by default, see README "Answers on request") after checking it: every
graph pass the runtime makes on the calibration and held-out texts gives bit-identical outputs
with `want_answers` 1, and bit-identical kept outputs with 0; else `QuantizationRefused`. Runtimes
feed the input when the graph declares it (`graphs.<role>.inputs`); older bundles are unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from inbedder.errors import QuantizationRefused
from inbedder.onnxfile import reads
from inbedder.quantize.gate import bit_identical
from inbedder.runtime import Embedder
from inbedder.runtime.bundle import GraphSpec, Manifest
from inbedder.runtime.pipeline import WANT_ANSWERS, GraphCall, pipeline_for
from inbedder.runtime.session import make_session


def _cone(nodes: Sequence[onnx.NodeProto], producer: dict[str, int], outputs: set[str]) -> set[int]:
    """Indices of the nodes the tensors `outputs` depend on (`producer`: tensor -> node index)."""
    todo, seen = [producer[o] for o in outputs if o in producer], set()
    while todo:
        k = todo.pop()
        if k not in seen:
            seen.add(k)
            todo += [producer[i] for i in reads(nodes[k]) if i in producer]
    return seen


def _sorted(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """`nodes` in an order where each comes after the nodes it reads from (a stable topological
    sort): a subgraph must be sorted, and not every converter leaves its graph so (fp16's Casts)."""
    made_here = {o for n in nodes for o in n.output}
    ready: set[str] = set()
    out: list[onnx.NodeProto] = []
    todo = list(nodes)
    while todo:
        can = [all(i in ready or i not in made_here for i in reads(n)) for n in todo]
        if not any(can):
            raise ValueError("the nodes to gate form a cycle")
        out += [n for n, c in zip(todo, can, strict=True) if c]
        ready |= {o for n, c in zip(todo, can, strict=True) if c for o in n.output}
        todo = [n for n, c in zip(todo, can, strict=True) if not c]
    return out


def gate_outputs(model: onnx.ModelProto, gated: Sequence[str], flag: str = WANT_ANSWERS) -> int:
    """Move the nodes that only the graph outputs `gated` need into an If on the new int64 (1,)
    input `flag`, in place; the number of nodes moved (0: nothing to gate, `model` unchanged)."""
    g = model.graph
    names = [o.name for o in g.output]
    gated_set = {o for o in gated if o in names}
    if len(gated_set) != len(gated) or flag in {i.name for i in g.input}:
        raise ValueError(f"cannot gate {list(gated)}: not all graph outputs, or {flag!r} is already an input")
    nodes = list(g.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    keep = _cone(nodes, producer, set(names) - gated_set)
    moved = _cone(nodes, producer, gated_set) - keep
    if not moved or any(producer.get(o) not in moved for o in gated):
        return 0  # nothing only they need, or one is made by a node the other outputs need
    rename = {o: f"{o}/then" for o in gated}  # the If's outputs take the graph outputs' names
    then_nodes = _sorted([nodes[k] for k in sorted(moved)])
    for n in then_nodes:
        n.output[:] = [rename.get(o, o) for o in n.output]
        n.input[:] = [rename.get(i, i) for i in n.input]
    types = {o.name: o.type.tensor_type.elem_type for o in g.output}
    # each keeps its rank, its sizes unknown: (B, S) when asked, (0, 0) when not
    ranks = {o.name: len(o.type.tensor_type.shape.dim) or 1 for o in g.output}
    inner = {o for n in then_nodes for o in n.output}
    # The weights stay the outer graph's (the branch reads them from there): made the branch's own,
    # onnxruntime 1.32 loaded them into the heap beside their packed copies (+50 MB of RSS for
    # roberta-large's LM head, for the session's life); read from outside they cost a transient
    # ~50 MB while the session is created (README, "Answers on request").
    then_branch = helper.make_graph(
        then_nodes,
        "on_request",
        [],
        [helper.make_tensor_value_info(rename[o], types[o], [None] * ranks[o]) for o in gated],
        value_info=[v for v in g.value_info if v.name in inner],
    )
    empty = [
        helper.make_node(
            "Constant",
            [],
            [f"{o}/else"],
            value=helper.make_tensor(f"{o}/empty", types[o], [0] * ranks[o], []),
            name=f"{o}/empty",
        )
        for o in gated
    ]
    else_branch = helper.make_graph(
        empty,
        "not_requested",
        [],
        [helper.make_tensor_value_info(f"{o}/else", types[o], [None] * ranks[o]) for o in gated],
    )
    cond = f"{flag}/bool"
    kept = [n for k, n in enumerate(nodes) if k not in moved]
    kept.append(helper.make_node("Cast", [flag], [cond], to=TensorProto.BOOL, name=f"{flag}/cast"))
    kept.append(
        helper.make_node(
            "If", [cond], list(gated), then_branch=then_branch, else_branch=else_branch, name=f"{flag}/if"
        )
    )
    g.ClearField("node")
    g.node.extend(kept)
    values = [v for v in g.value_info if v.name not in inner]
    g.ClearField("value_info")
    g.value_info.extend(values)
    for o in g.output:
        if o.name in gated_set:
            o.type.CopyFrom(helper.make_tensor_type_proto(types[o.name], [None] * ranks[o.name]))
    g.input.append(helper.make_tensor_value_info(flag, TensorProto.INT64, [1]))
    return len(moved)


def add_on_request(
    stage_dir: Path, manifest: Manifest, pairs: Sequence[tuple[str, str]]
) -> tuple[dict[str, GraphSpec], dict[str, Any], dict[str, list[GraphCall]]]:
    """Gate the on-request outputs of each graph of the staged bundle `stage_dir` (in place) after
    checking the gated graph against it on every graph pass the runtime makes on `pairs`. Returns
    the graphs (gated ones with the input added), the manifest's record, and the passes with
    `want_answers` 1 in their feeds (the gated graphs' inputs and outputs, for later checks)."""
    on_request = pipeline_for(manifest).on_request
    graphs = dict(manifest.graphs)
    record: dict[str, Any] = {"input": WANT_ANSWERS, "graphs": {}}
    models = {}
    for role, g in manifest.graphs.items():
        if on_request.get(role) and WANT_ANSWERS not in g.inputs:
            model = onnx.load(str(stage_dir / g.file), load_external_data=False)  # structure only
            moved = gate_outputs(model, on_request[role])
            if moved:
                models[role] = (model, moved)
    if not models:
        return graphs, record, {}
    calls = Embedder(stage_dir, device="cpu", verify=False).pipeline.graph_calls(pairs)  # as they are
    for role, (model, moved) in models.items():
        g, gated = manifest.graphs[role], on_request[role]
        passes = calls.get(role, [])
        if not passes:  # never run on these texts: nothing to check it by, left as it is
            continue
        path = stage_dir / g.file
        trial = path.with_name(f".{path.name}.on_request")
        onnx.save(model, str(trial))
        try:
            sess = make_session(trial, "cpu", None, g.cpu_disabled_optimizers, None, None)
            kept = [k for k, o in enumerate(g.outputs) if o not in gated]
            for k, (feed, want) in enumerate(passes):
                for on in (1, 0):
                    got = sess.run(list(g.outputs), {**feed, WANT_ANSWERS: np.array([on], np.int64)})
                    checked = range(len(want)) if on else kept
                    bad = [g.outputs[j] for j in checked if not bit_identical(want[j], got[j])]
                    if bad:
                        raise QuantizationRefused(
                            f"{g.file} ({role}) with its outputs {list(gated)} on request differs "
                            f"from the graph without: output {bad[0]!r} of pass {k} ({WANT_ANSWERS}={on})"
                        )
            os.replace(trial, path)
        finally:
            trial.unlink(missing_ok=True)
        graphs[role] = dataclasses.replace(g, inputs=(*g.inputs, WANT_ANSWERS))
        calls[role] = [({**feed, WANT_ANSWERS: np.array([1], np.int64)}, outs) for feed, outs in calls[role]]
        record["graphs"][role] = {"outputs": list(gated), "nodes": moved, "bit_identical_passes": len(passes)}
    return graphs, record, calls
