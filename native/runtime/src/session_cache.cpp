// The session cache (runtime/session_cache.py): the key, the checks of an entry, and writing one.
#include "session_cache.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <sstream>

#include "sha256.hpp"
#include "stamp.hpp"

namespace inbedder {
namespace fs = std::filesystem;
namespace {

// runtime/stamp.py's file_key: the stamp's key of one state of a file, as JSON.
nlohmann::json file_key(const struct stat& st) {
  const StampEntry e = stamp_entry("", st);
  return {{"bytes", e.bytes},
          {"mtime_ns", e.mtime_ns},
          {"ctime_ns", e.ctime_ns},
          {"ino", e.ino},
          {"dev", e.dev}};
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// Python's json.dumps(sort_keys=True, separators=(",", ":")) for this key (nlohmann::json keeps
// object keys sorted; ensure_ascii as Python's default).
std::string canonical(const nlohmann::json& j) { return j.dump(-1, ' ', true); }

bool fsync_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return false;
  bool ok = ::fsync(fd) == 0;
  return (::close(fd) == 0) && ok;
}

}  // namespace

nlohmann::json cpu_identity() {
  nlohmann::json ident = nlohmann::json::object();
  struct utsname u;
  ident["machine"] = ::uname(&u) == 0 ? std::string(u.machine) : std::string();
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (in && std::getline(in, line)) {
    if (trim(line).empty()) break;  // the first logical CPU's block
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string name = trim(line.substr(0, colon));
    std::string value = trim(line.substr(colon + 1));
    if (name != "vendor_id" && name != "cpu family" && name != "model" && name != "flags" &&
        name != "Features" && name != "CPU part")
      continue;
    if (name == "flags" || name == "Features") {
      std::istringstream words(value);
      std::vector<std::string> flags{std::istream_iterator<std::string>(words), {}};
      std::sort(flags.begin(), flags.end());
      std::string joined;
      for (const auto& f : flags) joined += (joined.empty() ? "" : " ") + f;
      value = sha256_hex(joined.data(), joined.size());
    }
    ident[name] = value;
  }
  return ident;
}

std::string cache_root(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec))
    throw ValueError("session_cache '" + dir + "' is not a directory");
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    throw ValueError("session_cache '" + dir + "' cannot be used as a directory (" +
                     (ec ? ec.message() : std::string("not a directory")) + ")");
  return dir;
}

CacheSlot::CacheSlot(const std::string& root, const Manifest& manifest,
                     const std::vector<std::string>& graph_files, const nlohmann::json& settings) {
  nlohmann::json graph = nlohmann::json::object();
  for (const auto& f : graph_files)
    for (const auto& [name, rec] : manifest.files)
      if (name == f) graph[f] = {{"sha256", rec.sha256}, {"bytes", rec.bytes}};
  key_ = {{"format", kCacheFormat},
          {"version", kCacheVersion},
          {"onnxruntime", Ort::GetVersionString()},
          {"cpu", cpu_identity()},
          {"graph", graph},
          {"settings", settings}};
  const std::string text = canonical(key_);
  entry_ = root + "/" + sha256_hex(text.data(), text.size()).substr(0, 32);
}

bool CacheSlot::usable() const {
  const std::string meta = entry_ + "/" + kCacheEntryName;
  struct stat st;
  if (::lstat(meta.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (1 << 16))
    return false;
  nlohmann::json doc;
  try {
    struct stat after;
    doc = nlohmann::json::parse(read_file(meta, std::size_t(st.st_size), &after));
  } catch (const std::exception&) {  // unreadable, or not JSON
    return false;
  }
  if (!doc.is_object() || !doc.contains("key") || doc["key"] != key_) return false;
  const auto files = doc.value("files", nlohmann::json());
  if (!files.is_object() || !files.contains(kCacheGraphName)) return false;
  std::set<std::string> present, recorded;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(entry_, ec))
    if (e.path().filename() != kCacheEntryName) present.insert(e.path().filename().string());
  for (const auto& [name, _] : files.items()) recorded.insert(name);
  if (ec || present != recorded) return false;
  for (const auto& [name, want] : files.items()) {
    struct stat fst;
    if (::lstat((entry_ + "/" + name).c_str(), &fst) != 0 || !S_ISREG(fst.st_mode) ||
        file_key(fst) != want)
      return false;
  }
  return true;
}

std::optional<std::string> CacheSlot::lookup() const {
  if (usable()) return entry_ + "/" + kCacheGraphName;
  discard();  // also a directory without entry.json, which would block the commit's rename
  return std::nullopt;
}

void CacheSlot::discard() const {
  std::error_code ec;
  fs::remove_all(entry_, ec);  // a failure leaves it, to be retried next open
}

std::string CacheSlot::staging() const {
  const fs::path parent = fs::path(entry_).parent_path();
  const std::string prefix = "." + fs::path(entry_).filename().string() + ".tmp-";
  std::error_code ec;
  const std::time_t now = std::time(nullptr);
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string name = e.path().filename().string();
    struct stat st;
    if (name.rfind(prefix, 0) == 0 && ::lstat(e.path().c_str(), &st) == 0 &&
        now - st.st_mtime > kStaleStagingS) {
      std::error_code rm;
      fs::remove_all(e.path(), rm);
    }
  }
  std::random_device rd;
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", unsigned(rd()));
  const std::string tmp = (parent / (prefix + hex)).string();
  if (::mkdir(tmp.c_str(), 0755) != 0) return "";
  return tmp;
}

void CacheSlot::save_options(Ort::SessionOptions& opts, const std::string& tmp) const {
  const std::string graph = tmp + "/" + kCacheGraphName;
  opts.SetOptimizedModelFilePath(graph.c_str());
  opts.AddConfigEntry("session.optimized_model_external_initializers_file_name", kCacheDataName);
  opts.AddConfigEntry("session.optimized_model_external_initializers_min_size_in_bytes", "1024");
  opts.AddConfigEntry("session.save_external_prepacked_constant_initializers", "1");
}

void CacheSlot::commit(const std::string& tmp) const {
  bool ok = true;
  nlohmann::json files = nlohmann::json::object();
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(tmp, ec)) {
    const std::string path = e.path().string();
    struct stat st;
    // On disk before the entry can be seen: a crash leaves no torn entry.
    ok = ok && fsync_file(path) && ::lstat(path.c_str(), &st) == 0;
    if (ok) files[e.path().filename().string()] = file_key(st);
  }
  ok = ok && !ec && files.contains(kCacheGraphName);
  if (ok) {
    const nlohmann::json doc = {
        {"format", kCacheFormat}, {"version", kCacheVersion}, {"key", key_}, {"files", files}};
    ok = write_new_file(tmp + "/" + kCacheEntryName, doc.dump(1, ' ', true) + "\n", true);
  }
  // Fails when another process has put the entry in place: its entry is kept.
  ok = ok && ::rename(tmp.c_str(), entry_.c_str()) == 0;
  if (!ok) fs::remove_all(tmp, ec);
}

}  // namespace inbedder
