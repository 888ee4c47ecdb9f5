// The pipeline a bundle family runs (tokenize -> run graph(s) -> pool), as runtime/pipeline.py:
// a base class with overridable stages and the registry from the manifest's `family`. The
// Embedder (embedder.hpp) owns input checks, batching and post-processing; a pipeline sees one
// batch at a time. Every stage is const and keeps per-call state on the stack, so one pipeline
// serves several threads at once.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bundle.hpp"
#include "inbedder/tokenizer.hpp"
#include "prompt.hpp"
#include "session.hpp"

namespace inbedder {

// Per-call family options: as given by the caller, or resolved (every option of the family).
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

// What a family needs of a manifest (runtime's Pipeline.check_manifest and the families'
// overrides), checked at open right after the tokenizer is parsed, before anything is built.
struct FamilyChecks {
  std::string family;
  std::vector<std::string> recipes;  // the recipes the family runs
  // Per graph role, the outputs the pipeline reads (manifest order of the Python class).
  std::vector<std::pair<std::string, std::vector<std::string>>> graphs;
  // The family's own checks, made before the base ones (the Python override's code before its
  // super() call) and after them. They throw BundleError prefixed with `origin`.
  void (*before)(const Manifest&, const std::string& origin) = nullptr;
  void (*after)(const Manifest&, const std::string& origin) = nullptr;
};

// The base checks (runtime/pipeline.py's Pipeline.check_manifest): the recipe is one the family
// runs, every graph role it needs with the outputs it reads, source.vocab_size, special tokens
// and decode.special_ids inside the vocabulary, the slot token in it; the family's own checks
// around them. BundleError "<origin>: ..." with the Python runtime's words.
void check_manifest(const FamilyChecks& family, const Manifest& m, const tok::Tokenizer& tokenizer,
                    const std::string& origin);

class Pipeline {
 public:
  // The bundle as load_bundle checked it (its tokenizer parsed from the bytes that were hashed),
  // checked against what `family` needs.
  Pipeline(const Bundle& bundle, const FamilyChecks& family, const std::string& device,
           const OpenSettings& open);
  virtual ~Pipeline() = default;

  virtual bool answers() const { return true; }
  // Whether the recipes embed a text under an instruction (the CLI then requires one).
  virtual bool needs_instruction() const { return true; }
  // Per-call options of the family and their defaults (runtime's `Pipeline.options`).
  virtual std::vector<std::pair<std::string, long long>> options() const { return {}; }
  // Every option of the family: the call's value, else the manifest's options[name], else the
  // default; each checked (OptionError for a name the family does not take, ValueError for a
  // bad value).
  FamilyOptions resolve_options(const FamilyOptions& asked) const;

  // Prompts -> Encoded, with pool_start from the manifest's pooling.pool_start rule.
  virtual std::vector<Encoded> tokenize(const std::vector<std::string>& texts,
                                        const std::vector<std::string>& instructions,
                                        const std::string& truncation) const;
  // Writes (B, D) float32 embeddings (before post-processing) to out and, if asked, B answers;
  // options are resolved (resolve_options).
  virtual void embed_batch(const std::vector<const Encoded*>& batch, bool want_answers,
                           const FamilyOptions& options, float* out,
                           std::vector<std::string>* answers) const = 0;

  const Manifest& manifest() const { return manifest_; }
  const std::string& family() const { return manifest_.family; }
  std::string decode_answer(const std::vector<int64_t>& ids) const;

 protected:
  // Runs graph `role` with the inputs it declares, taken from `inputs` (by name).
  Outputs run(const std::string& role, std::map<std::string, Ort::Value>& inputs) const;
  // Right padding: input_ids, attention_mask, token_type_ids (B, T), slot_positions (B, S),
  // pool_start (B,).
  std::map<std::string, I64Tensor> pad(const std::vector<const Encoded*>& batch) const;
  const Ort::Session& session(const std::string& role) const;
  // Every graph's session, checked against the manifest's inputs and outputs (BundleError).
  std::map<std::string, std::unique_ptr<Ort::Session>> open_sessions(
      const OpenSettings& open) const;
  virtual long long check_option(const std::string& name, long long value) const;
  long long pool_start(const std::string& instruction, const nlohmann::ordered_json& rule) const;

  std::string root_;
  Manifest manifest_;
  std::string device_;
  // Declared before tokenizer_: started first (see the constructor), joined by sessions_.
  std::future<std::map<std::string, std::unique_ptr<Ort::Session>>> opening_;
  tok::Tokenizer tokenizer_;
  std::unique_ptr<PromptTokenizer> prompts_;
  std::map<std::string, std::unique_ptr<Ort::Session>> sessions_;
  int64_t pad_id_ = 0;
};

// Families whose graph pools and projects itself: one pass of graph "encoder", output
// "embedding" (B, D); no answers (instructor, sentence-encoder).
class EmbeddingGraphPipeline : public Pipeline {
 public:
  using Pipeline::Pipeline;
  // Graph "encoder" with output "embedding", and the pooling.pool_start rule a known one
  // (runtime's EmbeddingGraphPipeline.check_manifest, before the base checks).
  static std::vector<std::pair<std::string, std::vector<std::string>>> graphs();
  static void check(const Manifest& m, const std::string& origin);
  bool answers() const override { return false; }
  void embed_batch(const std::vector<const Encoded*>& batch, bool want_answers,
                   const FamilyOptions& options, float* out,
                   std::vector<std::string>* answers) const override;
};

// "name must be an int in lo..hi, got v" / "a positive int" (runtime's positive_int).
long long positive_int(const std::string& name, const nlohmann::ordered_json& value, long long lo,
                       std::optional<long long> hi);

// The registry: manifest family -> pipeline (BundleError for an unknown family).
std::unique_ptr<Pipeline> make_pipeline(const Bundle& bundle, const std::string& device,
                                        const OpenSettings& open);

// Family factories, one per file named as the Python module (masked_lm.cpp, causal_lm.cpp,
// instructor.cpp, sentence_encoder.cpp).
using Factory = std::unique_ptr<Pipeline> (*)(const Bundle&, const std::string&,
                                              const OpenSettings&);
std::unique_ptr<Pipeline> make_masked_lm(const Bundle&, const std::string&, const OpenSettings&);
std::unique_ptr<Pipeline> make_causal_lm(const Bundle&, const std::string&, const OpenSettings&);
std::unique_ptr<Pipeline> make_instructor(const Bundle&, const std::string&, const OpenSettings&);
std::unique_ptr<Pipeline> make_sentence_encoder(const Bundle&, const std::string&,
                                                const OpenSettings&);

}  // namespace inbedder
