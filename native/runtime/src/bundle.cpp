// Manifest reading and the open-time checks of runtime/bundle.py, with its error texts: format
// and version, every field's type, range and value in its parser's order (the field readers
// mirror _get / _int / _strings / _choice / check_file_name), every file needed listed, no link
// leaving the bundle, every listed file a regular file with its size and sha256.
#include "bundle.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#include <algorithm>
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

// A manifest field of the wrong type, range or value (runtime/bundle.py's _FieldError; the
// message names the field, load adds the manifest's path).
struct FieldError {
  std::string msg;
};

// Python's str.isprintable() for one code point: not a control, format, surrogate, private-use,
// unassigned or separator character.
bool printable(utf8proc_int32_t c) {
  switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
      return false;
    default:
      return true;
  }
}

// repr() of a str: single quotes unless the text has ' and no "; backslash, newline, carriage
// return and tab escaped, and what str.isprintable() calls unprintable (categories C*, Z* but
// the space; utf8proc's Unicode tables) as \xNN / \uNNNN / \UNNNNNNNN.
std::string py_str_repr(const std::string& s) {
  char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string out(1, q);
  for (std::size_t i = 0; i < s.size();) {
    utf8proc_int32_t c = 0;
    utf8proc_ssize_t n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                          utf8proc_ssize_t(s.size() - i), &c);
    if (n <= 0) {  // not UTF-8 (JSON text never is): the byte as it is
      out += s[i++];
      continue;
    }
    const std::string raw = s.substr(i, std::size_t(n));
    i += std::size_t(n);
    if (c == '\\')
      out += "\\\\";
    else if (c == q)
      out += std::string("\\") + q;
    else if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (c != ' ' && !printable(c)) {
      char b[16];
      std::snprintf(b, sizeof b,
                    c < 0x100     ? "\\x%02x"
                    : c < 0x10000 ? "\\u%04x"
                                  : "\\U%08x",
                    unsigned(c));
      out += b;
    } else
      out += raw;
  }
  return out + q;
}

// The JSON types a field may be asked to have, named as runtime/bundle.py's _KINDS.
enum class Kind { Str, Int, Obj, List, Bool };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::Str:
      return "a string";
    case Kind::Int:
      return "an int";
    case Kind::Obj:
      return "an object";
    case Kind::List:
      return "a list";
    case Kind::Bool:
      return "a boolean";
  }
  return "?";
}

// Python's isinstance checks on json.loads' result: a JSON integer is an int, true/false are
// booleans and never ints, 1.0 is a float.
bool is_kind(const json& v, Kind k) {
  switch (k) {
    case Kind::Str:
      return v.is_string();
    case Kind::Int:
      return v.is_number_integer();
    case Kind::Obj:
      return v.is_object();
    case Kind::List:
      return v.is_array();
    case Kind::Bool:
      return v.is_boolean();
  }
  return false;
}

// runtime/bundle.py's _json_kind: what a value is, in the words of the messages.
std::string json_kind(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer()) return "an int";
  if (v.is_object()) return "an object";
  if (v.is_array()) return "a list";
  return "a number";
}

// repr(v), cut to 37 characters and "..." past 40 (characters: UTF-8 code points).
std::string shown(const json& v) {
  const std::string r = py_repr(v);
  std::size_t chars = 0, cut = r.size();
  for (std::size_t i = 0; i < r.size(); ++i) {
    if ((static_cast<unsigned char>(r[i]) & 0xC0) == 0x80) continue;  // a continuation byte
    if (chars == 37) cut = i;
    ++chars;
  }
  return chars <= 40 ? r : r.substr(0, cut) + "...";
}

std::string field_name(const std::string& where, const std::string& key) {
  return where.empty() ? key : where + "." + key;
}

// How a field may be absent (Python's default argument of _get): not at all (missing is an
// error, null is of the wrong type), given a default (null is of the wrong type), or given the
// default None (missing and null alike).
enum class Absent { Error, Default, NullOk };

