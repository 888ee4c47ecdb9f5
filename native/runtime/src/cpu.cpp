// runtime/cpu.py's rule in C++: see cpu.hpp.
#include "cpu.hpp"

#include <fstream>
#include <set>
#include <sstream>

namespace inbedder {

namespace {

bool is_x86() {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
  return true;
#else
  return false;
#endif
}

const char* machine_name() {
#if defined(__x86_64__) || defined(_M_X64)
  return "x86_64";
#elif defined(__i386__) || defined(_M_IX86)
  return "i686";
#elif defined(__aarch64__) || defined(_M_ARM64)
  return "aarch64";
#else
  return "unknown";
#endif
}

}  // namespace

CpuFeatures cpu_features() {
  std::set<std::string> flags;
  std::ifstream info("/proc/cpuinfo");
  std::string line;
  while (std::getline(info, line)) {
    if (line.rfind("flags", 0) == 0 || line.rfind("Features", 0) == 0) {
      std::istringstream words(
          line.substr(line.find(':') == std::string::npos ? line.size() : line.find(':') + 1));
      for (std::string w; words >> w;) flags.insert(w);
      break;
    }
  }
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  if (!info.is_open() && __builtin_cpu_supports("avx512vnni")) flags.insert("avx512_vnni");
  if (!info.is_open() && __builtin_cpu_supports("avx2")) flags.insert("avx2");
#endif
  CpuFeatures cpu;
  cpu.x86 = is_x86();
  cpu.vnni = flags.count("avx512_vnni") || flags.count("avx_vnni") || flags.count("amx_int8");
  std::string found;
  for (const char* f : {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"})
    if (flags.count(f)) found += (found.empty() ? "" : ", ") + std::string(f);
  cpu.summary = std::string(machine_name()) + ": " +
                (found.empty() ? std::string("no AVX2/AVX-512/VNNI flags seen") : found);
  return cpu;
}

void check_int8_range(const Manifest& m, const CpuFeatures& cpu, const std::string& origin) {
  if (m.precision != "int8" && m.precision != "int4") return;
  const auto q = m.options.find("quantization");
  if (q == m.options.end() || !q->is_object()) return;
  const auto rr = q->find("reduce_range");
  if (rr == q->end() || !rr->is_boolean() || rr->get<bool>()) return;
  if (!cpu.saturates()) return;
  const auto made = q->find("cpu");
  const std::string made_on =
      made != q->end() && made->is_string() ? made->get<std::string>() : "an unrecorded CPU";
  throw DeviceError(origin + ": this " + m.precision +
                    " bundle has full-range (8-bit) int8 weights, quantized on '" + made_on +
                    "'; this CPU (" + cpu.summary +
                    ") has no VNNI, so onnxruntime's u8 x s8 kernels would saturate and give wrong "
                    "vectors. Quantize the fp32 bundle on this machine (weights that cannot "
                    "saturate, 7-bit or stored as uint8, are chosen automatically) or with "
                    "`inbedder quantize --reduce-range` for bundles that must run on any x86 CPU.");
}

}  // namespace inbedder
