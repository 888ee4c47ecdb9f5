// CPU instruction sets for int8, as runtime/cpu.py: whether this CPU's u8 x s8 kernels saturate
// (x86 without VNNI), and the check that refuses a full-range int8 bundle on such a CPU.
#pragma once

#include <string>

#include "bundle.hpp"

namespace inbedder {

struct CpuFeatures {
  bool x86 = false;
  bool vnni = false;                               // avx512_vnni, avx_vnni or amx_int8
  std::string summary;                             // as runtime/cpu.py's CpuFeatures.summary
  bool saturates() const { return x86 && !vnni; }  // cpu.py's default_reduce_range()
};

// This machine's (Linux: /proc/cpuinfo's flags, the same source as Python; elsewhere, x86:
// the compiler's CPU probe for AVX-512 VNNI only, so a CPU with only AVX-VNNI counts as without).
CpuFeatures cpu_features();

// Throws DeviceError when `m` is int8 / int4 with full-range weights (its
// options.quantization.reduce_range is false) and `cpu` saturates; the same text as Python's.
void check_int8_range(const Manifest& m, const CpuFeatures& cpu, const std::string& origin);

}  // namespace inbedder
