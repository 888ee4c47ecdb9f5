// INSTRUCTOR embedders (recipe instructor), as runtime/instructor.py: the model sees
// (instruction + text).strip(); the graph "encoder" mean-pools the last hidden states from
// position pool_start on (where the mask is 1) and applies the Dense projection; the manifest's
// post-processing L2-normalises. pool_start (B,) is a graph input, one per text, counted by the
// manifest's pooling.pool_start rule (Pipeline::tokenize), so a batch can mix instructions of
// different lengths. There is no answer.
#include "pipeline.hpp"

namespace inbedder {
namespace {

// runtime/instructor.py's check_manifest: a pool_start rule (without it the instruction would be
// pooled too), then EmbeddingGraphPipeline's.
void check(const Manifest& m, const std::string& origin) {
  if (!m.pooling.contains("pool_start"))
    throw BundleError(origin + ": pooling.pool_start is missing (which tokens are the text's)");
  EmbeddingGraphPipeline::check(m, origin);
}

// Built on first use (no order of static initialisation across files to depend on).
const FamilyChecks& checks() {
  static const FamilyChecks c{
      "instructor", {"instructor"}, EmbeddingGraphPipeline::graphs(), check, nullptr};
  return c;
}

class InstructorPipeline : public EmbeddingGraphPipeline {
 public:
  InstructorPipeline(const Bundle& bundle, const std::string& device, const OpenSettings& open)
      : EmbeddingGraphPipeline(bundle, checks(), device, open) {}
};

}  // namespace

std::unique_ptr<Pipeline> make_instructor(const Bundle& bundle, const std::string& device,
                                          const OpenSettings& open) {
  return std::make_unique<InstructorPipeline>(bundle, device, open);
}

}  // namespace inbedder
