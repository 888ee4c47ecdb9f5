"""Cost of one over-long text: memory and time of `Embedder.encode([text])` for texts of 10 KB,
1 MB and 10 MB (Latin words and random Unicode), with the bounded tokenization (the default) and,
for comparison, the full tokenization it replaced (`prompts.bounded = False`).

    python bench/long_text.py --bundle BUNDLE [--sizes 10000 1000000 10000000] [--unbounded-max 1000000]

Each measurement runs in its own subprocess: peak RSS (VmHWM, reset after loading the bundle and
building the text) minus the RSS at that point, and the median wall time of 3 encodes (1 for the
full tokenization past 1 MB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, random, statistics, sys, time
from inbedder import Embedder

bundle, script, size, bounded = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

emb = Embedder(bundle)
emb.pipeline.prompts.bounded = bounded
rng = random.Random(0)
if script == "latin":
    words = "the flight from Paris was late and I missed my meeting in Chicago".split()
    text = " ".join(rng.choice(words) for _ in range(size // 4))[:size]
else:
    pools = [(0x20, 0x7E), (0xA0, 0x2FF), (0x400, 0x4FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF)]
    pools.append((0x600, 0x6FF))
    chars = []
    while len(chars) < size:
        lo, hi = rng.choice(pools)
        chars.extend(chr(rng.randint(lo, hi)) for _ in range(8))
        chars.append(" ")
    text = "".join(chars[:size])
    del chars
emb.encode(["warm-up"], "What?")
with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM: the peak of building the text is not counted
    f.write("5")
base = rss("VmRSS")
times = []
for _ in range(3 if size <= 1_000_000 or bounded else 1):
    t = time.perf_counter()
    emb.encode([text], "What happened?")
    times.append(time.perf_counter() - t)
print(json.dumps({"peak_mb": rss("VmHWM") - base, "seconds": statistics.median(times)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000, 10_000_000])
    ap.add_argument("--unbounded-max", type=int, default=1_000_000, help="largest size run unbounded")
    args = ap.parse_args()
    print("| text | chars | bounded: peak MB over base | bounded: s | full tokenization: peak MB | full: s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for script in ("latin", "random"):
        for size in args.sizes:
            row = []
            for bounded in ("1", "0"):
                if bounded == "0" and size > args.unbounded_max:
                    row.append(None)
                    continue
                r = subprocess.run(
                    [sys.executable, "-c", CHILD, args.bundle, script, str(size), bounded],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row.append(json.loads(r.stdout.strip().splitlines()[-1]))
            cells = [f"{r['peak_mb']:.1f} | {r['seconds']:.4f}" if r else "- | -" for r in row]
            print(f"| {script} | {size:,} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
