"""CPU instruction-set detection for int8 choices: `runtime/cpu.py` (the runtime checks a bundle's
int8 range against the CPU with the same code), re-exported for the quantizer."""

from inbedder.runtime.cpu import CpuFeatures, cpu_features

__all__ = ["CpuFeatures", "cpu_features"]
