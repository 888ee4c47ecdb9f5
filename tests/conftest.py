"""Shared fixtures: tiny seeded checkpoints and their exported bundles (built once per session)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tiny


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """checkpoints(name): the tiny checkpoint `tiny.BUILDERS[name]` builds, made once per session."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = tiny.BUILDERS[name](tmp_path_factory.mktemp("ckpt") / name)
        return built[name]

    return get


@pytest.fixture
def checkpoint(request: pytest.FixtureRequest, checkpoints: Callable[[str], Path]) -> Path:
    """One architecture's checkpoint: parametrize with `indirect=True` over names of tiny.BUILDERS."""
    return checkpoints(request.param)


@pytest.fixture(scope="session")
def tiny_roberta_dir(checkpoints: Callable[[str], Path]) -> Path:
    return checkpoints("roberta-mlm")


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


@pytest.fixture(scope="session")
def minilm_fp32(checkpoints: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2's real weights (MLM head seeded, tied to the table), exported once per
    session for the int8 and int4 real-weight tests."""
    from inbedder.export import export_bundle

    out = tmp_path_factory.mktemp("minilm") / "fp32"
    export_bundle(str(checkpoints("minilm-mlm")), out)
    return out
