// Manifest reading and the open-time checks of runtime/bundle.py, with its error texts: format
// and version, a well-formed manifest, every file needed listed, every listed file present with
// its size and sha256, and every path a plain relative name that stays inside the bundle.
#include "bundle.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <climits>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "sha256.hpp"

namespace inbedder {
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

// A malformed-manifest failure: Python's (KeyError | TypeError | ValueError) inside from_json.
struct Malformed {
  std::string kind, detail;
};

std::string py_str_repr(const std::string& s) {
  // repr() of a str: single quotes unless the text has ' and no ".
  char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == '\\')
      out += "\\\\";
    else if (c == static_cast<unsigned char>(q))
      out += std::string("\\") + char(q);
    else if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    } else
      out += char(c);
  }
  return out + q;
}

// obj[key]; a missing key is "<where.key> is missing", as runtime/bundle.py says it.
const json& at(const json& obj, const char* key, const char* where = "") {
  if (!obj.is_object()) throw Malformed{"TypeError", "expected a JSON object, got " + py_repr(obj)};
  auto it = obj.find(key);
  if (it == obj.end())
    throw Malformed{"missing", (*where ? std::string(where) + "." : std::string()) + key};
  return *it;
}

std::string str_of(const json& v, const char* what) {
  if (!v.is_string())
    throw Malformed{"TypeError", std::string(what) + " must be a string, got " + py_repr(v)};
  return v.get<std::string>();
}

int64_t int_of(const json& v, const char* what) {
  if (v.is_number_integer() || v.is_boolean())
    return v.is_boolean() ? v.get<bool>() : v.get<int64_t>();
  if (v.is_number_float()) return static_cast<int64_t>(v.get<double>());
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    try {
      std::size_t used = 0;
      long long n = std::stoll(s, &used);
      if (used == s.size()) return n;
    } catch (...) {
    }
  }
  throw Malformed{"ValueError", std::string(what) + ": invalid literal for int() " + py_repr(v)};
}

std::vector<std::string> strings_of(const json& v, const char* what) {
  if (!v.is_array())
    throw Malformed{"TypeError", std::string(what) + " must be a list, got " + py_repr(v)};
  std::vector<std::string> out;
  for (const auto& s : v) out.push_back(str_of(s, what));
  return out;
}

bool truthy(const json& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string() || v.is_array() || v.is_object()) return !v.empty();
  return true;
}

