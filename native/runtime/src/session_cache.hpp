// The session cache, as runtime/session_cache.py: a graph as onnxruntime optimized it for this
// machine, weights pre-packed, saved once so later opens skip both steps. Same directory layout,
// key and entry.json as the Python runtime, so either runtime opens the entries the other wrote
// (README "Session cache"). The native runtime rebuilds an unusable entry silently (it has no log).
#pragma once

#include <onnxruntime_cxx_api.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "bundle.hpp"

namespace inbedder {

inline constexpr const char* kCacheFormat = "inbedder-session-cache";
inline constexpr int kCacheVersion = 1;
inline constexpr const char* kCacheEntryName = "entry.json";
inline constexpr const char* kCacheGraphName = "graph.onnx";
inline constexpr const char* kCacheDataName = "graph.onnx.data";
inline constexpr long long kStaleStagingS = 3600;  // runtime/session_cache.py's STALE_STAGING_S

// The machine type and, from /proc/cpuinfo's first CPU, vendor, family, model and the sha256 of
// the sorted feature flags (runtime/session_cache.py's cpu_identity).
nlohmann::json cpu_identity();

// One graph's place in the cache (runtime/session_cache.py's CacheSlot).
class CacheSlot {
 public:
  // The slot of the graph made of `graph_files` of `manifest`, opened with `settings`.
  CacheSlot(const std::string& root, const Manifest& manifest,
            const std::vector<std::string>& graph_files, const nlohmann::json& settings);
  // The entry's graph if the entry is usable; else nullopt (an unusable entry is removed).
  std::optional<std::string> lookup() const;
  void discard() const;
  // A fresh staging directory beside the entry (stale ones removed first), or "" when the cache
  // cannot be written.
  std::string staging() const;
  // Makes a session created with `opts` save its optimized graph into `tmp`.
  void save_options(Ort::SessionOptions& opts, const std::string& tmp) const;
  // Records the saved files and renames `tmp` into place; on any failure removes `tmp`.
  void commit(const std::string& tmp) const;
  const std::string& entry() const { return entry_; }

 private:
  bool usable() const;
  nlohmann::json key_;
  std::string entry_;
};

// The `session_cache` open option as a directory (created when missing); ValueError naming it.
std::string cache_root(const std::string& dir);

}  // namespace inbedder
