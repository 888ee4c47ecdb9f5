// numpy.save's layout: magic, version 1.0, little-endian header length, a Python dict literal
// padded with spaces to a multiple of 64 bytes (numpy's ARRAY_ALIGN) ending in '\n', then data.
#include "npy.hpp"

#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>

namespace inbedder {

void write_npy_f32(const std::string& path, const float* data, std::size_t rows, std::size_t cols) {
  write_npy(path, "<f4", data, rows, cols, sizeof(float));
}

void write_npy(const std::string& path, const char* descr, const void* data, std::size_t rows,
               std::size_t cols, std::size_t element_bytes) {
  std::string header = "{'descr': '" + std::string(descr) +
                       "', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                       std::to_string(cols) + "), }";
  std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string pre = "\x93NUMPY";
  pre.push_back('\x01');
  pre.push_back('\x00');
  pre.push_back(char(header.size() & 0xff));
  pre.push_back(char((header.size() >> 8) & 0xff));
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!f) throw std::runtime_error(path + ": cannot write");
  bool ok = std::fwrite(pre.data(), 1, pre.size(), f.get()) == pre.size() &&
            std::fwrite(header.data(), 1, header.size(), f.get()) == header.size();
  std::size_t n = rows * cols;
  // Little-endian on every platform this builds for (x86-64, aarch64).
  if (ok && n) ok = std::fwrite(data, element_bytes, n, f.get()) == n;
  if (!ok || std::fflush(f.get()) != 0) throw std::runtime_error(path + ": write error");
}

}  // namespace inbedder