// d[key] checked to be of kind k, or nullptr when it is absent and may be (runtime's _get).
const json* get(const json& d, const std::string& key, Kind k, const std::string& where,
                Absent absent = Absent::Error) {
  const std::string name = field_name(where, key);
  auto it = d.find(key);
  if (it == d.end() || (it->is_null() && absent == Absent::NullOk)) {
    if (absent == Absent::Error) throw FieldError{name + " is missing"};
    return nullptr;
  }
  if (!is_kind(*it, k))
    throw FieldError{name + " must be " + kind_name(k) + ", got " + json_kind(*it) + " " +
                     shown(*it)};
  return &*it;
}

std::string get_str(const json& d, const std::string& key, const std::string& where,
                    const std::string& dflt) {
  const json* v = get(d, key, Kind::Str, where, Absent::Default);
  return v ? v->get<std::string>() : dflt;
}

// An int field in lo..hi (no upper bound when hi is unset), or dflt when absent (runtime's _int).
int64_t get_int(const json& d, const std::string& key, const std::string& where, int64_t lo,
                std::optional<int64_t> hi = std::nullopt,
                std::optional<int64_t> dflt = std::nullopt) {
  const json* v = get(d, key, Kind::Int, where, dflt ? Absent::Default : Absent::Error);
  if (!v) return *dflt;
  const int64_t n = *json_int(*v);  // past int64: saturated, above every upper bound here
  if (n < lo || (hi && n > *hi)) {
    const std::string span =
        hi ? "in " + std::to_string(lo) + ".." + std::to_string(*hi) : ">= " + std::to_string(lo);
    throw FieldError{field_name(where, key) + " must be " + span + ", got " + v->dump()};
  }
  return n;
}

// A list of strings (runtime's _strings; its item message joins where and key with a dot even
// when where is empty, and so does this).
std::vector<std::string> get_strings(const json& d, const std::string& key,
                                     const std::string& where, bool optional = false) {
  const json* v = get(d, key, Kind::List, where, optional ? Absent::Default : Absent::Error);
  std::vector<std::string> out;
  if (!v) return out;
  for (std::size_t i = 0; i < v->size(); ++i) {
    if (!(*v)[i].is_string())
      throw FieldError{where + "." + key + "[" + std::to_string(i) + "] must be a string, got " +
                       json_kind((*v)[i])};
    out.push_back((*v)[i].get<std::string>());
  }
  return out;
}

// One of `choices` (runtime's _choice), or dflt when absent.
std::string get_choice(const json& d, const std::string& key, const std::string& where,
                       const std::vector<std::string>& choices, const std::string& dflt) {
  const std::string v = get_str(d, key, where, dflt);
  if (std::find(choices.begin(), choices.end(), v) == choices.end())
    throw FieldError{field_name(where, key) + " must be one of " + py_repr(json(choices)) +
                     ", got " + py_str_repr(v)};
  return v;
}

json get_object(const json& d, const std::string& key, bool optional = true) {
  const json* v = get(d, key, Kind::Obj, "", optional ? Absent::Default : Absent::Error);
  return v ? *v : json::object();
}

// A bundle file name: one plain path component inside the bundle directory (no absolute path,
// no separator, no "..", no drive), and not the verified-stamp's (runtime's check_file_name).
std::string check_file_name(const std::string& name, const std::string& where) {
  if (name.empty() || name == "." || name == ".." ||
      name.find_first_of(std::string("/\\:\0", 4)) != std::string::npos)
    throw FieldError{where + " " + py_str_repr(name) +
                     " is not a plain file name inside the bundle"};
  if (is_stamp_file(name))
    throw FieldError{where + " " + py_str_repr(name) +
                     " is the name of the verified-stamp, not a bundle file"};
  return name;
}

