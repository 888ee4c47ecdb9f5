"""A full-range int8 bundle (made on a CPU with VNNI) is refused on a CPU whose u8 x s8 kernels
saturate, instead of giving wrong vectors; 7-bit bundles, fp32 and CUDA are not affected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from evalsets import SMALL

from inbedder import DeviceError, Embedder
from inbedder.quantize import quantize_bundle
from inbedder.runtime import cpu
from inbedder.runtime.cpu import CpuFeatures, check_int8_range

AVX2 = CpuFeatures("x86_64", frozenset({"avx", "avx2", "fma"}))  # saturates
VNNI = CpuFeatures("x86_64", frozenset({"avx2", "avx512f", "avx512_vnni"}))
ARM = CpuFeatures("aarch64", frozenset({"asimd", "asimddp"}))


def _options(reduce_range: object) -> dict:
    return {"quantization": {"reduce_range": reduce_range, "cpu": "x86_64: avx2, avx512_vnni"}}


def test_the_rule():
    with pytest.raises(DeviceError, match=r"m\.json: this int8 bundle has full-range.*x86_64: avx2\b"):
        check_int8_range(_options(False), "int8", "m.json", AVX2)
    with pytest.raises(DeviceError, match="int4 bundle"):  # int4's kept int8 MatMuls and tied head
        check_int8_range(_options(False), "int4", "m.json", AVX2)
    check_int8_range(_options(True), "int8", "m.json", AVX2)  # 7-bit weights: safe everywhere
    check_int8_range(_options(False), "int8", "m.json", VNNI)
    check_int8_range(_options(False), "int8", "m.json", ARM)
    check_int8_range({}, "int8", "m.json", AVX2)  # no recorded choice: not checked
    check_int8_range(_options(False), "fp32", "m.json", AVX2)
    check_int8_range(_options(False), "fp16", "m.json", AVX2)


@pytest.fixture(scope="module")
def full_range(masked_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-range per-token int8 bundle, as a machine with VNNI makes it."""
    out = tmp_path_factory.mktemp("fr") / "int8"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu, "cpu_features", lambda cpuinfo="/proc/cpuinfo": VNNI)
        m = quantize_bundle(masked_bundle, out, reduce_range=False, min_cosine=1e-6, **SMALL)
    assert m.options["quantization"]["reduce_range"] is False
    return out


def test_embedder_refuses_it_on_a_saturating_cpu(full_range: Path, monkeypatch):
    monkeypatch.setattr(cpu, "cpu_features", lambda cpuinfo="/proc/cpuinfo": AVX2)
    with pytest.raises(DeviceError, match=r"inbedder\.json: this int8 bundle has full-range"):
        Embedder(full_range)
    monkeypatch.setattr(cpu, "cpu_features", lambda cpuinfo="/proc/cpuinfo": VNNI)
    v = Embedder(full_range).encode(["hello"], instruction="What?")
    assert v.shape[0] == 1 and np.isfinite(v).all()


def test_cuda_is_not_checked(full_range: Path, monkeypatch):
    """The check is for MLAS's CPU kernels: a CUDA session gets past it (and here fails only for
    want of CUDA)."""
    monkeypatch.setattr(cpu, "cpu_features", lambda cpuinfo="/proc/cpuinfo": AVX2)
    from inbedder.runtime import session

    monkeypatch.setattr(session, "cuda_available", lambda: True)
    with pytest.raises(Exception) as e:
        Embedder(full_range, device="cuda")
    assert not isinstance(e.value, DeviceError) or "full-range" not in str(e.value)


def test_native_runtime_applies_the_same_rule(full_range: Path):
    """The C API on this machine's real CPU (no fake: the native probe reads /proc/cpuinfo as
    Python does): refused where the u8 x s8 kernels saturate, the same vectors as Python
    elsewhere."""
    from native import CApi, build_native

    api = CApi(build_native())
    if cpu.cpu_features().default_reduce_range():
        with pytest.raises(RuntimeError, match=r"inbedder\.json: this int8 bundle has full-range") as e:
            api.open(full_range)
        assert cpu.cpu_features().summary in str(e.value)  # the same CPU text as Python's
    else:
        api.close(api.open(full_range))
