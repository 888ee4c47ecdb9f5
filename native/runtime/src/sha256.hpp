// SHA-256 (FIPS 180-4) for the bundle's file checksums: no crypto library is a dependency.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace inbedder {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, std::size_t size);
  std::string hexdigest();  // finalises; the object is spent afterwards

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  std::size_t used_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(const void* data, std::size_t size);
// Hex digest of a file, read in 64 KiB chunks; throws std::runtime_error if unreadable.
std::string sha256_file(const std::string& path);

}  // namespace inbedder
