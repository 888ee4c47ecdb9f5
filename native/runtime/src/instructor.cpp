// Encoders that pool the text and leave the instruction out (families instructor and
// sentence-encoder), as runtime/instructor.py. The graph "encoder" mean-pools the last hidden
// states from position pool_start on (where the mask is 1), applies any projection, and returns
// "embedding" (B, D); the manifest's post-processing L2-normalises. pool_start is a runtime
// input, one per text, so a batch can mix instructions of different lengths. No answers.
//
// manifest pooling.pool_start: absent -> 0 for every text; {"count": "instruction", "strip",
// "offset"} -> max(tokens of (strip ? instruction.strip() : instruction) encoded alone with
// special tokens + offset, 0).
#include <unordered_map>

#include "pipeline.hpp"

namespace inbedder {
namespace {

class InstructorPipeline : public Pipeline {
 public:
  InstructorPipeline(const std::string& root, const Manifest& m, const std::string& device,
                     int threads)
      : Pipeline(root, m, device, threads) {
    if (manifest_.pooling.contains("pool_start") && !manifest_.pooling["pool_start"].is_null()) {
      const auto& ps = manifest_.pooling["pool_start"];
      if (!ps.is_object() || ps.value("count", std::string()) != "instruction")
        throw BundleError("pooling.pool_start: unknown rule " + ps.dump() +
                          " (known: {\"count\": \"instruction\", \"strip\", \"offset\"})");
      count_instruction_ = true;
      strip_ = ps.value("strip", false);
      offset_ = ps.value("offset", 0LL);
    }
  }

  bool answers() const override { return false; }

  long long instruction_tokens(const std::string& instruction) const {
    std::size_t n = prompts_->token_count(strip_ ? py_strip(instruction) : instruction);
    return std::max<long long>((long long)n + offset_, 0);
  }

  std::vector<Encoded> tokenize(const std::vector<std::string>& texts,
                                const std::vector<std::string>& instructions,
                                const std::string& truncation) const override {
    std::vector<Encoded> out = Pipeline::tokenize(texts, instructions, truncation);
    if (!count_instruction_) return out;
    std::unordered_map<std::string, long long> counts;
    for (std::size_t i = 0; i < out.size(); ++i) {
      auto it = counts.find(instructions[i]);
      if (it == counts.end())
        it = counts.emplace(instructions[i], instruction_tokens(instructions[i])).first;
      out[i].pool_start = it->second;
    }
    return out;
  }

  void embed_batch(const std::vector<const Encoded*>& batch, bool, const FamilyOptions&, float* out,
                   std::vector<std::string>*) const override {
    auto arrays = pad(batch);
    std::map<std::string, Ort::Value> feed;
    for (auto& [name, tensor] : arrays) feed.emplace(name, tensor.value());
    Outputs o = run("encoder", feed);
    const Ort::Value& e = o.at("embedding");  // (B, D)
    std::vector<int64_t> shape = shape_of(e);
    if (shape.size() != 2 || shape[1] != manifest_.embedding_dim)
      throw BundleError("embedding output has width " + std::to_string(shape.back()) +
                        ", the manifest says " + std::to_string(manifest_.embedding_dim));
    std::vector<float> v = to_float(e);
    std::copy(v.begin(), v.end(), out);
  }

 private:
  bool count_instruction_ = false;
  bool strip_ = false;
  long long offset_ = 0;
};

}  // namespace

std::unique_ptr<Pipeline> make_instructor(const std::string& root, const Manifest& m,
                                          const std::string& device, int threads) {
  return std::make_unique<InstructorPipeline>(root, m, device, threads);
}

}  // namespace inbedder
