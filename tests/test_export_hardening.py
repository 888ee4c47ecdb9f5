"""Export and quantize never lose the last good bundle, and clean up after signals (issue 11,
items 2 and 6)."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inbedder import Embedder


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _interrupt_quantization(monkeypatch: pytest.MonkeyPatch) -> None:
    import inbedder.quantize.core as qcore

    def interrupted(*a, **kw):
        raise KeyboardInterrupt  # Ctrl-C (or SIGTERM through the CLI) while quantizing

    monkeypatch.setattr(qcore, "quantize_int8", interrupted)  # --int8-method dynamic
    monkeypatch.setattr(qcore, "quantize_int8_invariant", interrupted)  # per-token (the default)


# -- item 2 ---------------------------------------------------------------------------------------
def test_failed_int8_overwrite_keeps_the_previous_bundle(
    tiny_roberta_dir: Path, pair_bundle: Path, tmp_path: Path, monkeypatch
):
    from inbedder.export import export_bundle

    out = tmp_path / "b"
    shutil.copytree(pair_bundle, out)
    before = _snapshot(out)
    _interrupt_quantization(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(str(tiny_roberta_dir), out, recipe="masked-answer", precision="int8", overwrite=True)
    assert _snapshot(out) == before  # not the new fp32 export: the old bundle, byte for byte
    assert Embedder(out).manifest.recipe == "masked-answer-pair"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_interrupted_int8_export_leaves_nothing(tiny_roberta_dir: Path, tmp_path: Path, monkeypatch):
    from inbedder.export import export_bundle

    _interrupt_quantization(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(str(tiny_roberta_dir), tmp_path / "new", recipe="masked-answer", precision="int8")
    assert list(tmp_path.iterdir()) == []  # no loadable fp32 bundle, no temporary directory


# -- item 6 ---------------------------------------------------------------------------------------
def _slow_export(ckpt: Path, out: Path, ready: Path) -> subprocess.Popen[str]:
    """`inbedder export` in a child process that stops inside the build, once its temporary
    directory exists, and writes that directory's path to `ready`."""
    script = f"""
import pathlib, sys, time
import inbedder.export.core as core
def slow(family, work, **kw):
    pathlib.Path({str(ready)!r}).write_text(str(work))
    time.sleep(300)
core.build = slow
from inbedder.cli import main
sys.exit(main(["export", {str(ckpt)!r}, {str(out)!r}]))
"""
    return subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)


def _wait_ready(p: subprocess.Popen[str], ready: Path) -> Path:
    deadline = time.monotonic() + 180
    while not ready.exists():
        assert p.poll() is None, p.stderr.read() if p.stderr else ""
        assert time.monotonic() < deadline, "the child never reached the build"
        time.sleep(0.1)
    time.sleep(0.2)
    work = Path(ready.read_text())
    assert work.is_dir() and work.name.startswith(".out.export-")
    return work


def test_sigterm_during_export_removes_its_temporary_directory(tiny_roberta_dir: Path, tmp_path: Path):
    ready = tmp_path / "ready"
    p = _slow_export(tiny_roberta_dir, tmp_path / "out", ready)
    work = _wait_ready(p, ready)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=60)
    assert rc == 130, (rc, p.stderr.read() if p.stderr else "")
    assert not work.exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ready"]


def test_next_export_removes_what_a_killed_one_left(
    tiny_roberta_dir: Path, tmp_path: Path, monkeypatch, caplog
):
    import inbedder.export.core as core
    from inbedder.export import export_bundle

    ready = tmp_path / "ready"
    p = _slow_export(tiny_roberta_dir, tmp_path / "out", ready)
    work = _wait_ready(p, ready)
    p.kill()  # SIGKILL: no handler runs
    p.wait(timeout=60)
    assert work.is_dir()  # left behind
    other = tmp_path / ".out.export-alive"  # a live run's directory (its owner lock held) stays
    locked = _hold_owner_lock(other)

    def stop(*a, **kw):
        raise RuntimeError("stop after the clean-up")

    monkeypatch.setattr(core, "build", stop)
    with caplog.at_level(logging.WARNING, logger="inbedder"), pytest.raises(RuntimeError, match="stop"):
        export_bundle(str(tiny_roberta_dir), tmp_path / "out")
    assert not work.exists() and other.is_dir()
    assert f"removed {work}" in caplog.text and f"process {p.pid}" in caplog.text
    locked.close()


def _hold_owner_lock(d: Path):
    import fcntl

    from inbedder.runtime.bundle import OWNER_NAME

    d.mkdir()
    f = open(d / OWNER_NAME, "w")  # noqa: SIM115 - held until the test closes it
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    return f