bool is_sha256(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// Every field type-checked in runtime/bundle.py's _parse order, so that a manifest with several
// faults gets the same first message from both runtimes.
Manifest parse(const json& d) {
  Manifest m;
  m.family = get(d, "family", Kind::Str, "")->get<std::string>();
  m.recipe = get(d, "recipe", Kind::Str, "")->get<std::string>();
  if (m.family.empty() || m.recipe.empty()) throw FieldError{"family and recipe must not be empty"};
  const json& p = *get(d, "prompt", Kind::Obj, "");
  m.prompt.segments = get_strings(p, "segments", "prompt");
  if (m.prompt.segments.size() != 1 && m.prompt.segments.size() != 2)
    throw FieldError{"prompt.segments needs 1 or 2 templates, got " +
                     std::to_string(m.prompt.segments.size())};
  if (std::none_of(m.prompt.segments.begin(), m.prompt.segments.end(),
                   [](const std::string& s) { return s.find("{input}") != std::string::npos; }))
    throw FieldError{
        "prompt.segments: no template holds {input} (every text would get the same vector)"};
  if (const json* slot = get(p, "slot_token", Kind::Str, "prompt", Absent::NullOk))
    m.prompt.slot_token = slot->get<std::string>();
  m.prompt.answer_slots = int(get_int(p, "answer_slots", "prompt", 0, kMaxAnswerSlots, 0));
  if (m.prompt.answer_slots && (!m.prompt.slot_token || m.prompt.slot_token->empty()))
    throw FieldError{"prompt.answer_slots > 0 needs a prompt.slot_token"};
  const json& t = *get(d, "truncation", Kind::Obj, "");
  std::vector<std::string> unknown;
  for (auto it = t.begin(); it != t.end(); ++it)
    if (it.key() != "max_length" && it.key() != "side" && it.key() != "strategy")
      unknown.push_back(it.key());
  if (!unknown.empty()) {
    std::sort(unknown.begin(), unknown.end());  // UTF-8 byte order = Python's code point order
    throw FieldError{"truncation has unknown fields " + py_repr(json(unknown))};
  }
  m.truncation.max_length = std::size_t(get_int(t, "max_length", "truncation", 1));
  m.truncation.side = get_choice(t, "side", "truncation", {"left", "right"}, "right");
  m.truncation.strategy = get_choice(
      t, "strategy", "truncation", {"longest_first", "only_first", "only_second"}, "longest_first");
  const json& graphs = *get(d, "graphs", Kind::Obj, "");  // the graphs a family needs: its checks
  for (auto it = graphs.begin(); it != graphs.end(); ++it) {
    const std::string where = "graphs." + it.key();
    const json& g = it.value();
    if (!g.is_object()) throw FieldError{where + " must be an object, got " + json_kind(g)};
    const json* data = get(g, "data", Kind::Str, where, Absent::NullOk);
    GraphSpec gs;
    gs.file =
        check_file_name(get(g, "file", Kind::Str, where)->get<std::string>(), where + ".file");
    gs.inputs = get_strings(g, "inputs", where);
    gs.outputs = get_strings(g, "outputs", where);
    if (data) gs.data = check_file_name(data->get<std::string>(), where + ".data");
    if (const json* r = get(g, "row_ops", Kind::Str, where, Absent::NullOk))
      gs.row_ops = check_file_name(r->get<std::string>(), where + ".row_ops");
    get(g, "fusion", Kind::Str, where, Absent::NullOk);  // read by quantize, checked here
    gs.cpu_disabled_optimizers = get_strings(g, "cpu_disabled_optimizers", where, true);
    m.graphs.emplace_back(it.key(), std::move(gs));
  }
  m.postprocess = get_strings(d, "postprocess", "", true);
  for (const auto& step : m.postprocess)
    if (step != "standardize" && step != "l2")
      throw FieldError{"postprocess step " + py_str_repr(step) +
                       " is not one of ['standardize', 'l2']"};
  const json special = get_object(d, "special_tokens");
  for (auto it = special.begin(); it != special.end(); ++it)
    m.special_tokens.emplace_back(it.key(), get_int(special, it.key(), "special_tokens", 0));
  const json files = get_object(d, "files");
  for (auto it = files.begin(); it != files.end(); ++it) {
    check_file_name(it.key(), "files entry");
    const std::string where = "files[" + py_str_repr(it.key()) + "]";
    const json& rec = it.value();
    if (!rec.is_object()) throw FieldError{where + " must be an object, got " + json_kind(rec)};
    FileRecord r;
    r.bytes = uint64_t(get_int(rec, "bytes", where, 0));
    r.sha256 = get(rec, "sha256", Kind::Str, where)->get<std::string>();
    if (!is_sha256(r.sha256)) throw FieldError{where + ".sha256 must be 64 lowercase hex digits"};
    m.files.emplace_back(it.key(), std::move(r));
  }
  // The rest in the order runtime's Manifest(...) call reads them.
  if (const json* strip = get(p, "strip", Kind::Bool, "prompt", Absent::Default))
    m.prompt.strip = strip->get<bool>();
  m.embedding_dim = get_int(d, "embedding_dim", "", 1);
  m.pooling = get_object(d, "pooling", false);
  m.decode = get_object(d, "decode");
  m.precision = get_choice(d, "precision", "", {"fp32", "int8", "int4", "fp16"}, "fp32");
  m.source = get_object(d, "source");
  get_object(d, "exporter");
  get_object(d, "validation");
  m.options = get_object(d, "options");
  m.tokenizer_file =
      check_file_name(get_str(d, "tokenizer_file", "", "tokenizer.json"), "tokenizer_file");
  return m;
}

}  // namespace

