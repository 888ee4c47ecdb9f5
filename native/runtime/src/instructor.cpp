// INSTRUCTOR embedders (recipe instructor), as runtime/instructor.py: the model sees
// (instruction + text).strip(); the graph "encoder" mean-pools the last hidden states from
// position pool_start on (where the mask is 1) and applies the Dense projection; the manifest's
// post-processing L2-normalises. pool_start (B,) is a graph input, one per text, counted by the
// manifest's pooling.pool_start rule (Pipeline::tokenize), so a batch can mix instructions of
// different lengths. There is no answer.
#include "pipeline.hpp"

namespace inbedder {

std::unique_ptr<Pipeline> make_instructor(const Bundle& bundle, const std::string& device,
                                          int threads) {
  return std::make_unique<EmbeddingGraphPipeline>(bundle, device, threads);
}

}  // namespace inbedder