Manifest parse(const json& d) {
  Manifest m;
  m.family = str_of(at(d, "family"), "family");
  m.recipe = str_of(at(d, "recipe"), "recipe");
  const json& p = at(d, "prompt");
  m.prompt.segments = strings_of(at(p, "segments", "prompt"), "prompt.segments");
  if (p.contains("slot_token") && !p["slot_token"].is_null())
    m.prompt.slot_token = str_of(p["slot_token"], "prompt.slot_token");
  m.prompt.answer_slots =
      p.contains("answer_slots") ? int(int_of(p["answer_slots"], "answer_slots")) : 0;
  m.prompt.strip = p.contains("strip") && truthy(p["strip"]);
  if (m.prompt.segments.size() != 1 && m.prompt.segments.size() != 2)
    throw Malformed{"ValueError", "prompt needs 1 or 2 segments, got " +
                                      std::to_string(m.prompt.segments.size())};
  if (m.prompt.answer_slots && !m.prompt.slot_token)
    throw Malformed{"ValueError", "answer_slots > 0 needs a slot_token"};
  const json& t = at(d, "truncation");
  if (!t.is_object()) throw Malformed{"TypeError", "truncation must be an object"};
  for (auto it = t.begin(); it != t.end(); ++it) {
    if (it.key() != "max_length" && it.key() != "side" && it.key() != "strategy")
      throw Malformed{
          "TypeError",
          "TruncationSpec.__init__() got an unexpected keyword argument '" + it.key() + "'"};
  }
  m.truncation.max_length =
      std::size_t(int_of(at(t, "max_length", "truncation"), "truncation.max_length"));
  if (t.contains("side")) m.truncation.side = str_of(t["side"], "truncation.side");
  if (t.contains("strategy")) m.truncation.strategy = str_of(t["strategy"], "truncation.strategy");
  const json& graphs = at(d, "graphs");
  if (!graphs.is_object()) throw Malformed{"TypeError", "graphs must be an object"};
  for (auto it = graphs.begin(); it != graphs.end(); ++it) {
    const json& g = it.value();
    GraphSpec gs;
    gs.file = str_of(at(g, "file"), "graphs.file");
    gs.inputs = strings_of(at(g, "inputs"), "graphs.inputs");
    gs.outputs = strings_of(at(g, "outputs"), "graphs.outputs");
    if (g.contains("data") && !g["data"].is_null()) gs.data = str_of(g["data"], "graphs.data");
    if (g.contains("cpu_disabled_optimizers") && !g["cpu_disabled_optimizers"].is_null())
      gs.cpu_disabled_optimizers =
          strings_of(g["cpu_disabled_optimizers"], "cpu_disabled_optimizers");
    m.graphs.emplace_back(it.key(), std::move(gs));
  }
  m.embedding_dim = int(int_of(at(d, "embedding_dim"), "embedding_dim"));
  m.pooling = at(d, "pooling");
  if (!m.pooling.is_object()) throw Malformed{"TypeError", "pooling must be an object"};
  if (d.contains("postprocess")) m.postprocess = strings_of(d["postprocess"], "postprocess");
  if (d.contains("special_tokens")) {
    const json& st = d["special_tokens"];
    if (!st.is_object()) throw Malformed{"TypeError", "special_tokens must be an object"};
    for (auto it = st.begin(); it != st.end(); ++it)
      m.special_tokens[it.key()] = int_of(it.value(), "special_tokens");
  }
  m.decode = d.contains("decode") ? d["decode"] : json::object();
  if (!m.decode.is_object()) throw Malformed{"TypeError", "decode must be an object"};
  if (d.contains("precision")) m.precision = str_of(d["precision"], "precision");
  m.options = d.contains("options") ? d["options"] : json::object();
  if (!m.options.is_object()) throw Malformed{"TypeError", "options must be an object"};
  if (d.contains("files")) {
    const json& fl = d["files"];
    if (!fl.is_object()) throw Malformed{"TypeError", "files must be an object"};
    for (auto it = fl.begin(); it != fl.end(); ++it) {
      if (!it.value().is_object()) throw Malformed{"TypeError", "files entries must be objects"};
      FileRecord r;
      const json& rec = it.value();
      r.bytes_json = rec.contains("bytes") ? rec["bytes"] : json();
      if (r.bytes_json.is_number_unsigned() || r.bytes_json.is_number_integer())
        r.bytes = r.bytes_json.get<uint64_t>();
      if (rec.contains("sha256") && rec["sha256"].is_string())
        r.sha256 = rec["sha256"].get<std::string>();
      m.files.emplace_back(it.key(), std::move(r));
    }
  }
  if (d.contains("tokenizer_file"))
    m.tokenizer_file = str_of(d["tokenizer_file"], "tokenizer_file");
  return m;
}

// A manifest path must be a plain relative name inside the bundle: no absolute path, no ".."
// component, nothing that resolves (through symlinks) outside the bundle directory.
void check_inside(const fs::path& root, const std::string& name, const std::string& mpath) {
  fs::path p(name);
  bool bad = name.empty() || p.is_absolute() || name.find('\\') != std::string::npos;
  for (const auto& part : p) bad = bad || part == "..";
  if (!bad) {
    std::error_code ec;
    fs::path real_root = fs::weakly_canonical(root, ec);
    fs::path real = fs::weakly_canonical(root / p, ec);
    auto rel = real.lexically_relative(real_root);
    bad = ec || rel.empty() || *rel.begin() == "..";
  }
  if (bad)
    throw BundleError(mpath + ": file " + py_str_repr(name) +
                      " is not a relative path inside the bundle directory");
}

}  // namespace

