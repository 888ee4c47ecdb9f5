// Sentence-transformers encoders (family sentence-encoder): the graph interface of instructor
// (graph "encoder": input_ids, attention_mask, [token_type_ids], pool_start (B,) -> "embedding"
// (B, D)); pool_start is 0 for every text unless the manifest's pooling.pool_start rule says
// otherwise. No answers.
#include "pipeline.hpp"

namespace inbedder {
namespace {

class SentenceEncoderPipeline : public EmbeddingGraphPipeline {
 public:
  using EmbeddingGraphPipeline::EmbeddingGraphPipeline;
  bool needs_instruction() const override { return false; }  // an optional query prefix
};

}  // namespace

std::unique_ptr<Pipeline> make_sentence_encoder(const Bundle& bundle, const std::string& device,
                                                int threads) {
  return std::make_unique<SentenceEncoderPipeline>(bundle, device, threads);
}

}  // namespace inbedder
