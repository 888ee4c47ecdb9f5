// ONNX Runtime sessions, as runtime/session.py: device choice ("cpu" | "cuda" | "auto"), thread
// counts, session options, and an error (never a silent CPU run) when CUDA cannot be had.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <memory>
#include <string>
#include <vector>

#include "bundle.hpp"
#include "session_cache.hpp"

namespace inbedder {

// The process-wide ONNX Runtime environment (created on first use).
Ort::Env& ort_env();

// "cpu" | "cuda" | "auto" -> "cpu" | "cuda"; throws ValueError / DeviceError (ORT's reason).
std::string resolve_device(const std::string& device);

// The logical CPUs this process may run on (its affinity mask), as runtime/session.py's.
int available_cores();

// The CPU thread pool of a session, as runtime/session.py's ThreadOptions: intra-op threads
// (0 = available_cores()), and whether idle pool threads busy-wait for the next operator's work
// (onnxruntime's session.intra_op / inter_op.allow_spinning) instead of sleeping. Spinning saves
// a wake-up per operator on an idle machine but burns the cores other processes need; off by
// default, as in the Python runtime.
struct ThreadOptions {
  int threads = 0;
  bool spinning = false;
};

// What every session of one open shares: the thread pool, the session cache directory
// ("" = none; runtime/session_cache.py: CPU sessions only), and whether CPU sessions run a
// graph's row-ops form (graphs.<role>.row_ops, row_ops.hpp) when the bundle has one.
struct OpenSettings {
  ThreadOptions threads;
  std::string session_cache;
  bool row_ops = true;
};

// The options of a session for graph `spec` on the resolved device (without its provider), its
// thread pool as `threads` says; with `row_ops`, inbedder's row operators registered.
Ort::SessionOptions session_options(const GraphSpec& spec, const std::string& device,
                                    const ThreadOptions& threads, bool row_ops = false);

// The settings of session_options that shape the graph onnxruntime optimizes, and the optimizers
// `spec` disables: what a session-cache entry is keyed on besides the graph's files (the JSON of
// runtime/session.py's cache_settings, so that both runtimes share entries).
nlohmann::json cache_settings(const GraphSpec& spec);

// One session for graph file `path` on the resolved device, its thread pool as `threads` says;
// on the CPU with a cache slot, opened from the slot's entry when usable, else from `path`,
// saving the entry on the way (runtime/session.py's make_session). `row_ops`: `path` is the
// graph's row-ops form (CPU only).
std::unique_ptr<Ort::Session> make_session(const std::string& path, const GraphSpec& spec,
                                           const std::string& device, const ThreadOptions& threads,
                                           const CacheSlot* cache = nullptr, bool row_ops = false);

}  // namespace inbedder
