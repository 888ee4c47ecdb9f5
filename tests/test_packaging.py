"""The wheel as a user gets it: metadata a package index shows, the licence text, the packages,
and a fresh install of it with only the `quantize` extra quantizing a bundle.

Builds the wheel from a copy of the files it is made of (so no build output lands in the checkout;
no network: `--no-build-isolation` uses the installed setuptools) and reads it as an archive. The
fresh install takes its requirements from the local wheelhouse scripts/install.sh fills
(`.cache/wheelhouse`), with `--no-index`: no network at test time.
"""

from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "inbedder", "export", "quantize", "runtime")


@pytest.fixture(scope="module")
def wheel_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
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
    return path


@pytest.fixture(scope="module")
def wheel(wheel_file: Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(wheel_file)


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


def test_quantize_extra_alone_quantizes_int8_and_int4(wheel_file: Path, masked_bundle: Path, tmp_path: Path):
    """`pip install 'inbedder[quantize]'` into a fresh venv (no torch, no transformers) is enough
    to quantize an fp32 bundle: `inbedder quantize` to int8 and to int4 there."""
    import onnx
    from evalsets import CAL, HELD
    from graphs import all_nodes

    from inbedder import load_manifest

    house = ROOT / ".cache" / "wheelhouse"
    if not any(house.glob("onnxruntime-*.whl")):
        pytest.fail(f"{house} holds no onnxruntime wheel: scripts/install.sh fills it")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    install = [
        sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index",
        "--find-links", str(house), f"{wheel_file}[quantize]",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    done = subprocess.run(install, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    mods = ("torch", "transformers", "onnx_ir", "sympy")
    probe = f"import importlib.util as u; print([m for m in {mods} if u.find_spec(m)])"
    found = subprocess.run([str(py), "-I", "-c", probe], capture_output=True, text=True, check=True, env=env)
    assert found.stdout.strip() == "['onnx_ir', 'sympy']"  # the extra's, and nothing of export's

    cal, held = tmp_path / "cal.jsonl", tmp_path / "held.jsonl"
    for path, pairs in ((cal, CAL[:6]), (held, HELD[:8])):
        path.write_text("".join(json.dumps({"text": t, "instruction": i}) + "\n" for t, i in pairs))
    for precision in ("int8", "int4"):
        out = tmp_path / precision
        cmd = [
            str(venv / "bin" / "inbedder"),
            "quantize",
            str(masked_bundle),
            str(out),
            "--precision",
            precision,
        ]
        done = subprocess.run(
            [*cmd, "--calibration", str(cal), "--heldout", str(held)], capture_output=True, text=True,
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"wrote {out}: {precision} bundle" in done.stdout
        assert load_manifest(out).precision == precision
        ops = {n.op_type for n in all_nodes(onnx.load(out / "model.onnx", load_external_data=False).graph)}
        assert ("MatMulNBits" in ops) is (precision == "int4") and "QGemm" in ops  # QGemm: the tied head
        if precision == "int8":
            assert "MatMulIntegerToFloat" in ops
