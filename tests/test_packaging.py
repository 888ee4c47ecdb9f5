"""The wheel as a user gets it: metadata a package index shows, the licence text, the packages.

Builds the wheel from a copy of the files it is made of (so no build output lands in the checkout;
no network: `--no-build-isolation` uses the installed setuptools) and reads it as an archive.
"""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "inbedder", "export", "quantize", "runtime")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(src),
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    (path,) = out.glob("inbedder-*.whl")
    return zipfile.ZipFile(path)


def _metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(wheel.read(name))


def test_wheel_metadata_names_licence_urls_and_readme(wheel: zipfile.ZipFile) -> None:
    meta = _metadata(wheel)
    assert meta["Name"] == "inbedder"
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["License-File"] == "LICENSE"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert urls["InBedder paper"] == "https://arxiv.org/abs/2402.09642"
    assert set(urls) >= {"InBedder reference code", "INSTRUCTOR paper", "INSTRUCTOR reference code"}
    assert all(u.startswith("https://") for u in urls.values())
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().startswith("# inbedder")


def test_wheel_carries_licence_text_and_only_the_package(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert b"Apache License" in wheel.read(licence) and b"Version 2.0" in wheel.read(licence)
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"inbedder"}  # no tests/, bench/ or native/ in the wheel
    for sub in ("export", "quantize", "runtime"):
        assert f"inbedder/{sub}/__init__.py" in names
    assert "inbedder/py.typed" in names
