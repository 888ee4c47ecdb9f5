"""The short decode loops: causal greedy decode with the KV cache vs re-running the prompt each
step (OPT-350m-shaped random model), and the cost of iterative unmasking for masked LMs.

    python bench/decode.py --work /tmp/inbedder-decode [--masked-bundle DIR]

OPT-350m's shapes: 24 layers, hidden 1024, 16 heads, FFN 4096, word_embed_proj_dim 512, vocab
50272. Speed does not depend on weight values. Both causal variants run the same exported graph
on the same prompts (batch 4, 64-token prompts, 8 new tokens, no early EOS): one feeds a single
token per step with the cache, the other feeds the whole sequence so far with an empty cache.
`--masked-bundle` (e.g. the int8 bundle bench/bench.py builds) times decode_steps 1, 2, 3.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

BATCH, PROMPT, NEW = 4, 64, 8


def build(work: Path) -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from models import opt_350m_shaped

    from inbedder.export import export_bundle

    ckpt, bundle = opt_350m_shaped(work / "opt350m-ckpt"), work / "opt350m"
    if not (bundle / "inbedder.json").exists():
        export_bundle(str(ckpt), bundle, overwrite=True)
    return bundle


def causal(bundle: Path, runs: int) -> dict:
    from inbedder import Embedder

    emb = Embedder(bundle, threads=2)
    pipe = emb.pipeline
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 300, (BATCH, PROMPT)).astype(np.int64)
    mask = np.ones_like(ids)
    kv, hd = pipe.kv_heads, pipe.head_dim
    empty = {
        f"past_{k}_{i}": np.zeros((BATCH, kv, 0, hd), np.float32)
        for i in range(pipe.layers)
        for k in ("key", "value")
    }

    def with_cache() -> None:
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": mask.cumsum(-1) - 1, **empty}
        m = mask
        for _ in range(NEW):
            out = pipe.run("decoder", feed)
            nxt = out["logits"].argmax(-1)[:, None]
            m = np.concatenate([m, np.ones((BATCH, 1), np.int64)], axis=1)
            past = {n.replace("present", "past"): out[n] for n in out if n.startswith("present_")}
            feed = {
                "input_ids": nxt,
                "attention_mask": m,
                "position_ids": feed["position_ids"][:, -1:] + 1,
                **past,
            }

    def rerun_prompt() -> None:
        seq = ids
        for _ in range(NEW):
            m = np.ones_like(seq)
            out = pipe.run(
                "decoder", {"input_ids": seq, "attention_mask": m, "position_ids": m.cumsum(-1) - 1, **empty}
            )
            seq = np.concatenate([seq, out["logits"].argmax(-1)[:, None]], axis=1)

    res = {}
    for name, fn in (("cache", with_cache), ("rerun-prompt", rerun_prompt)):
        fn()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        med = sorted(times)[len(times) // 2]
        res[name] = {"tokens_per_s": BATCH * NEW / med, "median_s": med}
    return res


def unmasking(bundle: Path, runs: int) -> dict:
    from inbedder import Embedder

    emb = Embedder(bundle, threads=2)
    texts = [f"The committee met on day {i} to review the budget and the hiring plan." for i in range(8)]
    res = {}
    for k in (1, 2, 3):
        emb.encode(texts, "What is the topic?", decode_steps=k)
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            emb.encode(texts, "What is the topic?", decode_steps=k)
            times.append(time.perf_counter() - t)
        res[f"decode_steps={k}"] = {"median_s_per_batch_of_8": sorted(times)[len(times) // 2]}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/inbedder-decode"))
    ap.add_argument("--masked-bundle", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    report = {
        "causal (OPT-350m shape, batch 4, prompt 64, 8 new tokens)": causal(build(args.work), args.runs)
    }
    if args.masked_bundle:
        report[f"unmasking ({args.masked_bundle})"] = unmasking(args.masked_bundle, args.runs)
    print(json.dumps(report, indent=2))
    (args.work / "decode-results.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
