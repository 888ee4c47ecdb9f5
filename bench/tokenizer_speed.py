"""Single-thread encode throughput: the native tokenizer (`inbedder-tokenize --bench`) against
`tokenizers`, on the parity test's corpus (tests/corpus.py) for each tokenizer of
tests/tokenizer_zoo.py.

    python bench/tokenizer_speed.py [--names gpt2-roberta,minilm,t5-unigram,llama-bpe] [--passes 3]
                             [--strings 20000] [--build build/bench]

Both sides encode the same records (single texts and pairs, no truncation, special tokens added)
`--passes` times in one process, single thread; native times encode in-process, excluding its
JSON I/O; `tokenizers` is timed through its Python binding (`Tokenizer.encode`, which is what
runtime/prompt.py calls). Prints the machine's CPU flags, both figures and the ratio. (Not named
bench/tokenize.py: as the script's directory leads sys.path, that would shadow the stdlib module.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "(unknown)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def build(build_dir: Path) -> Path:
    subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release"],
        check=True,
        capture_output=True,
    )
    subprocess.run(["cmake", "--build", str(build_dir), "-j2"], check=True, capture_output=True)
    return build_dir / "native" / "tokenizers" / "inbedder-tokenize"


def bench_python(path: Path, recs: list[dict], passes: int) -> float:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    t0 = time.perf_counter()
    for _ in range(passes):
        for r in recs:
            tok.encode(r["text"], r.get("pair"))
    return time.perf_counter() - t0


def bench_native(tool: Path, path: Path, recs: list[dict], passes: int) -> float:
    data = "\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n"
    done = subprocess.run(
        [str(tool), str(path), "--bench", str(passes)],
        input=data.encode("utf-8"),
        capture_output=True,
        check=True,
    )
    return json.loads(done.stdout)["seconds"]


def main() -> None:
    import corpus
    import tokenizer_zoo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", default="gpt2-roberta,minilm,t5-unigram,llama-bpe")
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--strings", type=int, default=20_000)
    ap.add_argument("--build", type=Path, default=ROOT / "build" / "bench")
    args = ap.parse_args()

    tool = build(args.build)
    print(f"cpu: {cpu_model()}")
    print(f"cpu flags: {cpu_flags()}")
    print(f"single thread, {args.passes} passes over {args.strings} strings per tokenizer\n")
    print(f"{'tokenizer':<14} {'MB':>6} {'tokenizers MB/s':>16} {'native MB/s':>12} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names.split(","):
            path = tokenizer_zoo.build(name, Path(tmp))
            specials = [a["content"] for a in json.loads(path.read_text(encoding="utf-8"))["added_tokens"]]
            recs = [
                {k: v for k, v in r.items() if k in ("text", "pair")}
                for r in corpus.records(corpus.strings(args.strings, specials))
            ]
            mb = sum(len(r["text"].encode()) + len(r.get("pair", "").encode()) for r in recs) / 1e6
            py = bench_python(path, recs, args.passes)
            nat = bench_native(tool, path, recs, args.passes)
            total = mb * args.passes
            print(f"{name:<14} {mb:6.2f} {total / py:16.2f} {total / nat:12.2f} {py / nat:6.2f}")


if __name__ == "__main__":
    main()
