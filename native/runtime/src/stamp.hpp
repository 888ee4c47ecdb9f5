// The verified-stamp, as runtime/stamp.py: `.inbedder-verified` in the directory holding a
// bundle's files records which files were last hashed whole, so an open need not re-hash them.
// Same JSON and rules as the Python runtime (README "Checksums and the verified-stamp"): either
// runtime reads the stamp the other wrote.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <map>
#include <string>

namespace inbedder {

inline constexpr const char* kStampName = ".inbedder-verified";
inline constexpr const char* kStampFormat = "inbedder-verified";
inline constexpr int kStampVersion = 1;
inline constexpr std::size_t kMaxStampBytes = std::size_t(1) << 20;
inline constexpr int64_t kRacyNs = 3000000000;  // coarser than any file system's tick (FAT: 2 s)

// "stamp" (default), "full", "none" (runtime's Verify).
enum class Verify { Stamp, Full, None };
// The mode named `name`; ValueError naming the modes otherwise.
Verify verify_mode(const std::string& name);

// One stamp entry: the sha256 hashed and the key of the file state it was hashed in.
struct StampEntry {
  std::string sha256;
  int64_t bytes = 0, mtime_ns = 0, ctime_ns = 0;
  uint64_t ino = 0, dev = 0;
  bool operator==(const StampEntry& o) const {
    return sha256 == o.sha256 && bytes == o.bytes && mtime_ns == o.mtime_ns &&
           ctime_ns == o.ctime_ns && ino == o.ino && dev == o.dev;
  }
  bool operator!=(const StampEntry& o) const { return !(*this == o); }
};
using Stamp = std::map<std::string, StampEntry>;

StampEntry stamp_entry(const std::string& sha256, const struct stat& st);
// Whether a file hashed between `before` (lstat of the path) and `after` (fstat of the open file)
// may go in the stamp: unchanged meanwhile, last changed clearly before hashing began.
bool stampable(const struct stat& before, const struct stat& after, int64_t started_ns);
// The stamp's entries, or {} for anything but a well-formed stamp (never an error).
Stamp read_stamp(const std::string& root);
// Replaces the stamp in root atomically (temporary file renamed over it); false, and the stamp
// left as it was, when it cannot be written (read-only bundle, full disk): silent, as the open
// goes on either way.
bool write_stamp(const std::string& root, const Stamp& entries);
// Writes `data` into a new file at `path` (O_CREAT | O_EXCL | O_NOFOLLOW), fsynced when `sync`;
// false on any failure, leaving no file it created (the stamp's and the session cache's writes).
bool write_new_file(const std::string& path, const std::string& data, bool sync);
// The stamp or one of its temporary files (never a bundle file).
bool is_stamp_file(const std::string& name);
// CLOCK_REALTIME in nanoseconds (time.time_ns()).
int64_t now_ns();

}  // namespace inbedder
