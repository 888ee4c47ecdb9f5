"""CPU instruction-set detection for int8 choices.

Scope: which integer dot-product instructions the CPU has. Without VNNI (AVX2-only or AVX-512
without VNNI), x86 int8 GEMMs multiply u8 x s8 pairs with `vpmaddubsw`, whose 16-bit intermediate
sums can saturate; quantizing weights to 7 bits (`reduce_range`) avoids that at a small cost in
precision, and so do 8-bit weights stored as uint8 (the quantizer's fallback, `u8_weights`: u8 x u8
kernels widen before multiplying). With VNNI (or on ARM) full range is safe.

The quantizer records its choice in the manifest (`options.quantization.reduce_range`: true for
both of those); a bundle
with full-range int8 weights (made on a CPU with VNNI) would give silently wrong vectors on one
without, so `check_int8_range` refuses to run it there.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inbedder.errors import DeviceError


@dataclass(frozen=True)
class CpuFeatures:
    machine: str
    flags: frozenset[str]

    @property
    def vnni(self) -> bool:
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    @property
    def x86(self) -> bool:
        return self.machine.lower() in {"x86_64", "amd64", "i686", "x86"}

    @property
    def summary(self) -> str:
        wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
        found = [f for f in wanted if f in self.flags]
        return f"{self.machine}: {', '.join(found) or 'no AVX2/AVX-512/VNNI flags seen'}"

    def default_reduce_range(self) -> bool:
        """7-bit weights only where u8 x s8 multiply-adds can saturate: x86 without VNNI."""
        return self.x86 and not self.vnni


def cpu_features(cpuinfo: str | Path = "/proc/cpuinfo") -> CpuFeatures:
    """Read CPU flags (Linux); elsewhere no flags are known and x86 is treated as non-VNNI."""
    flags: set[str] = set()
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return CpuFeatures(machine=platform.machine(), flags=frozenset(flags))


def check_int8_range(
    manifest_options: Mapping[str, Any], precision: str, origin: str, cpu: CpuFeatures | None = None
) -> None:
    """Raise `DeviceError` if the bundle's int8 weights are full range (the manifest's
    `options.quantization.reduce_range` is false) and this CPU (`cpu`, default: this machine's)
    multiplies u8 x s8 with saturating 16-bit pair sums. A bundle that records no choice (fp32,
    fp16, or older int8 bundles) is not checked."""
    if precision not in ("int8", "int4"):
        return
    quant = manifest_options.get("quantization")
    if not isinstance(quant, Mapping) or quant.get("reduce_range") is not False:
        return
    cpu = cpu if cpu is not None else cpu_features()
    if cpu.default_reduce_range():
        raise DeviceError(
            f"{origin}: this {precision} bundle has full-range (8-bit) int8 weights, quantized on "
            f"'{quant.get('cpu', 'an unrecorded CPU')}'; this CPU ({cpu.summary}) has no VNNI, so "
            "onnxruntime's u8 x s8 kernels would saturate and give wrong vectors. Quantize the fp32 "
            "bundle on this machine (weights that cannot saturate, 7-bit or stored as uint8, are "
            "chosen automatically) or with `inbedder quantize --reduce-range` for bundles that must "
            "run on any x86 CPU."
        )
