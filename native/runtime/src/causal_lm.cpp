// Causal-LM answer embedders (recipes causal-answer, causal-answer-avg), as runtime/causal_lm.py:
// left-pad the prompts (as the reference), run the graph "decoder" once over the prompt with an
// empty KV cache, then feed one token per step with the cache the previous call returned, until
// every text has emitted EOS or max_new_tokens tokens. A finished text keeps being fed the pad
// token (masked in); its answer is the decoded tokens with special tokens skipped.
//
// Pooling (manifest): fst_gen = s_0, the state at the last prompt position; avg_gen = mean of
// {s_0} and {s_k : k >= 1, g_k not special}, where s_k is the state of the pass fed g_{k-1} and
// g_k the token it chose (special = decode.special_ids + eos + pad); when no s_k qualifies, the
// mean of s_0 and s_1 (s_1 computed by one more pass if the decode stopped after one token).
#include <algorithm>
#include <set>

#include "pipeline.hpp"

namespace inbedder {
namespace {

// runtime/causal_lm.py's check_manifest, before the base checks: the KV cache's shape (positive
// ints), an EOS token (the decode stops there), a known pooling type.
void check(const Manifest& m, const std::string& origin) {
  auto cache = m.options.find("cache");
  bool ok = cache != m.options.end() && cache->is_object();
  for (const char* k : {"layers", "kv_heads", "head_dim"}) {
    if (!ok) break;
    auto v = cache->find(k);
    // A JSON integer (a boolean is not one) >= 1.
    ok = v != cache->end() && json_int(*v) && *json_int(*v) >= 1;
  }
  if (!ok)
    throw BundleError(origin +
                      ": options.cache must be an object of positive ints layers, kv_heads, "
                      "head_dim; got " +
                      (cache == m.options.end() ? std::string("None") : py_repr(*cache)));
  if (!m.special_token("eos"))
    throw BundleError(origin + ": special_tokens.eos is missing (the decode stops there)");
  auto type = m.pooling.find("type");
  if (type != m.pooling.end() && *type != "fst_gen" && *type != "avg_gen")
    throw BundleError(origin + ": pooling.type must be 'fst_gen' or 'avg_gen'");
}

// After the base checks: the decoder takes the cache of every layer.
void check_cache_inputs(const Manifest& m, const std::string& origin) {
  const auto& inputs = m.graph("decoder").inputs;
  const int64_t layers = *json_int(m.options.at("cache").at("layers"));
  for (int64_t i = 0; i < layers; ++i)
    for (const char* k : {"key", "value"})
      if (std::find(inputs.begin(), inputs.end(),
                    "past_" + std::string(k) + "_" + std::to_string(i)) == inputs.end())
        throw BundleError(origin + ": graphs.decoder.inputs lack the cache inputs of " +
                          std::to_string(layers) + " layers");
}

const FamilyChecks kChecks{"causal-lm",
                           {"causal-answer", "causal-answer-avg"},
                           {{"decoder", {"logits", "last_hidden"}}},
                           check,
                           check_cache_inputs};

class CausalAnswerPipeline : public Pipeline {
 public:
  CausalAnswerPipeline(const Bundle& bundle, const std::string& device, const OpenSettings& open)
      : Pipeline(bundle, kChecks, device, open) {
    const auto& cache = manifest_.options.at("cache");
    layers_ = *json_int(cache.at("layers"));
    kv_heads_ = *json_int(cache.at("kv_heads"));
    head_dim_ = *json_int(cache.at("head_dim"));
    eos_ = *manifest_.special_token("eos");
    if (manifest_.decode.contains("special_ids"))
      for (const auto& v : manifest_.decode["special_ids"]) special_.insert(*json_int(v));
    special_.insert(eos_);
    special_.insert(pad_id_);
    const Ort::Session& sess = session("decoder");
    Ort::AllocatorWithDefaultOptions alloc;
    past_type_ = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    for (std::size_t i = 0; i < sess.GetInputCount(); ++i) {
      std::string name = sess.GetInputNameAllocated(i, alloc).get();
      if (name.rfind("past_", 0) == 0) {
        past_type_ = sess.GetInputTypeInfo(i).GetTensorTypeAndShapeInfo().GetElementType();
        break;
      }
    }
    avg_ = manifest_.pooling.contains("type") && manifest_.pooling["type"] == "avg_gen";
  }

