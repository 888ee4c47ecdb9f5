"""Open-to-first-vector: how long from `Embedder(bundle)` to the first embedding, per verify mode.

Scope: each measurement is a fresh process (files in the page cache, as when a desktop app starts
again), modes alternating, `--repeats` each; printed are the best and the median. Per process:
`import inbedder` (reported apart), `Embedder(...)` (manifest, checksums, tokenizer, sessions),
the first `encode` of one short text. Mode `cache` is `stamp` with a session cache
(`session_cache=`, filled by one open before the timed ones; runtime/session_cache.py). With
`--native BUILD`: the native runtime's `inbedder-embed` on one text, the whole process timed
(`native`, and `native+cache` with `--session-cache` on the same cache). Optionally CTranslate2's
`Encoder(...)` + first forward on its converted model (`bench/ct2.py --setup` makes both).

    .venv/bin/python bench/open.py --bundle /tmp/inbedder-ct2/int8 [--modes full,stamp,none,cache]
        [--native build/pytest]
        [--ct2 /tmp/inbedder-ct2/ct2-int8 --ct2-python /tmp/inbedder-ct2/ct2-venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXT, INSTRUCTION = "I love cats and dogs.", "What animal?"

OURS = """
import json, sys, time
t0 = time.perf_counter()
from inbedder import Embedder
t1 = time.perf_counter()
mode, cache = sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else None)
emb = Embedder(sys.argv[1], threads=2, verify=mode, session_cache=cache)
t2 = time.perf_counter()
emb.encode([{text!r}], {instruction!r})
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "open_s": t2 - t1, "first_vector_s": t3 - t1}}))
"""

CT2 = """
import json, sys, time
t0 = time.perf_counter()
import ctranslate2
t1 = time.perf_counter()
enc = ctranslate2.Encoder(sys.argv[1], device="cpu", compute_type="int8", intra_threads=2)
t2 = time.perf_counter()
enc.forward_batch([[0, 100, 200, 300, 2]])
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "first_vector_s": t3 - t1}))
"""


# The native tool's whole process, timed from a Python parent (no Python inside the timing).
NATIVE = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
subprocess.run(sys.argv[1:], check=True)
t1 = time.perf_counter()
os.remove(sys.argv[sys.argv.index("-o") + 1])
print(json.dumps({"import_s": 0.0, "open_s": t1 - t0, "first_vector_s": t1 - t0}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--modes", default="full,stamp")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ct2", type=Path, default=None, help="a CTranslate2 model directory")
    ap.add_argument("--ct2-python", default=None)
    ap.add_argument("--native", type=Path, default=None, help="a native build directory")
    args = ap.parse_args()
    ours = OURS.format(text=TEXT, instruction=INSTRUCTION)
    work = Path(tempfile.mkdtemp(prefix="inbedder-open-"))
    cache = work / "session-cache"
    # One open first: writes the bundle's verified-stamp (an ordinary open does the same).
    subprocess.run([sys.executable, "-c", ours, str(args.bundle), "stamp"], check=True, capture_output=True)
    time.sleep(3.5)  # past the stamp's racy window for files written just before
    subprocess.run([sys.executable, "-c", ours, str(args.bundle), "stamp"], check=True, capture_output=True)
    runs: dict[str, list[dict]] = {}
    subjects = []
    for m in args.modes.split(","):
        extra = ["stamp", str(cache)] if m == "cache" else [m]
        subjects.append((m, [sys.executable, "-c", ours, str(args.bundle), *extra]))
        if m == "cache":  # fill the cache
            subprocess.run(subjects[-1][1], check=True, capture_output=True)
    if args.native is not None:
        tool = args.native / "native" / "runtime" / "inbedder-embed"
        (work / "in.txt").write_text(TEXT + "\n", encoding="utf-8")
        cmd = [str(tool), "-m", str(args.bundle), "-i", INSTRUCTION, str(work / "in.txt"), "--threads", "2"]
        cmd += ["-o", str(work / "out.npy"), "-q"]
        subjects.append(("native", [sys.executable, "-c", NATIVE, *cmd]))
        subjects.append(("native+cache", [sys.executable, "-c", NATIVE, *cmd, "--session-cache", str(cache)]))
        subprocess.run([*cmd, "--session-cache", str(cache)], check=True, capture_output=True)
        (work / "out.npy").unlink()
    if args.ct2 is not None:
        subjects.append(("ct2", [args.ct2_python or sys.executable, "-c", CT2, str(args.ct2)]))
    for _ in range(args.repeats):
        for name, cmd in subjects:  # alternating
            r = subprocess.run(cmd, check=True, capture_output=True, text=True)
            runs.setdefault(name, []).append(json.loads(r.stdout.strip().splitlines()[-1]))
    for name, rs in runs.items():
        fv = [r["first_vector_s"] for r in rs]
        op = [r["open_s"] for r in rs]
        imp = [r["import_s"] for r in rs]
        med = statistics.median
        print(
            f"{name:12s} open-to-first-vector best {min(fv):.3f} s median {med(fv):.3f} s | "
            f"open best {min(op):.3f} median {med(op):.3f} | import median {med(imp):.3f}"
        )


if __name__ == "__main__":
    main()
