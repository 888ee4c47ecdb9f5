"""A bundle is a sealed unit (issue 11, items 1, 3 and 10): it reads only its own files, every
manifest field is checked at load, and a bundle replaced while others load it is seen whole."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inbedder import BundleError, Embedder, load_manifest
from inbedder.cli import main
from inbedder.runtime.bundle import MANIFEST_NAME, POINTER_NAME, bundle_root, write_bundle


@pytest.fixture
def copy(masked_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(masked_bundle, dst)
    return dst


def _edit(bundle: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    mp = bundle / MANIFEST_NAME
    raw = json.loads(mp.read_text())
    change(raw)
    mp.write_text(json.dumps(raw))


def _refused(bundle: Path, match: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(BundleError, match=match) as e:
        Embedder(bundle)
    capsys.readouterr()
    assert main(["info", str(bundle)]) == 2  # `info` runs the same checks
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    return str(e.value)


# -- item 1: a bundle reads only its own files ---------------------------------------------------
def _graph_file(raw: dict[str, Any], name: str) -> None:
    raw["files"][name] = raw["files"].pop("model.onnx")
    raw["graphs"]["encoder"]["file"] = name


@pytest.mark.parametrize(
    "change",
    [
        lambda raw: _graph_file(raw, "/etc/passwd"),
        lambda raw: _graph_file(raw, "../b/model.onnx"),
        lambda raw: _graph_file(raw, "sub/../model.onnx"),
        lambda raw: _graph_file(raw, "."),
        lambda raw: _graph_file(raw, ""),
        lambda raw: raw["graphs"]["encoder"].update(data="../outside.data"),
        lambda raw: raw.update(tokenizer_file="/etc/hostname"),
        lambda raw: raw["files"].update({"../secret": {"sha256": "0" * 64, "bytes": 1}}),
        lambda raw: raw["files"].update({"C:\\secret": {"sha256": "0" * 64, "bytes": 1}}),
    ],
)
def test_paths_outside_the_bundle_are_refused(copy: Path, capsys, change):
    (copy.parent / "secret").write_text("x" * 12345)
    _edit(copy, change)
    msg = _refused(copy, "plain file name inside the bundle", capsys)
    assert "12345" not in msg


def test_symlinks_are_refused(copy: Path, tmp_path: Path, capsys):
    outside = tmp_path / "elsewhere.json"
    shutil.copy(copy / "tokenizer.json", outside)  # same bytes: the checksum would pass
    (copy / "tokenizer.json").unlink()
    (copy / "tokenizer.json").symlink_to(outside)
    _refused(copy, r"tokenizer\.json: a symbolic link", capsys)


def test_a_stray_symlink_leaving_the_bundle_is_refused(copy: Path, tmp_path: Path, capsys):
    (tmp_path / "x.data").write_bytes(b"0" * 10)
    (copy / "other.data").symlink_to(tmp_path / "x.data")  # a graph could name it as external data
    _refused(copy, r"other\.data: a symbolic link leaving the bundle", capsys)


# -- item 10: every manifest field is checked at load --------------------------------------------
def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        d = raw
        for p in parents:
            d = d[p]
        d[last] = value

    return change


BAD_FIELDS = [
    (_set("graphs", [{"file": "model.onnx"}]), r"graphs must be an object"),
    (_set("graphs", {}), r"graph 'encoder'"),
    (_set("truncation/max_length", 0), r"max_length"),
    (_set("truncation/max_length", 5), r"max_length 5 .*fixed tokens"),
    (_set("truncation/max_length", "128"), r"truncation\.max_length must be an int"),
    (_set("truncation/side", "middle"), r"truncation\.side"),
    (_set("prompt/segments", ["### Instruction:\n{instruction}"]), r"\{input\}"),
    (_set("prompt/segments", "{input}"), r"prompt\.segments must be a list"),
    (_set("prompt/answer_slots", 9), r"answer_slots"),
    (_set("prompt/answer_slots", 0), r"answer_slots"),
    (_set("prompt/answer_slots", True), r"answer_slots must be an int"),
    (_set("embedding_dim", 0), r"embedding_dim"),
    (_set("embedding_dim", "32"), r"embedding_dim must be an int"),
    (_set("files/model.onnx/bytes", "54203"), r"bytes must be an int"),
    (_set("files/tokenizer.json/sha256", 5), r"sha256 must be"),
    (_set("special_tokens/pad", 400), r"special_tokens\.pad .*vocabulary"),
    (_set("special_tokens/mask", -1), r"special_tokens\.mask"),
    (_set("recipe", "masked-answer-triple"), r"recipe 'masked-answer-triple'"),
    (_set("precision", "int2"), r"precision"),
    (_set("postprocess", ["cube"]), r"postprocess"),
    (_set("source/vocab_size", 300), r"vocabulary .*400.* 300"),
    (_set("prompt/slot_token", "<nope>"), r"slot token"),
    (_set("graphs/encoder/inputs", ["input_ids"]), r"inputs"),
    (_set("graphs/encoder/outputs", ["slot_states", "nothing"]), r"outputs"),
    (_set("format_version", True), r"format_version"),
    (_set("family", 3), r"family must be a string"),
    (_set("special_tokens", {}), r"special_tokens\.pad is missing"),
    (_set("pooling", []), r"pooling must be an object"),
    (_set("files", {}), r"'tokenizer\.json' is used but has no checksum entry"),
]


@pytest.mark.parametrize(("change", "match"), BAD_FIELDS)
def test_bad_manifest_fields_are_refused_at_load(copy: Path, capsys, change, match):
    _edit(copy, change)
    _refused(copy, match, capsys)


def test_deep_manifest_is_a_bundle_error(copy: Path, capsys):
    (copy / MANIFEST_NAME).write_text("[" * 100_000 + "]" * 100_000)
    _refused(copy, "unreadable manifest", capsys)


def test_causal_family_checks_its_options(copy: Path, capsys):
    """Family-specific checks come from the family's runtime pipeline (here: a masked bundle
    relabelled causal lacks `options.cache`)."""
    _edit(copy, _set("family", "causal-lm"))
    _edit(copy, _set("recipe", "causal-answer"))
    _refused(copy, r"options\.cache", capsys)


def test_info_exits_0_on_a_good_bundle(masked_bundle: Path, capsys):
    assert main(["info", str(masked_bundle)]) == 0


# -- item 3: replacing a bundle that others are loading -------------------------------------------
def _populate_from(src: Path) -> Callable[[Path], None]:
    root = bundle_root(src)

    def populate(d: Path) -> None:
        for name in ("model.onnx", "model.onnx.data", "tokenizer.json"):
            shutil.copy(root / name, d / name)

    return populate


def test_replace_while_loading_gives_one_version(masked_bundle: Path, pair_bundle: Path, tmp_path: Path):
    versions = {}
    for b in (masked_bundle, pair_bundle):
        e = Embedder(b)
        versions[e.manifest.recipe] = (load_manifest(b), e.encode(["I love cats!"], "What animal?")[0])
    target = tmp_path / "live"
    write_bundle(target, versions["masked-answer"][0], _populate_from(masked_bundle))
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        sources = [
            (versions["masked-answer-pair"][0], pair_bundle),
            (versions["masked-answer"][0], masked_bundle),
        ]
        while not stop.is_set():
            m, src = sources[writes[0] % 2]
            write_bundle(target, m, _populate_from(src), overwrite=True)
            writes[0] += 1

    t = threading.Thread(target=writer)
    t.start()
    seen: dict[str, int] = {}
    try:
        for _ in range(60):
            e = Embedder(target)
            vec = e.encode(["I love cats!"], "What animal?")[0]
            want = versions[e.manifest.recipe][1]
            np.testing.assert_allclose(vec, want, atol=1e-5, err_msg="a mix of two versions")
            seen[e.manifest.recipe] = seen.get(e.manifest.recipe, 0) + 1
    finally:
        stop.set()
        t.join()
    print(f"replace while loading: {sum(seen.values())} loads ({seen}) during {writes[0]} replaces")
    assert writes[0] >= 10, writes
    assert len(seen) == 2, seen  # both versions were loaded
    # Old versions are removed (those a loader held at the time by the next replace): one version
    # directory and the pointer remain.
    write_bundle(target, versions["masked-answer"][0], _populate_from(masked_bundle), overwrite=True)
    entries = sorted(p.name for p in target.iterdir())
    assert entries[0] == POINTER_NAME and len(entries) == 2 and entries[1].startswith("v-"), entries
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]


def test_plain_bundle_is_replaced_without_a_gap(masked_bundle: Path, pair_bundle: Path, tmp_path: Path):
    """Overwriting a bundle in today's plain layout never removes the path: the new version goes
    into a sub-directory and the pointer is renamed into place."""
    target = tmp_path / "live"
    write_bundle(target, load_manifest(masked_bundle), _populate_from(masked_bundle))
    assert (target / MANIFEST_NAME).is_file() and not (target / POINTER_NAME).exists()
    inode = os.stat(target).st_ino
    write_bundle(target, load_manifest(pair_bundle), _populate_from(pair_bundle), overwrite=True)
    assert os.stat(target).st_ino == inode  # the directory itself was never moved away
    assert not (target / MANIFEST_NAME).exists()  # the old version's files are gone
    assert Embedder(target).manifest.recipe == "masked-answer-pair"
    assert load_manifest(target).recipe == "masked-answer-pair"


def test_bad_pointer_is_refused(copy: Path, capsys):
    (copy / POINTER_NAME).write_text("../elsewhere\n")
    _refused(copy, "pointer", capsys)
    (copy / POINTER_NAME).write_text("v-missing\n")
    _refused(copy, "v-missing", capsys)


# -- item 12: damaged files are one line through the CLI ------------------------------------------
def _damage(bundle: Path, name: str, data: bytes) -> None:
    import hashlib

    (bundle / name).write_bytes(data)
    _edit(
        bundle,
        lambda raw: raw["files"].update(
            {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}
        ),
    )


@pytest.mark.parametrize(
    ("name", "cut", "match"),
    [
        ("model.onnx", 0.5, r"model\.onnx: onnxruntime cannot load this graph"),
        ("model.onnx.data", 0.5, r"model\.onnx"),
        ("tokenizer.json", 0.5, r"tokenizer\.json: not a tokenizer"),
        ("tokenizer.json", 0.0, r"tokenizer\.json: not a tokenizer"),
    ],
)
def test_damaged_files_with_matching_checksums_are_one_line(copy: Path, capsys, name, cut, match):
    data = (copy / name).read_bytes()
    _damage(copy, name, data[: int(len(data) * cut)])
    _refused(copy, match, capsys)
    src = copy.parent / "in.txt"
    src.write_text("hello\n")
    assert main(["embed", "-m", str(copy), "-i", "q", str(src), "-o", str(copy.parent / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("inbedder embed: error:") and "Traceback" not in err


def test_every_exported_recipe_is_one_its_runtime_family_runs():
    """The runtime's per-family recipe lists (checked at load) match what the exporters write."""
    from inbedder.export.family import families
    from inbedder.runtime.pipeline import pipeline_class

    for name, fam in families().items():
        assert set(pipeline_class(name).recipes) == {r.name for r in fam.recipes}, name
