"""By hand: replace a bundle between two versions in a writer thread while the main thread loads
it N times; count loads that gave one version's vector ("ok"), neither ("mix") or an error.

    python tests/race_bundle.py BUNDLE_A BUNDLE_B 300     # A, B: bundles of different recipes

(`tests/test_bundle_hardening.py::test_replace_while_loading_gives_one_version` is the CI-sized
version.)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from inbedder import Embedder
from inbedder.runtime.bundle import bundle_root, load_manifest, write_bundle


def _populate(src: Path):
    root = bundle_root(src)

    def populate(d: Path) -> None:
        for name in ("model.onnx", "model.onnx.data", "tokenizer.json"):
            shutil.copy(root / name, d / name)

    return populate


def main() -> None:
    a, b, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    versions = {}
    for src in (a, b):
        e = Embedder(src)
        versions[e.manifest.recipe] = (load_manifest(src), e.encode(["I love cats!"], "What animal?")[0], src)
    first, second = list(versions.values())
    target = Path(tempfile.mkdtemp()) / "live"
    write_bundle(target, first[0], _populate(first[2]))
    stop, writes = threading.Event(), [0]

    def writer() -> None:
        while not stop.is_set():
            m, _, src = (second, first)[writes[0] % 2]
            write_bundle(target, m, _populate(src), overwrite=True)
            writes[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    out: Counter[str] = Counter()
    try:
        for _ in range(n):
            try:
                e = Embedder(target)
                v = e.encode(["I love cats!"], "What animal?")[0]
                out["ok" if np.allclose(v, versions[e.manifest.recipe][1], atol=1e-5) else "mix"] += 1
            except Exception as ex:
                out[f"error {type(ex).__name__}"] += 1
    finally:
        stop.set()
        t.join()
        shutil.rmtree(target.parent, ignore_errors=True)
    print(dict(out), "during", writes[0], "replaces")


if __name__ == "__main__":
    main()
