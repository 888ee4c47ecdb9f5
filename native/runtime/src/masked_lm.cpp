// Masked-LM answer embedders (recipes masked-answer, masked-answer-pair), as runtime/masked_lm.py.
//
// The graph "encoder" returns the slot states (B, S, H), the greedy answer token at each slot
// (B, S) and its log-probability (B, S); the embedding is the mean over the slots of the final
// pass. Iterative unmasking (decode_steps = k, default the manifest's, else 1): after each of the
// first k - 1 passes every text fills its single most confident open slot with that slot's
// argmax token; the final pass gives the embedding and the answer (filled tokens, plus the final
// argmax at slots still open). k ranges over 1..S+1.
#include <limits>

#include "pipeline.hpp"

namespace inbedder {
namespace {

// runtime/masked_lm.py's check_manifest (before the base checks): 1..8 answer slots, and a pad
// token (the graph skips pads when it numbers positions).
void check(const Manifest& m, const std::string& origin) {
  const int slots = m.prompt.answer_slots;
  if (slots < 1 || slots > kMaxAnswerSlots)
    throw BundleError(origin + ": prompt.answer_slots must be in 1.." +
                      std::to_string(kMaxAnswerSlots) + ", got " + std::to_string(slots));
  if (!m.special_token("pad"))
    throw BundleError(origin + ": special_tokens.pad is missing (batches are padded with it)");
}

const FamilyChecks kChecks{"masked-lm",
                           {"masked-answer", "masked-answer-pair"},
                           {{"encoder", {"slot_states", "answer_ids", "answer_logprobs"}}},
                           check,
                           nullptr};

class MaskedAnswerPipeline : public Pipeline {
 public:
  MaskedAnswerPipeline(const Bundle& bundle, const std::string& device, const OpenSettings& open)
      : Pipeline(bundle, kChecks, device, open) {}

  std::vector<std::pair<std::string, long long>> options() const override {
    return {{"decode_steps", 1}};
  }

  // k passes fill at most one slot each before the last: 1..S+1 (slots + 1).
  long long check_option(const std::string& name, long long value) const override {
    return positive_int(name, value, 1, manifest_.prompt.answer_slots + 1);
  }

  void embed_batch(const std::vector<const Encoded*>& batch, bool want_answers,
                   const FamilyOptions& options, float* out,
                   std::vector<std::string>* answers) const override {
    auto arrays = pad(batch);
    const std::vector<int64_t>& slots = arrays["slot_positions"].data;  // (B, S)
    const std::size_t b = batch.size();
    const std::size_t s = std::size_t(arrays["slot_positions"].shape[1]);
    const long long steps = options.at("decode_steps");
    const std::size_t t = std::size_t(arrays["input_ids"].shape[1]);
    std::vector<uint8_t> filled(b * s, 0);
    std::vector<int64_t> chosen(b * s, 0);  // token written into each filled slot
    auto pass = [&]() {
      std::map<std::string, Ort::Value> feed;
      for (auto& [name, tensor] : arrays) feed.emplace(name, tensor.value());
      return run("encoder", feed);
    };
    // A graph that declares want_answers runs its LM head's projection only when it is 1
    // (runtime/masked_lm.py): on every pass before the last, which choose by the answers, and on
    // the last when the call asks for answers.
    arrays["want_answers"] = {{1}, {1}};
    for (long long step = 0; step + 1 < steps; ++step) {
      Outputs o = pass();
      std::vector<float> logp = to_float(o.at("answer_logprobs"));  // (B, S)
      std::vector<int64_t> ids = to_int64(o.at("answer_ids"));      // (B, S)
      for (std::size_t r = 0; r < b; ++r) {
        // The most confident open slot (first of equals, as numpy's argmax).
        std::size_t pick = 0;
        float best = -std::numeric_limits<float>::infinity();
        bool any = false;
        for (std::size_t j = 0; j < s; ++j) {
          float c = filled[r * s + j] ? -std::numeric_limits<float>::infinity() : logp[r * s + j];
          if (!any || c > best) pick = j, best = c, any = true;
        }
        int64_t token = ids[r * s + pick];
        chosen[r * s + pick] = token;
        filled[r * s + pick] = 1;
        arrays["input_ids"].data[r * t + std::size_t(slots[r * s + pick])] = token;
      }
    }
    arrays["want_answers"] = {{want_answers ? 1 : 0}, {1}};
    Outputs o = pass();
    const Ort::Value& sv = o.at("slot_states");
    std::vector<int64_t> shape = shape_of(sv);  // (B, S, H)
    const std::size_t h = std::size_t(shape.at(2));
    if (h != std::size_t(manifest_.embedding_dim))
      throw BundleError("slot_states has width " + std::to_string(h) + ", the manifest says " +
                        std::to_string(manifest_.embedding_dim));
    std::vector<float> states = to_float(sv);
    for (std::size_t r = 0; r < b; ++r) {
      // The answer's representation: mean over the slots, accumulated in float32 like numpy.
      for (std::size_t k = 0; k < h; ++k) {
        float acc = 0.f;
        for (std::size_t j = 0; j < s; ++j) acc += states[(r * s + j) * h + k];
        out[r * h + k] = acc / float(s);
      }
    }
    if (want_answers) {
      std::vector<int64_t> ids = to_int64(o.at("answer_ids"));
      for (std::size_t r = 0; r < b; ++r) {
        std::vector<int64_t> row(s);
        for (std::size_t j = 0; j < s; ++j)
          row[j] = filled[r * s + j] ? chosen[r * s + j] : ids[r * s + j];
        answers->push_back(decode_answer(row));
      }
    }
  }
};

}  // namespace

std::unique_ptr<Pipeline> make_masked_lm(const Bundle& bundle, const std::string& device,
                                         const OpenSettings& open) {
  return std::make_unique<MaskedAnswerPipeline>(bundle, device, open);
}

}  // namespace inbedder
