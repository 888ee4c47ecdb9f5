// SHA-256 (FIPS 180-4) for the bundle's file checksums: no crypto library is a dependency.
#pragma once

#include <sys/stat.h>

#include <cstddef>
#include <cstdint>
#include <functional>
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
// The same, never through a link, with *after the status of the open file once read (what was
// hashed: the verified-stamp keys on it).
std::string sha256_file(const std::string& path, struct stat* after);
// The file's bytes (at most `limit`), never through a link, and the open file's status after.
std::string read_file(const std::string& path, std::size_t limit, struct stat* after);
// Test hook: called with each file name load_bundle hashes whole (never the tokenizer).
std::function<void(const std::string&)>& hash_observer();

}  // namespace inbedder
