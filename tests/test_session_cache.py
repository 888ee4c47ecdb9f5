"""The session cache (runtime/session_cache.py): a graph saved as onnxruntime optimized it, weights
pre-packed, opened on later opens instead of the bundle's graph, with the same outputs bit for bit;
damaged, stale or foreign entries rebuilt; failures to write never failing the open.

About 25 s on a 2-core machine (tiny bundles of every family, the int8 ones quantized here).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from evalsets import SMALL

from inbedder import BundleError, Embedder, InputError
from inbedder.cli import main
from inbedder.export import export_bundle
from inbedder.quantize import quantize_bundle
from inbedder.runtime import session as session_mod
from inbedder.runtime import session_cache as cache_mod
from inbedder.runtime.session_cache import DATA_NAME, ENTRY_NAME, GRAPH_NAME

TEXTS = ["a cat sat on the mat", "", "the committee met on a rainy Tuesday to review the budget"]


@pytest.fixture(scope="module")
def bundles(checkpoints: Callable[[str], Path], masked_bundle: Path, tmp_path_factory) -> dict[str, Path]:
    """One bundle per family and precision the cache must carry: fp32 and per-token int8 masked
    LM, a causal LM (decoder with a KV cache: two inputs sets, one graph), INSTRUCTOR, a
    sentence encoder."""
    root = tmp_path_factory.mktemp("cache-bundles")
    out = {"masked-fp32": masked_bundle}
    quantize_bundle(masked_bundle, root / "masked-int8", **SMALL)
    out["masked-int8"] = root / "masked-int8"
    for name, ckpt in (("opt", "opt"), ("instructor", "t5-instructor"), ("sentence", "bert-sentence-mean")):
        export_bundle(str(checkpoints(ckpt)), root / name)
        out[name] = root / name
    return out


def _opened(monkeypatch) -> list[Path]:
    """The graph files sessions are created from, in order (spying on session._create)."""
    seen: list[Path] = []
    real = session_mod._create

    def spy(path, *a, **kw):
        seen.append(Path(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(session_mod, "_create", spy)
    return seen


def _run(emb: Embedder) -> tuple[np.ndarray, list[str] | None]:
    if emb.pipeline.answers:
        vecs, answers = emb.encode(TEXTS, "What is it about?", return_answers=True)
        return vecs, answers
    instruction = "What is it about?" if emb.pipeline.needs_instruction else None
    return emb.encode(TEXTS, instruction), None


def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("name", ["masked-fp32", "masked-int8", "opt", "instructor", "sentence"])
def test_cached_open_is_bit_identical(bundles, name, tmp_path, monkeypatch):
    bundle, cache = bundles[name], tmp_path / "cache"
    vecs, answers = _run(Embedder(bundle))
    opened = _opened(monkeypatch)

    first = Embedder(bundle, session_cache=cache)  # fills the cache while it opens
    assert opened == [bundle / "model.onnx"]
    (entry,) = _entries(cache)
    assert sorted(p.name for p in entry.iterdir()) == sorted([ENTRY_NAME, GRAPH_NAME, DATA_NAME])
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no staging left
    v1, a1 = _run(first)

    second = Embedder(bundle, session_cache=cache, threads=1)  # thread count is not in the key
    assert opened[1:] == [entry / GRAPH_NAME]
    v2, a2 = _run(second)
    assert np.array_equal(vecs, v1) and np.array_equal(vecs, v2)
    assert answers == a1 == a2


def test_entry_is_keyed_on_graph_runtime_cpu_and_settings(bundles, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    Embedder(bundles["masked-fp32"], session_cache=cache)
    Embedder(bundles["masked-int8"], session_cache=cache)  # another graph: another entry
    assert len(_entries(cache)) == 2
    monkeypatch.setattr(cache_mod.ort, "__version__", "0.0.0-other")
    Embedder(bundles["masked-fp32"], session_cache=cache)
    monkeypatch.undo()
    monkeypatch.setattr(cache_mod, "cpu_identity", lambda: {"machine": "other"})
    Embedder(bundles["masked-fp32"], session_cache=cache)
    assert len(_entries(cache)) == 4
    keys = [json.loads((e / ENTRY_NAME).read_text())["key"] for e in _entries(cache)]
    assert {k["onnxruntime"] for k in keys} >= {"0.0.0-other"}
    assert {"machine": "other"} in [k["cpu"] for k in keys]
    assert all(k["settings"]["graph_optimization_level"] == "ORT_ENABLE_ALL" for k in keys)


def _damage_data(entry: Path) -> None:
    with open(entry / DATA_NAME, "ab") as f:
        f.write(b"\0")


def _damage_entry_json(entry: Path) -> None:
    (entry / ENTRY_NAME).write_text("{not json")


def _foreign_key(entry: Path) -> None:
    doc = json.loads((entry / ENTRY_NAME).read_text())
    doc["key"]["graph"] = {"model.onnx": {"sha256": "0" * 64, "bytes": 1}}
    (entry / ENTRY_NAME).write_text(json.dumps(doc))


def _missing_data(entry: Path) -> None:
    (entry / DATA_NAME).unlink()


def _missing_entry_json(entry: Path) -> None:
    """A directory with the entry's name but no entry.json (not one a commit made): it must not
    block every later commit's rename."""
    (entry / ENTRY_NAME).unlink()


