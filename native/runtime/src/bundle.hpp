// The bundle's manifest (inbedder.json) and the checks made at open, as runtime/bundle.py.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "stamp.hpp"

namespace inbedder {

inline constexpr const char* kManifestName = "inbedder.json";
inline constexpr const char* kFormatName = "inbedder-bundle";
inline constexpr int kFormatVersion = 1;
inline constexpr int kMaxAnswerSlots = 8;  // runtime/bundle.py's MAX_ANSWER_SLOTS

// Same cases and texts as runtime/bundle.py's BundleError.
class BundleError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Python's ValueError / TypeError equivalents (an argument or option the caller got wrong).
class ValueError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class OptionError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class UnsupportedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class DeviceError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct PromptSpec {
  std::vector<std::string> segments;  // 1 template, or 2 (a text pair)
  std::optional<std::string> slot_token;
  int answer_slots = 0;
  bool strip = false;
};

struct TruncationSpec {
  std::size_t max_length = 512;
  std::string side = "right";
  std::string strategy = "longest_first";
};

struct GraphSpec {
  std::string file;
  std::optional<std::string> data;
  // The same graph rewritten with inbedder's row operators (row_ops.hpp), reading the same data.
  std::optional<std::string> row_ops;
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
  std::vector<std::string> cpu_disabled_optimizers;
};

struct FileRecord {
  uint64_t bytes = 0;
  std::string sha256;  // 64 lowercase hex digits
};

// The manifest, read as runtime/bundle.py's Manifest.from_json: every field type-checked (a
// boolean is not an int, 1.0 is not one either), ranges, known values and plain file names, with
// its messages; the objects the families read (pooling, decode, source, options) kept as JSON.
struct Manifest {
  std::string family;
  std::string recipe;
  PromptSpec prompt;
  TruncationSpec truncation;
  std::vector<std::pair<std::string, GraphSpec>> graphs;  // manifest order
  int64_t embedding_dim = 0;
  nlohmann::ordered_json pooling;
  std::vector<std::string> postprocess;
  std::vector<std::pair<std::string, int64_t>> special_tokens;  // manifest order
  nlohmann::ordered_json decode;
  std::string precision = "fp32";
  nlohmann::ordered_json source;  // the checkpoint's record (source.vocab_size is checked)
  nlohmann::ordered_json options;
  std::vector<std::pair<std::string, FileRecord>> files;  // manifest order
  std::string tokenizer_file = "tokenizer.json";
  int format_version = kFormatVersion;

  const GraphSpec& graph(const std::string& role) const;
  bool has_graph(const std::string& role) const;
  std::optional<int64_t> special_token(const std::string& name) const;
};

// Python's str(pathlib.Path(p)): no trailing or doubled slashes, no "." components.
std::string pure_path(const std::string& p);
// A JSON integer's value (Python's int: a boolean is not one, 1.0 is not one), saturated at
// INT64_MAX past it; nullopt for anything else.
std::optional<int64_t> json_int(const nlohmann::ordered_json& v);
// Python's repr() of a JSON value, for messages (None, 'text', 2, [...]).
std::string py_repr(const nlohmann::ordered_json& v);

// One complete, checked version of a bundle: the directory holding its files, its manifest, and
// the tokenizer's text exactly as hashed (what the runtime parses: never re-read).
struct Bundle {
  std::string root;
  Manifest manifest;
  std::string tokenizer_json;
};

// As runtime/bundle.py's load_bundle: a plain bundle directory, or a versioned one (a pointer file
// "inbedder.current" naming a "v-..." sub-directory). Checks one complete version (every listed
// file a regular file inside it, no symbolic link leaving it or standing for a listed file,
// sizes, and per `verify` each sha256: "stamp" skips a file whose verified-stamp entry still
// matches (stamp.hpp; the tokenizer is always hashed), "full" hashes all, "none" none; the
// first two write the stamp after a load in which every file matched) and runs build(bundle) while
// holding a shared flock on that version's directory, so a replace cannot remove it meanwhile; when
// the pointer moved while reading, starts again on the new version (50 attempts). Throws
// BundleError.
void load_bundle(const std::string& bundle_dir, Verify verify,
                 const std::function<void(const Bundle&)>& build);

// Reads and checks the bundle's manifest (load_bundle without a build step).
Manifest load_manifest(const std::string& bundle_dir, Verify verify = Verify::Stamp);

}  // namespace inbedder
