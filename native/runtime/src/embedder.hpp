// The runtime over any bundle, as runtime/embedder.py: argument checks (naming the offending
// index), batching by token length with the original order restored, post-processing
// (standardize, l2) and optional normalisation. Family work is the pipeline's.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "bundle.hpp"
#include "pipeline.hpp"

namespace inbedder {

struct EncodeParams {
  long long batch_size = 32;
  bool normalize = false;
  bool answers = false;
  std::string truncation = "input";
  FamilyOptions family;  // decode_steps, max_new_tokens, ... as given
};

struct EncodeResult {
  std::size_t n = 0, dim = 0;
  std::vector<float> vectors;        // (n, dim) row-major
  std::vector<std::string> answers;  // n entries when asked for, else empty
};

// The manifest's post-processing steps on (n, dim) vectors, in place (ValueError if unknown).
void postprocess(std::vector<float>& emb, std::size_t dim, const std::vector<std::string>& steps);

class Embedder {
 public:
  // device: "cpu" | "cuda" | "auto"; threads 0 = ONNX Runtime's default.
  Embedder(const std::string& bundle_dir, const std::string& device, int threads, bool verify);

  std::size_t dim() const { return std::size_t(manifest_.embedding_dim); }
  const Manifest& manifest() const { return manifest_; }
  const std::string& device() const { return device_; }
  const Pipeline& pipeline() const { return *pipeline_; }

  // instructions: 1 (for every text), texts.size(), or none (only for a family whose
  // needs_instruction() is false: each text under ""; else ValueError). Safe to call from several
  // threads at once.
  EncodeResult encode(const std::vector<std::string>& texts,
                      const std::vector<std::string>& instructions,
                      const EncodeParams& params) const;

 private:
  Manifest manifest_;
  std::string device_;
  std::unique_ptr<Pipeline> pipeline_;
};

}  // namespace inbedder