def _extra_file(entry: Path) -> None:
    (entry / "stray.bin").write_bytes(b"x")


def _unloadable_graph(entry: Path) -> None:
    """A graph onnxruntime cannot parse whose entry.json vouches for it: only opening tells."""
    (entry / GRAPH_NAME).write_bytes(b"not an onnx graph")
    doc = json.loads((entry / ENTRY_NAME).read_text())
    doc["files"][GRAPH_NAME] = cache_mod.file_key(os.lstat(entry / GRAPH_NAME))
    (entry / ENTRY_NAME).write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("damage", "logged"),
    [
        (_damage_data, "graph.onnx.data changed since it was written"),
        (_damage_entry_json, "entry.json cannot be read"),
        (_foreign_key, "entry.json holds another key"),
        (_missing_data, "are not the ones recorded"),
        (_missing_entry_json, "entry.json is missing"),
        (_extra_file, "are not the ones recorded"),
        (_unloadable_graph, "onnxruntime cannot open it"),
    ],
)
def test_damaged_entry_is_rebuilt(bundles, damage, logged, tmp_path, monkeypatch, caplog):
    bundle, cache = bundles["masked-int8"], tmp_path / "cache"
    want = _run(Embedder(bundle))[0]
    Embedder(bundle, session_cache=cache)
    (entry,) = _entries(cache)
    damage(entry)
    opened = _opened(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="inbedder"):
        emb = Embedder(bundle, session_cache=cache)
    assert logged in caplog.text and "rebuild" in caplog.text
    assert opened[-1] == bundle / "model.onnx"  # built from the bundle again
    assert np.array_equal(_run(emb)[0], want)
    assert _entries(cache) == [entry]
    opened.clear()
    again = Embedder(bundle, session_cache=cache)  # the rebuilt entry is used
    assert opened == [entry / GRAPH_NAME]
    assert np.array_equal(_run(again)[0], want)


def test_failed_write_leaves_no_entry_and_the_open_works(bundles, tmp_path, monkeypatch, caplog):
    bundle, cache = bundles["masked-fp32"], tmp_path / "cache"

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_mod.os, "rename", full_disk)
    with caplog.at_level(logging.WARNING, logger="inbedder"):
        emb = Embedder(bundle, session_cache=cache)
    assert "not written" in caplog.text and "No space left" in caplog.text
    assert list(cache.iterdir()) == []  # neither an entry nor a staging directory
    assert np.array_equal(_run(emb)[0], _run(Embedder(bundle))[0])


def test_a_graph_that_fails_to_open_leaves_no_staging(masked_bundle, tmp_path):
    bundle, cache = tmp_path / "bundle", tmp_path / "cache"
    shutil.copytree(masked_bundle, bundle)
    graph = bundle / "model.onnx"
    graph.write_bytes(b"\xff" * graph.stat().st_size)  # same size, verify="none": onnxruntime refuses
    with pytest.raises(BundleError, match="onnxruntime cannot load this graph"):
        Embedder(bundle, verify="none", session_cache=cache)
    assert list(cache.iterdir()) == []


def test_an_entry_another_process_wrote_first_is_kept(bundles, tmp_path, monkeypatch, caplog):
    bundle, cache = bundles["masked-fp32"], tmp_path / "cache"
    Embedder(bundle, session_cache=cache)
    (entry,) = _entries(cache)
    before = cache_mod.file_key(os.lstat(entry / DATA_NAME))
    # As if this process had looked before the other one put its entry in place.
    monkeypatch.setattr(cache_mod.CacheSlot, "lookup", lambda self: None)
    with caplog.at_level(logging.WARNING, logger="inbedder"):
        Embedder(bundle, session_cache=cache)
    assert caplog.text == ""
    assert list(cache.iterdir()) == [entry]
    assert cache_mod.file_key(os.lstat(entry / DATA_NAME)) == before


