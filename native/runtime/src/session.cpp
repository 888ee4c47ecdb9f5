// Session options match runtime/session.py: all graph optimizations, weights through the
// device allocator (not the arena), the thread pool as ThreadOptions says (intra-op threads = the
// cores this process may use unless asked, inter-op 1, no spinning unless asked), and on CPU the
// manifest's cpu_disabled_optimizers (the fusions the quantizer left out for CPU on purpose); the
// session cache as runtime/session.py's make_session uses it.
#include "session.hpp"

#include <sched.h>

#include <algorithm>
#include <filesystem>
#include <mutex>
#include <thread>

#include "row_ops.hpp"

namespace inbedder {
namespace {

// Appends the CUDA provider; returns ORT's error text, or "" on success.
std::string append_cuda(Ort::SessionOptions& opts) {
  const OrtApi& api = Ort::GetApi();
  OrtCUDAProviderOptionsV2* cuda = nullptr;
  OrtStatus* st = api.CreateCUDAProviderOptions(&cuda);
  if (st == nullptr) {
    st = api.SessionOptionsAppendExecutionProvider_CUDA_V2(opts, cuda);
    api.ReleaseCUDAProviderOptions(cuda);
  }
  if (st == nullptr) return "";
  std::string msg = api.GetErrorMessage(st);
  api.ReleaseStatus(st);
  return msg.empty() ? "unknown error" : msg;
}

std::string available_providers() {
  std::string out;
  for (const auto& p : Ort::GetAvailableProviders()) out += (out.empty() ? "" : ", ") + p;
  return out;
}

}  // namespace

int available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1, int(std::thread::hardware_concurrency()));
}

Ort::Env& ort_env() {
  static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "inbedder");
  return env;
}

std::string resolve_device(const std::string& device) {
  if (device != "cpu" && device != "cuda" && device != "auto")
    throw ValueError("device must be one of ('cpu', 'cuda', 'auto'), got '" + device + "'");
  if (device == "cpu") return device;
  Ort::SessionOptions probe;
  std::string why = append_cuda(probe);
  if (why.empty()) return "cuda";
  if (device == "auto") return "cpu";
  throw DeviceError(
      "device='cuda' was asked for but onnxruntime cannot use the CUDAExecutionProvider: " + why +
      " (available: " + available_providers() +
      "). Use an onnxruntime-gpu library on a machine with an NVIDIA GPU, or device='cpu'.");
}

Ort::SessionOptions session_options(const GraphSpec& spec, const std::string& device,
                                    const ThreadOptions& threads, bool row_ops) {
  Ort::SessionOptions opts;
  if (row_ops) add_row_ops(opts);
  opts.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  opts.AddConfigEntry("session.use_device_allocator_for_initializers", "1");
  opts.SetIntraOpNumThreads(threads.threads > 0 ? threads.threads : available_cores());
  opts.SetInterOpNumThreads(1);  // sequential execution: the inter-op pool is not used
  // By default idle pool threads sleep instead of busy-waiting (Python's ThreadOptions.spinning
  // = False): a spinning pool burns the cores other processes need and, when one of its cores is
  // taken, waits on a preempted spinner (README, "Thread pool: spinning"; with one core busy the
  // native runtime spun at 1.5x the CPU per text and 0.66x the Python runtime's speed,
  // bench/native.py). The "spinning" open option turns it on for both pools, as Python's apply.
  const char* spin = threads.spinning ? "1" : "0";
  opts.AddConfigEntry("session.intra_op.allow_spinning", spin);
  opts.AddConfigEntry("session.inter_op.allow_spinning", spin);
  if (device != "cuda" && !spec.cpu_disabled_optimizers.empty()) {
    // ';'-separated: onnxruntime's header says "comma separated", but its parser splits on ';'
    // (1.32: "A,B" disables nothing, "A;B" both; checked against the Python API's
    // disabled_optimizers on an int8 graph).
    std::string list;
    for (const auto& o : spec.cpu_disabled_optimizers) list += (list.empty() ? "" : ";") + o;
    opts.AddConfigEntry("optimization.disable_specified_optimizers", list.c_str());
  }
  return opts;
}

nlohmann::json cache_settings(const GraphSpec& spec) {
  std::vector<std::string> disabled = spec.cpu_disabled_optimizers;
  std::sort(disabled.begin(), disabled.end());
  // As session_options sets them (runtime/session.py's OPTIMIZATION).
  return {{"graph_optimization_level", "ORT_ENABLE_ALL"},
          {"use_device_allocator_for_initializers", "1"},
          {"cpu_disabled_optimizers", disabled}};
}

std::unique_ptr<Ort::Session> make_session(const std::string& path, const GraphSpec& spec,
                                           const std::string& device, const ThreadOptions& threads,
                                           const CacheSlot* cache, bool row_ops) {
  std::string staging;
  if (device == "cpu" && cache != nullptr) {
    if (auto cached = cache->lookup()) {
      try {
        Ort::SessionOptions opts = session_options(spec, device, threads, row_ops);
        return std::make_unique<Ort::Session>(ort_env(), cached->c_str(), opts);
      } catch (const Ort::Exception&) {
        cache->discard();  // a saved graph this onnxruntime cannot open: rebuilt below
      }
    }
    staging = cache->staging();
  }
  Ort::SessionOptions opts = session_options(spec, device, threads, row_ops);
  if (device == "cuda") {
    std::string why = append_cuda(opts);
    if (!why.empty())
      throw DeviceError("CUDAExecutionProvider could not be initialised for " + path + ": " + why);
  }
  if (!staging.empty()) cache->save_options(opts, staging);
  std::unique_ptr<Ort::Session> session;
  try {
    session = std::make_unique<Ort::Session>(ort_env(), path.c_str(), opts);
  } catch (...) {
    if (!staging.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(staging, ec);
    }
    throw;
  }
  if (!staging.empty()) cache->commit(staging);
  return session;
}

}  // namespace inbedder
