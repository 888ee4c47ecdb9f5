"""The verified-stamp (runtime/stamp.py): an open re-hashes only files whose key changed, and
nothing the stamp can see lets a changed file pass.

Each test copies the session's tiny masked bundle (a few hundred kB) and opens it a few times:
about 3 s for the module on a quiet 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from inbedder import BundleError, Embedder, InputError
from inbedder.cli import main
from inbedder.runtime import bundle as bundle_mod
from inbedder.runtime import stamp as stamp_mod
from inbedder.runtime.bundle import MANIFEST_NAME, load_bundle, write_bundle
from inbedder.runtime.stamp import STAMP_NAME, read_stamp

GRAPHS = ("model.onnx", "model.onnx.data")


@pytest.fixture
def copy(masked_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(masked_bundle, dst, ignore=shutil.ignore_patterns(STAMP_NAME))
    return dst


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files an open hashes with the streaming hasher (every file but the
    tokenizer, which is hashed from the bytes it is parsed from on every open)."""
    seen: list[str] = []
    real = bundle_mod._sha256_and_stat

    def spy(path: Path, *a):
        seen.append(Path(path).name)
        return real(path, *a)

    monkeypatch.setattr(bundle_mod, "_sha256_and_stat", spy)
    return seen


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files the test just wrote count as settled (the real window is 3 s)."""
    monkeypatch.setattr(stamp_mod, "RACY_NS", 0)


def _vec(bundle: Path, **kw) -> np.ndarray:
    return Embedder(bundle, **kw).encode(["hello there"], "What is it?")


def flip_in_place(path: Path, keep_mtime: bool = True) -> None:
    """Change one byte in the middle of the file, same size, mtime restored (ctime moves)."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        b = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_second_open_hashes_no_graph_file(copy: Path, hashed: list[str], no_racy_window):
    first = _vec(copy)
    assert sorted(hashed) == sorted(GRAPHS)
    stamp = read_stamp(copy)
    assert set(stamp) == {*GRAPHS, "tokenizer.json"}
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    for name, entry in stamp.items():
        st = os.lstat(copy / name)
        assert entry["sha256"] == manifest["files"][name]["sha256"]
        assert (entry["bytes"], entry["mtime_ns"], entry["ino"]) == (st.st_size, st.st_mtime_ns, st.st_ino)
    hashed.clear()
    stamp_ino = os.lstat(copy / STAMP_NAME).st_ino
    np.testing.assert_array_equal(_vec(copy), first)
    assert hashed == []
    assert os.lstat(copy / STAMP_NAME).st_ino == stamp_ino  # unchanged stamp: not rewritten
    _vec(copy, verify="full")
    assert sorted(hashed) == sorted(GRAPHS)


def test_files_changed_just_now_are_not_stamped(copy: Path, hashed: list[str]):
    """Within the racy window (files copied a moment ago) a later edit in the same timestamp tick
    would keep the key: such files are hashed again on the next open."""
    _vec(copy)
    assert not set(read_stamp(copy)) & set(GRAPHS)
    hashed.clear()
    _vec(copy)
    assert sorted(hashed) == sorted(GRAPHS)


def _replace_same_size(path: Path) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(bytes(data))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, path)


def _touch_changed(path: Path) -> None:
    flip_in_place(path, keep_mtime=False)


def _grow(path: Path) -> None:
    st = path.stat()
    with open(path, "ab") as f:
        f.write(b"\0")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (flip_in_place, "sha256 differs"),  # same size, mtime restored: ctime moved
        (_touch_changed, "sha256 differs"),  # same size, new mtime
        (_replace_same_size, "sha256 differs"),  # another inode, same size and mtime
        (_grow, "size .* differs"),
    ],
    ids=["in-place-mtime-restored", "mtime-changed", "replaced-file", "size-changed"],
)
@pytest.mark.parametrize("name", ["model.onnx.data", "tokenizer.json"])
def test_a_changed_file_is_caught_despite_the_stamp(copy: Path, no_racy_window, change, match, name):
    _vec(copy)
    assert name in read_stamp(copy)
    change(copy / name)
    with pytest.raises(BundleError, match=match):
        Embedder(copy)
    assert name in read_stamp(copy)  # a failed open does not rewrite the stamp


def test_a_stamp_copied_from_another_copy_is_not_trusted(copy: Path, tmp_path: Path, no_racy_window):
    """`cp -a`, rsync and tar keep size and mtime but not the inode: the stamp of the original
    vouches for nothing in the copy."""
    _vec(copy)
    other = tmp_path / "other"
    shutil.copytree(copy, other)  # copies the stamp too, mtimes kept (copy2)
    assert read_stamp(other) == read_stamp(copy)
    flip_in_place(other / "model.onnx.data")
    with pytest.raises(BundleError, match="sha256 differs"):
        Embedder(other)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: p.write_bytes(b"\x00garbage"),
        lambda p: p.write_text(json.dumps({"format": "inbedder-verified", "version": 99, "files": {}})),
        lambda p: p.write_text("[]"),
        lambda p: (p.unlink(), p.mkdir()),
        lambda p: (p.unlink(), p.symlink_to(p.with_name("elsewhere.json"))),
    ],
    ids=["garbage", "unknown-version", "not-an-object", "a-directory", "a-dangling-link"],
)
def test_a_damaged_stamp_means_full_hashing(copy: Path, hashed: list[str], no_racy_window, tamper):
    _vec(copy)
    (copy / "elsewhere.json").write_text(json.dumps(json.loads((copy / STAMP_NAME).read_text())))
    tamper(copy / STAMP_NAME)
    hashed.clear()
    _vec(copy)
    assert sorted(hashed) == sorted(GRAPHS)
    flip_in_place(copy / "model.onnx")
    with pytest.raises(BundleError, match="sha256 differs"):
        Embedder(copy)


