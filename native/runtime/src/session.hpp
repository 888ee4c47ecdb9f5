// ONNX Runtime sessions, as runtime/session.py: device choice ("cpu" | "cuda" | "auto"), thread
// counts, session options, and an error (never a silent CPU run) when CUDA cannot be had.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <memory>
#include <string>
#include <vector>

#include "bundle.hpp"

namespace inbedder {

// The process-wide ONNX Runtime environment (created on first use).
Ort::Env& ort_env();

// "cpu" | "cuda" | "auto" -> "cpu" | "cuda"; throws ValueError / DeviceError (ORT's reason).
std::string resolve_device(const std::string& device);

// The logical CPUs this process may run on (its affinity mask), as runtime/session.py's.
int available_cores();

// One session for graph file `path` on the resolved device; threads 0 = available_cores().
std::unique_ptr<Ort::Session> make_session(const std::string& path, const GraphSpec& spec,
                                           const std::string& device, int threads);

}  // namespace inbedder
