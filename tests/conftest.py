"""Shared fixtures: tiny seeded checkpoints and their exported bundles (built once per session)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiny


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.tiny_roberta_mlm(tmp_path_factory.mktemp("ckpt") / "tiny-roberta")


@pytest.fixture(scope="session")
def masked_bundle(tiny_roberta_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inbedder.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "masked-answer"
    export_bundle(str(tiny_roberta_dir), out, recipe="masked-answer")
    return out


@pytest.fixture(scope="session")
def pair_bundle(tiny_roberta_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from inbedder.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "masked-answer-pair"
    export_bundle(str(tiny_roberta_dir), out, recipe="masked-answer-pair")
    return out