def test_a_stamp_entry_with_another_checksum_is_not_trusted(copy: Path, no_racy_window):
    """A stamp from before the manifest changed (its sha256 differs from the manifest's)."""
    _vec(copy)
    raw = json.loads((copy / STAMP_NAME).read_text())
    raw["files"]["model.onnx.data"]["sha256"] = "0" * 64
    (copy / STAMP_NAME).write_text(json.dumps(raw))
    flip_in_place(copy / "model.onnx.data")
    # The forged entry matches the file's key but not the manifest: hashed, caught.
    st = os.lstat(copy / "model.onnx.data")
    raw["files"]["model.onnx.data"].update(ctime_ns=st.st_ctime_ns, mtime_ns=st.st_mtime_ns)
    (copy / STAMP_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="sha256 differs"):
        Embedder(copy)


def test_what_a_stamp_cannot_see_full_verification_does(copy: Path, no_racy_window):
    """The contract's limit, pinned: a change that leaves every key field as it was (here forged
    by rewriting the stamp with the damaged file's new status, as damage below the file system
    would look) passes a "stamp" open; verify="full" catches it."""
    _vec(copy)
    flip_in_place(copy / "model.onnx.data")
    raw = json.loads((copy / STAMP_NAME).read_text())
    st = os.lstat(copy / "model.onnx.data")
    raw["files"]["model.onnx.data"].update(ctime_ns=st.st_ctime_ns, mtime_ns=st.st_mtime_ns)
    (copy / STAMP_NAME).write_text(json.dumps(raw))
    Embedder(copy)  # trusted: exactly what a stamp cannot see
    with pytest.raises(BundleError, match="sha256 differs"):
        Embedder(copy, verify="full")
    assert main(["info", "--verify", "full", str(copy)]) == 2


def test_an_unwritable_stamp_falls_back_to_hashing(
    copy: Path, hashed: list[str], no_racy_window, monkeypatch: pytest.MonkeyPatch
):
    def read_only(path: Path) -> int:
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(stamp_mod, "_create", read_only)
    _vec(copy)
    _vec(copy)
    assert not (copy / STAMP_NAME).exists()
    assert sorted(hashed) == sorted(GRAPHS * 2)
    assert [p.name for p in copy.iterdir() if p.name.startswith(STAMP_NAME)] == []


def test_versioned_bundles_keep_a_stamp_per_version(copy: Path, pair_bundle: Path, no_racy_window):
    """A replaced bundle's new version has no stamp of its own yet: its files are hashed."""
    _vec(copy)
    assert (copy / STAMP_NAME).exists()

    def populate(d: Path) -> None:
        for p in pair_bundle.iterdir():
            if p.is_file() and p.name not in (MANIFEST_NAME, STAMP_NAME):
                shutil.copy(p, d / p.name)

    manifest = load_bundle(pair_bundle, verify="none").manifest
    write_bundle(copy, manifest, populate, overwrite=True)
    assert not (copy / STAMP_NAME).exists()  # the plain layout's stamp went with its files
    root = bundle_mod.bundle_root(copy)
    assert root != copy and not (root / STAMP_NAME).exists()
    _vec(copy)
    assert set(read_stamp(root)) == {*GRAPHS, "tokenizer.json"}


def test_stamps_are_never_bundle_files(copy: Path, tmp_path: Path, no_racy_window):
    _vec(copy)
    out = tmp_path / "rewritten"
    manifest = load_bundle(copy, verify="none").manifest
    written = write_bundle(out, manifest, lambda d: bundle_mod.move_files(copy, d))
    assert STAMP_NAME not in written.files and not (out / STAMP_NAME).exists()


def test_a_manifest_may_not_name_the_stamp(copy: Path):
    raw = json.loads((copy / MANIFEST_NAME).read_text())
    raw["files"][STAMP_NAME] = raw["files"]["tokenizer.json"]
    (copy / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="verified-stamp"):
        Embedder(copy)


def test_verify_modes(copy: Path, hashed: list[str], no_racy_window, capsys):
    with pytest.raises(InputError, match="verify must be one of"):
        Embedder(copy, verify="fast")  # type: ignore[arg-type]
    _vec(copy, verify="none")
    assert hashed == [] and not (copy / STAMP_NAME).exists()  # "none" neither hashes nor stamps
    _vec(copy, verify=True)  # True is the default, "stamp"
    assert (copy / STAMP_NAME).exists()
    hashed.clear()
    assert main(["info", str(copy)]) == 0 and hashed == []
    assert main(["info", "--verify", "full", str(copy)]) == 0 and sorted(hashed) == sorted(GRAPHS)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["info", "--verify", "fast", str(copy)])
    assert e.value.code == 2 and "--verify" in capsys.readouterr().err
