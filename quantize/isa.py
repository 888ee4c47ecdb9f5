"""CPU instruction-set detection for int8 choices.

Scope: which integer dot-product instructions the CPU has. Without VNNI (AVX2-only or AVX-512
without VNNI), x86 int8 GEMMs multiply u8 x s8 pairs with `vpmaddubsw`, whose 16-bit intermediate
sums can saturate; quantizing weights to 7 bits (`reduce_range`) avoids that at a small cost in
precision. With VNNI (or on ARM) full range is safe.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path


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
