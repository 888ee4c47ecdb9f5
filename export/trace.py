"""What every family's exporter shares: tracing a graph module to ONNX, and manifest records.

Scope: one call of the TorchScript exporter with the project's settings (a `GraphSpec` back), and
the manifest entries built the same way for every family: `source` (from a loaded transformers
model), `special_tokens`, `decode`, `exporter` (versions).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch

from inbedder.errors import InputError
from inbedder.onnxfile import save_graph
from inbedder.runtime.bundle import GraphSpec


def trace_to_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    inputs: Sequence[str],
    outputs: Sequence[str],
    axes: Mapping[str, Mapping[int, str]],
    opset: int,
) -> GraphSpec:
    """Trace `module` (in eval mode) on `args` with dynamic `axes` and write it to `path`.

    The TorchScript exporter (`dynamo=False`): its graphs are the ones onnxruntime's transformer
    fusions recognise. Example inputs should include a padded row so that masks trace as data.
    """
    module.eval()  # torch.onnx.export restores the mode it found, recursively
    scratch = path.parent / (path.name + ".trace")
    scratch.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings from transformers' mask helpers
        torch.onnx.export(
            module,
            args,
            str(scratch / path.name),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes={k: dict(v) for k, v in axes.items()},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    # Past protobuf's 2 GiB the exporter writes one file per tensor; loading gathers them either
    # way, and the bundle layout (weights in one aligned `<graph>.data`) is written from there.
    data = save_graph(onnx.load(str(scratch / path.name), load_external_data=True), path)
    shutil.rmtree(scratch)
    return GraphSpec(file=path.name, inputs=tuple(inputs), outputs=tuple(outputs), data=data)


def source_record(
    source: str,
    revision: str | None,
    model: Any,  # a transformers PreTrainedModel
    *,
    architecture: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Where the bundle came from and the shapes later stages need (fusions, C++ buffers)."""
    cfg = model.config
    # T5 names them num_heads / num_layers / d_model
    heads: Any = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "num_heads", None)
    layers: Any = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", None)
    hidden: Any = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
    record = {
        "model": source,
        "revision": revision or getattr(cfg, "_commit_hash", None),
        "architecture": architecture or type(model).__name__,
        "model_type": cfg.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "hidden_size": int(hidden),
        "num_attention_heads": int(heads),
        "num_hidden_layers": int(layers),
        "vocab_size": int(cfg.vocab_size),
    }
    record.update(extra)
    return record


def token_ids_record(**ids: int | None) -> dict[str, int]:
    """The manifest's `special_tokens`: the named ids the tokenizer has (None ones left out)."""
    return {name: int(v) for name, v in ids.items() if v is not None}


def decode_record(tokenizer: Any) -> dict[str, Any]:
    """How the runtime decodes answers so that they equal the tokenizer's `batch_decode`."""
    return {
        "skip_special_tokens": True,
        "clean_up_tokenization_spaces": bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)),
        "special_ids": sorted(int(i) for i in tokenizer.all_special_ids),
    }


def versions(opset: int) -> dict[str, Any]:
    """The manifest's `exporter`: versions of the packages that made the bundle, and the opset."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"opset": opset}
    for pkg in ("inbedder", "torch", "transformers", "onnx", "onnxruntime", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def load_fast_tokenizer(source: Any, revision: str | None = None) -> Any:
    """The checkpoint's tokenizer; a fast (`tokenizers`) one, since the bundle needs tokenizer.json."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"{source}: needs a fast (tokenizers) tokenizer to write tokenizer.json")
    return tokenizer
