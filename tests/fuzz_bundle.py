"""Corrupted-bundle fuzz: random byte flips in each file of a bundle, then a load and an encode.

Every case must end in a loaded bundle (finite or not: damaged weights may give NaN) or a
`BundleError` (an `InbedderError`: one line through the CLI); anything else, or a crash of the
process, is a failure. With `--rehash` (the default) the manifest's sha256 and size are updated
after each flip, so the damage reaches the parsers (a hostile bundle), not only the checksum.

    python tests/fuzz_bundle.py BUNDLE --cases 300 [--seed 0]   # cases per file
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path


def run(bundle: Path, cases: int, seed: int = 0, rehash: bool = True) -> dict[str, dict[str, int]]:
    import numpy as np

    from inbedder import Embedder
    from inbedder.errors import InbedderError
    from inbedder.runtime.bundle import MANIFEST_NAME, bundle_root

    src = bundle_root(bundle)
    rng = random.Random(seed)
    # The bundle's own files: the manifest and what it lists (not the verified-stamp the runtime
    # may have left beside them, whose damage only costs a full hash).
    listed = json.loads((src / MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
    names = sorted([MANIFEST_NAME, *listed])
    outcomes: dict[str, Counter[str]] = {n: Counter() for n in names}
    work = Path(tempfile.mkdtemp(prefix="inbedder-fuzz-"))
    try:
        for name in names:
            for _ in range(cases):
                case = work / "b"
                shutil.rmtree(case, ignore_errors=True)
                shutil.copytree(src, case)
                target = case / name
                data = bytearray(target.read_bytes())
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] ^= rng.randint(1, 255)
                target.write_bytes(bytes(data))
                if rehash and name != MANIFEST_NAME:
                    mp = case / MANIFEST_NAME
                    raw = json.loads(mp.read_text(encoding="utf-8"))
                    raw["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                    mp.write_text(json.dumps(raw), encoding="utf-8")
                try:
                    emb = Embedder(case)
                except InbedderError:
                    outcomes[name]["refused at load"] += 1
                    continue
                try:
                    v = emb.encode(["I love cats!", "", "Paris " * 40], "What?")
                except InbedderError:
                    outcomes[name]["refused at encode"] += 1
                    continue
                outcomes[name]["loaded, finite" if np.isfinite(v).all() else "loaded, not finite"] += 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {n: dict(c) for n, c in outcomes.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--cases", type=int, default=100, help="cases per file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-rehash", action="store_true", help="leave the checksums (every flip is refused)")
    args = ap.parse_args()
    print(json.dumps(run(args.bundle, args.cases, args.seed, rehash=not args.no_rehash)))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