const GraphSpec& Manifest::graph(const std::string& role) const {
  for (const auto& [name, g] : graphs)
    if (name == role) return g;
  throw BundleError("the bundle has no graph '" + role + "' (family " + family + ")");
}

bool Manifest::has_graph(const std::string& role) const {
  for (const auto& [name, g] : graphs)
    if (name == role) return true;
  return false;
}

std::optional<int64_t> Manifest::special_token(const std::string& name) const {
  for (const auto& [n, id] : special_tokens)
    if (n == name) return id;
  return std::nullopt;
}

std::optional<int64_t> json_int(const json& v) {
  if (!v.is_number_integer()) return std::nullopt;
  if (v.is_number_unsigned())  // nlohmann keeps every non-negative integer as unsigned
    return v.get<uint64_t>() > uint64_t(INT64_MAX) ? INT64_MAX : int64_t(v.get<uint64_t>());
  return v.get<int64_t>();
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
  // runtime's check: a known version, and a boolean is not one (JSON true is not 1); 1.0 is.
  json version = raw.contains("format_version") ? raw["format_version"] : json();
  bool known = (version.is_number_integer() || version.is_number_float()) &&
               version.get<double>() == kFormatVersion;
  if (!known)
    throw BundleError(mpath + ": unknown format_version " + py_repr(version) +
                      "; this runtime reads 1 (upgrade inbedder?)");
  Manifest m;
  try {
    m = parse(raw);
  } catch (const FieldError& e) {
    throw BundleError(mpath + ": " + e.msg);
  }
  std::vector<std::string> needed{m.tokenizer_file};
  for (const auto& [role, g] : m.graphs) {
    needed.push_back(g.file);
    if (g.data) needed.push_back(*g.data);
    if (g.row_ops) needed.push_back(*g.row_ops);
  }
  for (const auto& name : needed) {
    bool listed = false;
    for (const auto& [f, rec] : m.files) listed = listed || f == name;
    if (!listed)
      throw BundleError(mpath + ": file " + py_str_repr(name) +
                        " is used but has no checksum entry");
  }
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
    if (rec.bytes != uint64_t(st.st_size))
      throw BundleError(path + ": size " + std::to_string(st.st_size) +
                        " differs from the manifest's " + std::to_string(rec.bytes) +
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
    const std::string& want = rec.sha256;
    auto s = stamp.find(name);
    const bool known = s != stamp.end() && s->second == stamp_entry(want, st);
    if (known) entries[name] = s->second;
    if (name == m.tokenizer_file) {  // read once: what is hashed is what gets parsed
      struct stat after;
      try {
        b.tokenizer_json = read_file(path, rec.bytes + 1, &after);
      } catch (const std::exception& e) {
        throw BundleError(e.what());
      }
      // Always hashed (a few MB): the bytes parsed are the bytes checked, stamp or not.
      if (b.tokenizer_json.size() != rec.bytes ||
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
      if (digest != want) throw BundleError(path + bad_sum);
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