def test_staging_left_by_a_killed_open_is_removed_once_old(bundles, tmp_path):
    bundle, cache = bundles["masked-fp32"], tmp_path / "cache"
    Embedder(bundle, session_cache=cache)
    (entry,) = _entries(cache)
    old = cache / f".{entry.name}.tmp-dead0001"
    fresh = cache / f".{entry.name}.tmp-live0002"  # another process's, still being written
    for d in (old, fresh):
        d.mkdir()
        (d / GRAPH_NAME).write_bytes(b"half")
    hour_ago = os.stat(old).st_mtime - cache_mod.STALE_STAGING_S - 60
    os.utime(old, (hour_ago, hour_ago))
    cache_mod.CacheSlot(key={}, entry=entry).staging()
    names = {p.name for p in cache.iterdir()}
    assert old.name not in names and fresh.name in names and entry.name in names


def test_cpu_identity_names_the_processor():
    ident = cache_mod.cpu_identity()
    assert ident["machine"]
    if Path("/proc/cpuinfo").exists():
        assert len(ident.get("flags", ident.get("Features", ""))) == 64  # hashed


@pytest.mark.parametrize("bad", [123, True, ""])
def test_bad_cache_argument_is_refused(masked_bundle, bad):
    with pytest.raises(InputError, match="session_cache must be a directory path or None"):
        Embedder(masked_bundle, session_cache=bad)


def test_cache_path_that_is_a_file_is_refused(masked_bundle, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match=r"session_cache .* is not a directory"):
        Embedder(masked_bundle, session_cache=f)


def test_cache_directory_that_cannot_be_made_is_refused(masked_bundle, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"cannot be used as a directory \(Not a directory\)"):
        Embedder(masked_bundle, session_cache=tmp_path / "file" / "cache")


def test_cli_session_cache(masked_bundle, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a cat\nthe rain\n")
    cache = tmp_path / "cache"
    for run in ("a", "b"):
        argv = ["embed", "-m", str(masked_bundle), "-i", "q", str(src), "-o", str(tmp_path / run)]
        assert main([*argv, "--session-cache", str(cache)]) == 0
    assert len(_entries(cache)) == 1
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


# -- shared with the native runtime ------------------------------------------------------------
def _native_embed(bundle: Path, tmp: Path, *flags: str) -> np.ndarray:
    from native import build_native

    tool = build_native() / "native" / "runtime" / "inbedder-embed"
    src = tmp / "in.txt"
    src.write_text("a cat sat on the mat\nthe committee met on a rainy Tuesday\n", encoding="utf-8")
    out = tmp / f"native-{len(list(tmp.glob('native-*')))}.npy"
    done = subprocess.run(
        [str(tool), "-m", str(bundle), "-i", "What is it about?", str(src), "-o", str(out), "-q", *flags],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return np.load(out)


def test_entries_are_shared_between_runtimes(bundles, tmp_path, monkeypatch):
    bundle = bundles["masked-int8"]
    plain = _native_embed(bundle, tmp_path)
    py_cache, native_cache = tmp_path / "py", tmp_path / "native"

    Embedder(bundle, session_cache=py_cache)  # Python writes, the native runtime reads
    (entry,) = _entries(py_cache)
    before = {p.name: cache_mod.file_key(os.lstat(p)) for p in entry.iterdir()}
    assert np.array_equal(_native_embed(bundle, tmp_path, "--session-cache", str(py_cache)), plain)
    assert {p.name: cache_mod.file_key(os.lstat(p)) for p in entry.iterdir()} == before
    assert _entries(py_cache) == [entry]

    # The native runtime writes (the same key: the same entry name), Python reads.
    assert np.array_equal(_native_embed(bundle, tmp_path, "--session-cache", str(native_cache)), plain)
    assert [p.name for p in _entries(native_cache)] == [entry.name]
    opened = _opened(monkeypatch)
    emb = Embedder(bundle, session_cache=native_cache)
    assert opened == [native_cache / entry.name / GRAPH_NAME]
    assert np.array_equal(_run(emb)[0], _run(Embedder(bundle))[0])
