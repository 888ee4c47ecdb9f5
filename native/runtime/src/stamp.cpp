// The verified-stamp (runtime/stamp.py): reading, writing and the key of a file's state.
#include "stamp.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <nlohmann/json.hpp>
#include <random>

#include "bundle.hpp"

namespace inbedder {
namespace {

int64_t ns_of(const struct timespec& t) { return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec; }

// A JSON integer as int64 / uint64 (false for anything else: the entry is dropped, as an entry
// of the wrong types is in Python).
bool get_i64(const nlohmann::json& v, int64_t& out) {
  if (!v.is_number_integer()) return false;  // booleans are not numbers here
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) return false;
  out = v.get<int64_t>();
  return true;
}
bool get_u64(const nlohmann::json& v, uint64_t& out) {
  if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0)) return false;
  out = v.get<uint64_t>();
  return true;
}

}  // namespace

Verify verify_mode(const std::string& name) {
  if (name == "stamp") return Verify::Stamp;
  if (name == "full") return Verify::Full;
  if (name == "none") return Verify::None;
  throw ValueError("verify must be one of ['stamp', 'full', 'none'] (or 1 / 0), got '" + name +
                   "'");
}

int64_t now_ns() {
  struct timespec t;
  ::clock_gettime(CLOCK_REALTIME, &t);
  return ns_of(t);
}

StampEntry stamp_entry(const std::string& sha256, const struct stat& st) {
  return {sha256,
          int64_t(st.st_size),
          ns_of(st.st_mtim),
          ns_of(st.st_ctim),
          uint64_t(st.st_ino),
          uint64_t(st.st_dev)};
}

bool stampable(const struct stat& before, const struct stat& after, int64_t started_ns) {
  StampEntry a = stamp_entry("", before), b = stamp_entry("", after);
  return a == b && std::max(a.mtime_ns, a.ctime_ns) < started_ns - kRacyNs;
}

Stamp read_stamp(const std::string& root) {
  const std::string path = root + "/" + kStampName;
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) ||
      std::size_t(st.st_size) > kMaxStampBytes)
    return {};
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return {};
  std::string text;
  char buf[1 << 14];
  ssize_t n;
  while (text.size() <= kMaxStampBytes && (n = ::read(fd, buf, sizeof buf)) != 0) {
    if (n < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      return {};
    }
    text.append(buf, std::size_t(n));
  }
  ::close(fd);
  // Python's json.loads refuses a byte-order mark; nlohmann would skip it.
  if (text.size() > kMaxStampBytes || text.rfind("\xef\xbb\xbf", 0) == 0) return {};
  nlohmann::json raw = nlohmann::json::parse(text, nullptr, false);
  if (raw.is_discarded() || !raw.is_object()) return {};
  auto fmt = raw.find("format");
  auto ver = raw.find("version");
  if (fmt == raw.end() || *fmt != kStampFormat || ver == raw.end() || !ver->is_number_integer() ||
      *ver != kStampVersion)
    return {};
  auto files = raw.find("files");
  if (files == raw.end() || !files->is_object()) return {};
  Stamp out;
  for (auto it = files->begin(); it != files->end(); ++it) {
    const auto& rec = it.value();
    if (!rec.is_object() || !rec.contains("sha256") || !rec["sha256"].is_string()) continue;
    StampEntry e;
    e.sha256 = rec["sha256"].get<std::string>();
    auto field = [&](const char* k) { return rec.contains(k) ? rec[k] : nlohmann::json(); };
    if (get_i64(field("bytes"), e.bytes) && get_i64(field("mtime_ns"), e.mtime_ns) &&
        get_i64(field("ctime_ns"), e.ctime_ns) && get_u64(field("ino"), e.ino) &&
        get_u64(field("dev"), e.dev))
      out[it.key()] = e;
  }
  return out;
}

bool write_stamp(const std::string& root, const Stamp& entries) {
  nlohmann::ordered_json files = nlohmann::ordered_json::object();
  for (const auto& [name, e] : entries)
    files[name] = {{"sha256", e.sha256},     {"bytes", e.bytes}, {"mtime_ns", e.mtime_ns},
                   {"ctime_ns", e.ctime_ns}, {"ino", e.ino},     {"dev", e.dev}};
  nlohmann::ordered_json doc = {
      {"format", kStampFormat}, {"version", kStampVersion}, {"files", files}};
  const std::string data = doc.dump(1, ' ', true) + "\n";
  std::random_device rd;
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", unsigned(rd()));
  const std::string tmp = root + "/" + kStampName + "." + hex + ".tmp";
  // No fsync: a stamp lost in a crash costs one full hash. A read-only bundle: every open hashes.
  if (!write_new_file(tmp, data, false)) return false;
  if (::rename(tmp.c_str(), (root + "/" + kStampName).c_str()) == 0) return true;
  ::unlink(tmp.c_str());
  return false;
}

bool write_new_file(const std::string& path, const std::string& data, bool sync) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return false;  // not ours to remove
  std::size_t done = 0;
  bool ok = true;
  while (ok && done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) done += std::size_t(n);
  }
  if (sync) ok = ok && ::fsync(fd) == 0;
  ok = (::close(fd) == 0) && ok;
  if (!ok) ::unlink(path.c_str());
  return ok;
}

bool is_stamp_file(const std::string& name) {
  const std::string base = kStampName;
  return name == base ||
         (name.size() >= base.size() + 4 && name.compare(0, base.size() + 1, base + ".") == 0 &&
          name.compare(name.size() - 4, 4, ".tmp") == 0);
}

}  // namespace inbedder