const GraphSpec& Manifest::graph(const std::string& role) const {
  for (const auto& [name, g] : graphs)
    if (name == role) return g;
  throw BundleError("the bundle has no graph '" + role + "' (family " + family + ")");
}

std::string pure_path(const std::string& p) {
  if (p.empty()) return ".";
  bool abs = p[0] == '/';
  std::vector<std::string> parts;
  std::stringstream ss(p);
  std::string part;
  while (std::getline(ss, part, '/'))
    if (!part.empty() && part != ".") parts.push_back(part);
  std::string out = abs ? "/" : "";
  for (std::size_t i = 0; i < parts.size(); ++i) out += (i ? "/" : "") + parts[i];
  return out.empty() ? "." : out;
}

std::string py_repr(const json& v) {
  if (v.is_null()) return "None";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (v.is_string()) return py_str_repr(v.get<std::string>());
  if (v.is_number_float()) {
    std::string s = v.dump();
    return s;
  }
  if (v.is_number()) return v.dump();
  if (v.is_array()) {
    std::string out = "[";
    for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + py_repr(v[i]);
    return out + "]";
  }
  std::string out = "{";
  bool first = true;
  for (auto it = v.begin(); it != v.end(); ++it) {
    out += (first ? "" : ", ") + py_str_repr(it.key()) + ": " + py_repr(it.value());
    first = false;
  }
  return out + "}";
}