  std::vector<std::pair<std::string, long long>> options() const override {
    return {{"max_new_tokens", 3}};
  }

  long long check_option(const std::string& name, long long value) const override {
    return positive_int(name, value, 1, std::nullopt);
  }

  void embed_batch(const std::vector<const Encoded*>& batch, bool want_answers,
                   const FamilyOptions& options, float* out,
                   std::vector<std::string>* answers) const override {
    const long long budget = options.at("max_new_tokens");
    const int64_t b = int64_t(batch.size());
    int64_t longest = 0;
    for (const Encoded* e : batch) longest = std::max<int64_t>(longest, int64_t(e->ids.size()));
    // Left padding: every prompt ends at the last column, where the answer starts.
    I64Tensor ids{std::vector<int64_t>(std::size_t(b * longest), pad_id_), {b, longest}};
    I64Tensor mask{std::vector<int64_t>(std::size_t(b * longest), 0), {b, longest}};
    I64Tensor position{std::vector<int64_t>(std::size_t(b * longest), 1), {b, longest}};
    for (int64_t i = 0; i < b; ++i) {
      const Encoded& e = *batch[std::size_t(i)];
      int64_t off = longest - int64_t(e.ids.size());
      // Positions as generate computes them: cumsum(mask) - 1, pads at 1 (masked anyway).
      for (int64_t j = 0; j < int64_t(e.ids.size()); ++j) {
        ids.data[std::size_t(i * longest + off + j)] = e.ids[std::size_t(j)];
        mask.data[std::size_t(i * longest + off + j)] = 1;
        position.data[std::size_t(i * longest + off + j)] = j;
      }
    }
    Ort::AllocatorWithDefaultOptions alloc;
    std::map<std::string, Ort::Value> feed;
    std::vector<int64_t> empty_shape{b, kv_heads_, 0, head_dim_};  // (B, heads, 0, head_dim)
    for (int64_t l = 0; l < layers_; ++l) {
      for (const char* k : {"key", "value"}) {
        feed.emplace(
            "past_" + std::string(k) + "_" + std::to_string(l),
            Ort::Value::CreateTensor(alloc, empty_shape.data(), empty_shape.size(), past_type_));
      }
    }
    std::vector<std::vector<float>> states;    // per call: (B, H') state that chose the next token
    std::vector<std::vector<int64_t>> tokens;  // per call: (B,) the token chosen
    std::vector<uint8_t> done(std::size_t(b), 0);
    std::size_t width = 0;
    I64Tensor step_ids;
    Outputs o;
    // Feeds `next` (B,) after the call whose outputs are `o`: mask grows by one column,
    // positions advance, present_* become past_*.
    auto advance = [&](const std::vector<int64_t>& next) {
      int64_t t = mask.shape[1];
      I64Tensor m2{std::vector<int64_t>(std::size_t(b * (t + 1)), 1), {b, t + 1}};
      I64Tensor p2{std::vector<int64_t>(std::size_t(b), 0), {b, 1}};
      for (int64_t i = 0; i < b; ++i) {
        std::copy_n(mask.data.begin() + i * t, t, m2.data.begin() + i * (t + 1));
        p2.data[std::size_t(i)] =
            position.data[std::size_t(i * position.shape[1] + position.shape[1] - 1)] + 1;
      }
      mask = std::move(m2);
      position = std::move(p2);
      step_ids = I64Tensor{next, {b, 1}};
      std::map<std::string, Ort::Value> f2;
      for (auto& [name, v] : o)
        if (name.rfind("present_", 0) == 0) f2.emplace("past_" + name.substr(8), std::move(v));
      feed = std::move(f2);
    };
    I64Tensor* cur_ids = &ids;
    for (long long step = 0; step < budget; ++step) {
      feed.erase("input_ids");
      feed.erase("attention_mask");
      feed.erase("position_ids");
      feed.emplace("input_ids", cur_ids->value());
      feed.emplace("attention_mask", mask.value());
      feed.emplace("position_ids", position.value());
      o = run("decoder", feed);
      std::vector<float> logits = to_float(o.at("logits"));  // (B, V)
      std::size_t v = logits.size() / std::size_t(b);
      std::vector<int64_t> next(static_cast<std::size_t>(b));
      for (int64_t i = 0; i < b; ++i) {
        const float* row = logits.data() + std::size_t(i) * v;
        std::size_t arg = std::size_t(std::max_element(row, row + v) - row);  // first max
        next[std::size_t(i)] = done[std::size_t(i)] ? pad_id_ : int64_t(arg);
      }
      std::vector<float> hidden = to_float(o.at("last_hidden"));  // (B, H')
      width = hidden.size() / std::size_t(b);
      states.push_back(std::move(hidden));
      tokens.push_back(next);
      bool all = true;
      for (int64_t i = 0; i < b; ++i) {
        done[std::size_t(i)] = done[std::size_t(i)] || next[std::size_t(i)] == eos_;
        all = all && done[std::size_t(i)];
      }
      if (all || step == budget - 1) break;
      advance(next);
      cur_ids = &step_ids;
    }
    if (width != std::size_t(manifest_.embedding_dim))
      throw BundleError("last_hidden has width " + std::to_string(width) + ", the manifest says " +
                        std::to_string(manifest_.embedding_dim));
    const std::size_t g = tokens.size();
    if (!avg_) {
      std::copy(states[0].begin(), states[0].end(), out);
    } else {
      std::vector<float> s1;  // s_1 when the decode stopped after one token
      if (g == 1) {
        advance(tokens[0]);
        feed.emplace("input_ids", step_ids.value());
        feed.emplace("attention_mask", mask.value());
        feed.emplace("position_ids", position.value());
        s1 = to_float(run("decoder", feed).at("last_hidden"));
      }
      for (int64_t i = 0; i < b; ++i) {
        std::vector<std::size_t> keep{0};
        for (std::size_t k = 1; k < g; ++k)
          if (!special_.count(tokens[k][std::size_t(i)])) keep.push_back(k);
        float* dst = out + std::size_t(i) * width;
        if (keep.size() > 1) {
          for (std::size_t c = 0; c < width; ++c) {
            float acc = 0.f;
            for (std::size_t k : keep) acc += states[k][std::size_t(i) * width + c];
            dst[c] = acc / float(keep.size());
          }
        } else {
          const std::vector<float>& second = g == 1 ? s1 : states[1];
          for (std::size_t c = 0; c < width; ++c)
            dst[c] =
                (states[0][std::size_t(i) * width + c] + second[std::size_t(i) * width + c]) / 2.f;
        }
      }
    }
    if (want_answers) {
      for (int64_t i = 0; i < b; ++i) {
        std::vector<int64_t> row(g);
        for (std::size_t k = 0; k < g; ++k) row[k] = tokens[k][std::size_t(i)];
        answers->push_back(decode_answer(row));
      }
    }
  }

 private:
  int64_t layers_ = 0, kv_heads_ = 0, head_dim_ = 0, eos_ = 0;
  std::set<int64_t> special_;
  ONNXTensorElementDataType past_type_;
  bool avg_ = false;
};

}  // namespace

std::unique_ptr<Pipeline> make_causal_lm(const Bundle& bundle, const std::string& device,
                                         const OpenSettings& open) {
  return std::make_unique<CausalAnswerPipeline>(bundle, device, open);
}

}  // namespace inbedder
