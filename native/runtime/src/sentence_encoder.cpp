// Sentence-transformers encoders (family sentence-encoder): the graph interface of instructor
// (graph "encoder": input_ids, attention_mask, [token_type_ids], pool_start (B,) -> "embedding"
// (B, D)); pool_start is 0 for every text unless the manifest's pooling.pool_start rule says
// otherwise. No answers.
#include "pipeline.hpp"

namespace inbedder {
namespace {

// runtime/sentence_encoder.py: EmbeddingGraphPipeline's checks, its one recipe.
// Built on first use (no order of static initialisation across files to depend on).
const FamilyChecks& checks() {
  static const FamilyChecks c{"sentence-encoder",
                              {"sentence-embedding"},
                              EmbeddingGraphPipeline::graphs(),
                              EmbeddingGraphPipeline::check,
                              nullptr};
  return c;
}

class SentenceEncoderPipeline : public EmbeddingGraphPipeline {
 public:
  SentenceEncoderPipeline(const Bundle& bundle, const std::string& device, const OpenSettings& open)
      : EmbeddingGraphPipeline(bundle, checks(), device, open) {}
  bool needs_instruction() const override { return false; }  // an optional query prefix
};

}  // namespace

std::unique_ptr<Pipeline> make_sentence_encoder(const Bundle& bundle, const std::string& device,
                                                const OpenSettings& open) {
  return std::make_unique<SentenceEncoderPipeline>(bundle, device, open);
}

}  // namespace inbedder