namespace {

constexpr const char* kPointerName = "inbedder.current";
constexpr int kLoadAttempts = 50;
constexpr std::size_t kMaxManifestBytes = std::size_t(1) << 24;

// The version directory the pointer names, or "" (a plain bundle).
std::string read_pointer(const std::string& top) {
  const std::string ptr = top + "/" + kPointerName;
  struct stat st;
  if (::lstat(ptr.c_str(), &st) != 0) return "";
  if (!S_ISREG(st.st_mode) || st.st_size > 256)
    throw BundleError(ptr + ": the bundle pointer is not a small regular file");
  std::ifstream in(ptr, std::ios::binary);
  std::string name((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!name.empty() && name.back() == '\n') name.pop_back();
  bool ok = name.size() >= 3 && name.size() <= 66 && name.compare(0, 2, "v-") == 0;
  for (std::size_t k = 2; ok && k < name.size(); ++k) {
    unsigned char c = static_cast<unsigned char>(name[k]);
    ok = std::isalnum(c) || c == '_' || c == '-';
  }
  if (!ok) {
    std::string shown;  // Python's decode("ascii", errors="replace")
    for (unsigned char c : name) shown += c < 0x80 ? std::string(1, char(c)) : "\xef\xbf\xbd";
    throw BundleError(ptr + ": bad bundle pointer " + py_str_repr(shown) +
                      " (must name a v-... directory of the bundle)");
  }
  return name;
}

std::string version_dir(const std::string& top, const std::string& version) {
  if (version.empty()) return top;
  const std::string d = top + "/" + version;
  struct stat st;
  if (::lstat(d.c_str(), &st) != 0)
    throw BundleError(top + "/" + kPointerName + ": the bundle pointer names " +
                      py_str_repr(version) + ", which does not exist");
  if (!S_ISDIR(st.st_mode))
    throw BundleError(d + ": the bundle pointer must name a directory (not a link or file)");
  return d;
}

// A shared flock on directory d for the object's life (no writer removes it meanwhile); fails if
// d was removed or replaced before the lock was had.
class SharedLock {
 public:
  explicit SharedLock(const std::string& d) : fd_(::open(d.c_str(), O_RDONLY | O_DIRECTORY)) {
    if (fd_ < 0) throw BundleError(d + ": cannot open the bundle directory");
    struct stat held, now;
    if (::flock(fd_, LOCK_SH) != 0 || ::fstat(fd_, &held) != 0 || ::stat(d.c_str(), &now) != 0 ||
        held.st_ino != now.st_ino || held.st_dev != now.st_dev) {
      ::close(fd_);
      throw BundleError(d + ": replaced while loading");
    }
  }
  ~SharedLock() { ::close(fd_); }
  SharedLock(const SharedLock&) = delete;
  SharedLock& operator=(const SharedLock&) = delete;

 private:
  int fd_;
};

std::string real_path(const std::string& p) {
  char* r = ::realpath(p.c_str(), nullptr);
  if (!r) return p;
  std::string out(r);
  std::free(r);
  return out;
}

bool inside(const std::string& real_root, const std::string& target) {
  return target == real_root ||
         (target.size() > real_root.size() && target.compare(0, real_root.size(), real_root) == 0 &&
          (real_root == "/" || target[real_root.size()] == '/'));
}

Bundle read_checked(const std::string& root, Verify verify) {
  const std::string mpath = pure_path(root + "/" + kManifestName);
  struct stat mst;
  if (::lstat(mpath.c_str(), &mst) != 0)
    throw BundleError(mpath + ": missing manifest; " + root + " is not a complete bundle");
  if (!S_ISREG(mst.st_mode))
    throw BundleError(mpath + ": the manifest must be a regular file (not a link)");
  if (std::size_t(mst.st_size) > kMaxManifestBytes)
    throw BundleError(mpath + ": manifest of " + std::to_string(mst.st_size) +
                      " bytes is too large");
  std::ifstream in(mpath, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  json raw;
  try {
    raw = json::parse(buf.str());
  } catch (const json::exception& e) {
    throw BundleError(mpath + ": unreadable manifest (" + e.what() + ")");
  }
  if (!raw.is_object()) throw BundleError(mpath + ": manifest is not a JSON object");
  json fmt = raw.contains("format") ? raw["format"] : json();
  if (!(fmt.is_string() && fmt.get<std::string>() == kFormatName))
    throw BundleError(mpath + ": not an inbedder manifest (format=" + py_repr(fmt) + ")");
  json version = raw.contains("format_version") ? raw["format_version"] : json();
  bool known = (version.is_number_integer() || version.is_number_float() || version.is_boolean()) &&
               version.get<double>() == kFormatVersion;
  if (!known)
    throw BundleError(mpath + ": unknown format_version " + py_repr(version) +
                      "; this runtime reads 1 (upgrade inbedder?)");
  Manifest m;
  try {
    m = parse(raw);
  } catch (const Malformed& e) {
    if (e.kind == "missing") throw BundleError(mpath + ": " + e.detail + " is missing");
    throw BundleError(mpath + ": malformed manifest (" + e.kind + ": " + e.detail + ")");
  } catch (const json::exception& e) {
    throw BundleError(mpath + ": malformed manifest (TypeError: " + e.what() + ")");
  }
  std::vector<std::string> needed{m.tokenizer_file};
  for (const auto& [role, g] : m.graphs) {
    needed.push_back(g.file);
    if (g.data) needed.push_back(*g.data);
  }
  for (const auto& name : needed) {
    bool listed = false;
    for (const auto& [f, rec] : m.files) listed = listed || f == name;
    if (!listed)
      throw BundleError(mpath + ": file " + py_str_repr(name) +
                        " is used but has no checksum entry");
  }
  for (const auto& [name, rec] : m.files) check_inside(root, name, mpath);
  // No link may lead out of the bundle (a graph's external data is opened by onnxruntime by
  // name); the files the manifest lists may not be links at all.
  const std::string real = real_path(root);
  for (const auto& entry : fs::directory_iterator(root)) {
    if (!entry.is_symlink()) continue;
    const std::string name = entry.path().filename().string();
    bool listed = false;
    for (const auto& [f, rec] : m.files) listed = listed || f == name;
    const bool leaves = !inside(real, real_path(entry.path().string()));
    if (listed || leaves)
      throw BundleError(pure_path(root + "/" + name) + ": a symbolic link " +
                        (leaves ? "leaving the bundle" : "(not allowed)") +
                        "; bundle files must be regular files");
  }
  Bundle b;
  std::map<std::string, struct stat> stats;
  for (const auto& [name, rec] : m.files) {
    const std::string path = pure_path(root + "/" + name);
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) throw BundleError(path + ": missing bundle file");
    if (!S_ISREG(st.st_mode)) throw BundleError(path + ": not a regular file");
    if (!rec.bytes || *rec.bytes != uint64_t(st.st_size))
      throw BundleError(path + ": size " + std::to_string(st.st_size) +
                        " differs from the manifest's " + py_repr(rec.bytes_json) +
                        " (changed or truncated file)");
    stats[name] = st;
  }
  // verify "stamp": a file whose stamp entry still matches (stamp.hpp) is not hashed again.
  const Stamp stamp = verify == Verify::Stamp ? read_stamp(root) : Stamp{};
  const int64_t started = now_ns();
  Stamp entries;
  const std::string bad_sum = ": sha256 differs from the manifest (changed or corrupted file)";
  for (const auto& [name, rec] : m.files) {
    const std::string path = pure_path(root + "/" + name);
    const struct stat& st = stats[name];
    const std::string want = rec.sha256 ? *rec.sha256 : std::string();
    auto s = stamp.find(name);
    const bool known = rec.sha256 && s != stamp.end() && s->second == stamp_entry(want, st);
    if (known) entries[name] = s->second;
    if (name == m.tokenizer_file) {  // read once: what is hashed is what gets parsed
      struct stat after;
      try {
        b.tokenizer_json = read_file(path, *rec.bytes + 1, &after);
      } catch (const std::exception& e) {
        throw BundleError(e.what());
      }
      // Always hashed (a few MB): the bytes parsed are the bytes checked, stamp or not.
      if (b.tokenizer_json.size() != *rec.bytes ||
          (verify != Verify::None &&
           sha256_hex(b.tokenizer_json.data(), b.tokenizer_json.size()) != want))
        throw BundleError(path + bad_sum);
      if (verify != Verify::None && stampable(st, after, started))
        entries[name] = stamp_entry(want, st);
    } else if (verify != Verify::None && !known) {
      struct stat after;
      std::string digest;
      try {
        digest = sha256_file(path, &after);
      } catch (const std::exception& e) {
        throw BundleError(e.what());
      }
      if (hash_observer()) hash_observer()(name);
      if (!rec.sha256 || digest != want) throw BundleError(path + bad_sum);
      if (stampable(st, after, started)) entries[name] = stamp_entry(want, st);
    }
  }
  if (verify != Verify::None && entries != stamp) write_stamp(root, entries);  // all matched
  b.root = root;
  b.manifest = std::move(m);
  return b;
}

}  // namespace

void load_bundle(const std::string& bundle_dir, Verify verify,
                 const std::function<void(const Bundle&)>& build) {
  const std::string top = pure_path(bundle_dir);
  std::error_code ec;
  if (!fs::is_directory(top, ec)) throw BundleError(top + ": no such bundle directory");
  for (int attempt = 0; attempt < kLoadAttempts; ++attempt) {
    const std::string version = read_pointer(top);
    try {
      const std::string root = version_dir(top, version);
      SharedLock lock(root);
      Bundle b = read_checked(root, verify);
      if (build) build(b);
      return;
    } catch (const BundleError&) {
      if (read_pointer(top) == version) throw;
      // replaced meanwhile: load the new version
    }
  }
  throw BundleError(top + ": the bundle was replaced " + std::to_string(kLoadAttempts) +
                    " times while loading");
}

Manifest load_manifest(const std::string& bundle_dir, Verify verify) {
  Manifest m;
  load_bundle(bundle_dir, verify, [&](const Bundle& b) { m = b.manifest; });
  return m;
}

}  // namespace inbedder
