"""Throughput of int8 bundles against each other, alternating in one process.

Scope: each bundle is loaded by `Embedder` (the runtime's own session options); for each
(batch, tokens) every bundle embeds the same batch of prompts of exactly `tokens` tokens, the
bundles in turn (A B C A B C ...) so that a machine whose speed drifts slows all alike. Prints
the median texts/s of each and the median of the per-round ratios against the first bundle.

    .venv/bin/python bench/quant_speed.py --bundle dynamic=/tmp/x/minilm-dynamic \\
        --bundle per-token=/tmp/x/minilm-per-token [--batch 1 8] [--tokens 64 128] [--rounds 40]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", required=True, help="NAME=PATH; the first is the baseline")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--tokens", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    from bench import INSTRUCTION, texts_of
    from inbedder import Embedder

    named = [b.split("=", 1) for b in args.bundle]
    embedders = {name: Embedder(path, threads=args.threads) for name, path in named}
    base = named[0][0]
    from inbedder.quantize import cpu_features

    flags = cpu_features().summary
    print(f"cpu {flags}; load average {os.getloadavg()}; {args.rounds} rounds")
    results = []
    for tokens in args.tokens:
        texts_all = texts_of(Path(named[0][1]), tokens, max(args.batch))
        for batch in args.batch:
            texts, ins = texts_all[:batch], [INSTRUCTION] * batch
            times: dict[str, list[float]] = {n: [] for n in embedders}
            for e in embedders.values():
                e.encode(texts, ins)  # warm-up
            for _ in range(args.rounds):
                for name, e in embedders.items():
                    t0 = time.perf_counter()
                    e.encode(texts, ins)
                    times[name].append(time.perf_counter() - t0)
            row = {"batch": batch, "tokens": tokens}
            for name, ts in times.items():
                ratio = np.median(np.array(times[base]) / np.array(ts))  # > 1: faster than the baseline
                row[name] = {
                    "texts_s": round(batch / float(np.median(ts)), 1),
                    "vs_" + base: round(float(ratio), 3),
                }
            results.append(row)
            print(json.dumps(row), flush=True)
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
