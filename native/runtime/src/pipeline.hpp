// The pipeline a bundle family runs (tokenize -> run graph(s) -> pool), as runtime/pipeline.py:
// a base class with overridable stages and the registry from the manifest's `family`. The
// Embedder (embedder.hpp) owns input checks, batching and post-processing; a pipeline sees one
// batch at a time. Every stage is const and keeps per-call state on the stack, so one pipeline
// serves several threads at once.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bundle.hpp"
#include "inbedder/tokenizer.hpp"
#include "prompt.hpp"

namespace inbedder {

// Per-call family options that were given (absent: the manifest's default).
using FamilyOptions = std::map<std::string, long long>;

// An int64 host tensor: data + shape; `value()` is an Ort::Value viewing it (keep it alive).
struct I64Tensor {
  std::vector<int64_t> data;
  std::vector<int64_t> shape;
  Ort::Value value();
};

// Ort outputs of one call, by name.
using Outputs = std::map<std::string, Ort::Value>;

// Copies a float32 / float16 / float64 tensor to float32.
std::vector<float> to_float(const Ort::Value& v);
// Copies an int64 / int32 tensor to int64.
std::vector<int64_t> to_int64(const Ort::Value& v);
std::vector<int64_t> shape_of(const Ort::Value& v);

class Pipeline {
 public:
  Pipeline(const std::string& root, const Manifest& manifest, const std::string& device,
           int threads);
  virtual ~Pipeline() = default;

  virtual bool answers() const { return true; }
  // Family option names accepted by encode (runtime's `Pipeline.options`).
  virtual std::vector<std::string> option_names() const { return {}; }

  virtual std::vector<Encoded> tokenize(const std::vector<std::string>& texts,
                                        const std::vector<std::string>& instructions,
                                        const std::string& truncation) const;
  // Writes (B, D) float32 embeddings (before post-processing) to out and, if asked, B answers.
  virtual void embed_batch(const std::vector<const Encoded*>& batch, bool want_answers,
                           const FamilyOptions& options, float* out,
                           std::vector<std::string>* answers) const = 0;

  const Manifest& manifest() const { return manifest_; }
  std::string decode_answer(const std::vector<int64_t>& ids) const;

 protected:
  // Runs graph `role` with the inputs it declares, taken from `inputs` (by name).
  Outputs run(const std::string& role, std::map<std::string, Ort::Value>& inputs) const;
  // Right padding: input_ids, attention_mask, token_type_ids (B, T), slot_positions (B, S),
  // pool_start (B,).
  std::map<std::string, I64Tensor> pad(const std::vector<const Encoded*>& batch) const;
  const Ort::Session& session(const std::string& role) const;

  std::string root_;
  Manifest manifest_;
  std::string device_;
  tok::Tokenizer tokenizer_;
  std::unique_ptr<PromptTokenizer> prompts_;
  std::map<std::string, std::unique_ptr<Ort::Session>> sessions_;
  int64_t pad_id_ = 0;
};

// The registry: manifest family -> pipeline (BundleError for an unknown family).
std::unique_ptr<Pipeline> make_pipeline(const std::string& root, const Manifest& manifest,
                                        const std::string& device, int threads);

// Family factories (masked.cpp, causal.cpp, instructor.cpp).
std::unique_ptr<Pipeline> make_masked(const std::string&, const Manifest&, const std::string&, int);
std::unique_ptr<Pipeline> make_causal(const std::string&, const Manifest&, const std::string&, int);
std::unique_ptr<Pipeline> make_instructor(const std::string&, const Manifest&, const std::string&,
                                          int);

}  // namespace inbedder
