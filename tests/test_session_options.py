"""The CPU thread-pool options (runtime/session.py `ThreadOptions`) reach every onnxruntime session,
the default thread count follows the cores the process may use, and bad values are clear errors.

About 2 s on a quiet 2-core machine (the tiny masked bundle, opened a few times).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from inbedder import Embedder, InputError
from inbedder.cli import main
from inbedder.runtime import session as session_mod
from inbedder.runtime.session import ThreadOptions, available_cores


def _settings(emb: Embedder) -> list[tuple[int, str, str]]:
    out = []
    for s in emb.pipeline.sessions.values():
        o = s.get_session_options()
        out.append(
            (
                o.intra_op_num_threads,
                o.get_session_config_entry("session.intra_op.allow_spinning"),
                o.get_session_config_entry("session.inter_op.allow_spinning"),
            )
        )
    return out


def test_options_reach_every_session(masked_bundle: Path):
    on = Embedder(masked_bundle, threads=1, spinning=True)
    assert _settings(on) == [(1, "1", "1")]
    off = Embedder(masked_bundle, threads=2)
    assert _settings(off) == [(2, "0", "0")]  # spinning is off by default
    texts = ["a cat sat", "the committee met on a rainy day"]
    np.testing.assert_allclose(on.encode(texts, "q"), off.encode(texts, "q"), atol=1e-5)


def test_default_threads_are_the_cores_this_process_may_use(masked_bundle: Path, monkeypatch):
    assert available_cores() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(session_mod.os, "sched_getaffinity", lambda pid: {0})
    assert available_cores() == 1 and ThreadOptions().intra_op_threads == 1
    assert _settings(Embedder(masked_bundle)) == [(1, "0", "0")]
    monkeypatch.setattr(session_mod.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert _settings(Embedder(masked_bundle)) == [(3, "0", "0")]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"threads": 0}, "threads must be a positive int"),
        ({"threads": -2}, "threads must be a positive int"),
        ({"threads": 1.5}, "threads must be a positive int"),
        ({"threads": True}, "threads must be a positive int"),
        ({"threads": "2"}, "threads must be a positive int"),
        ({"spinning": "yes"}, "spinning must be True or False"),
        ({"spinning": 1}, "spinning must be True or False"),
    ],
)
def test_bad_thread_options_are_clear_errors(masked_bundle: Path, kw, match):
    with pytest.raises(InputError, match=match):
        Embedder(masked_bundle, **kw)


def test_cli_thread_options(masked_bundle: Path, tmp_path: Path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("hello\nworld\n")
    out = tmp_path / "o.npy"
    args = ["embed", "-m", str(masked_bundle), "-i", "q", str(src), "-o", str(out), "-q"]
    assert main([*args, "--threads", "1", "--spinning"]) == 0
    first = np.load(out)
    assert main([*args, "--threads", "1", "--no-spinning", "--overwrite"]) == 0
    np.testing.assert_allclose(np.load(out), first, atol=1e-5)
    capsys.readouterr()
    assert main([*args, "--threads", "0", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "threads must be a positive int" in err and "Traceback" not in err
