// The runtime over any bundle, as runtime/embedder.py: argument checks (naming the offending
// index), batching by token length with the original order restored, post-processing
// (standardize, l2) and optional normalisation. Family work is the pipeline's.
#pragma once

#include <cstdint>
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
  std::string precision = "float32";  // of the output: one of kOutputPrecisions
  FamilyOptions family;               // decode_steps, max_new_tokens, ... as given
};

// The output precisions, as runtime/embedder.py's OUTPUT_PRECISIONS (sentence-transformers'
// quantize_embeddings).
inline constexpr const char* kOutputPrecisions[] = {"float32", "float16", "int8",
                                                    "uint8",   "binary",  "ubinary"};

// Vectors in an output precision: n rows of `cols` elements of `element_bytes` bytes each,
// row-major (float16: IEEE binary16 bits; binary / ubinary: sign bits packed 8 per byte, the
// first dimension in the high bit, as int8 offset by -128 / uint8).
struct QuantizedOutput {
  std::string precision = "float32";
  std::size_t n = 0, cols = 0, element_bytes = 4;
  std::vector<uint8_t> bytes;
};

// (n, dim) float32 -> `precision`, as runtime/embedder.py's quantize_output (ValueError for
// int8 / uint8 of a single vector: their ranges come from the texts of the call).
QuantizedOutput quantize_output(const std::vector<float>& emb, std::size_t dim,
                                const std::string& precision);

struct EncodeResult {
  std::size_t n = 0, dim = 0;
  std::vector<float> vectors;        // (n, dim) row-major
  std::vector<std::string> answers;  // n entries when asked for, else empty
  QuantizedOutput output;  // vectors in params.precision (float32: empty bytes, see vectors)
};

// The manifest's post-processing steps on (n, dim) vectors, in place (ValueError if unknown).
void postprocess(std::vector<float>& emb, std::size_t dim, const std::vector<std::string>& steps);

class Embedder {
 public:
  // device: "cpu" | "cuda" | "auto"; open.threads.threads 0 = the cores this process may use.
  Embedder(const std::string& bundle_dir, const std::string& device, const OpenSettings& open,
           Verify verify);

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
