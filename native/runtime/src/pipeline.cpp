// The base pipeline's stages and the family registry (runtime/pipeline.py).
#include "pipeline.hpp"

#include <algorithm>

#include "session.hpp"

namespace inbedder {
namespace {

const Ort::MemoryInfo& cpu_memory() {
  static Ort::MemoryInfo info = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  return info;
}

struct Family {
  const char* name;
  std::unique_ptr<Pipeline> (*make)(const std::string&, const Manifest&, const std::string&, int);
};
// Sorted by name (the error message lists them in this order).
const Family kFamilies[] = {{"causal-lm", make_causal},
                            {"instructor", make_instructor},
                            {"masked-lm", make_masked},
                            {"sentence-encoder", make_instructor}};

}  // namespace

Ort::Value I64Tensor::value() {
  return Ort::Value::CreateTensor<int64_t>(cpu_memory(), data.data(), data.size(), shape.data(),
                                           shape.size());
}

std::vector<int64_t> shape_of(const Ort::Value& v) {
  return v.GetTensorTypeAndShapeInfo().GetShape();
}

std::vector<float> to_float(const Ort::Value& v) {
  auto info = v.GetTensorTypeAndShapeInfo();
  std::size_t n = info.GetElementCount();
  std::vector<float> out(n);
  switch (info.GetElementType()) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: {
      const float* p = v.GetTensorData<float>();
      std::copy(p, p + n, out.begin());
      break;
    }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: {
      const Ort::Float16_t* p = v.GetTensorData<Ort::Float16_t>();
      for (std::size_t i = 0; i < n; ++i) out[i] = p[i].ToFloat();
      break;
    }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: {
      const double* p = v.GetTensorData<double>();
      for (std::size_t i = 0; i < n; ++i) out[i] = float(p[i]);
      break;
    }
    default:
      throw std::runtime_error("graph output has an element type that is not a float type");
  }
  return out;
}

std::vector<int64_t> to_int64(const Ort::Value& v) {
  auto info = v.GetTensorTypeAndShapeInfo();
  std::size_t n = info.GetElementCount();
  std::vector<int64_t> out(n);
  if (info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
    const int64_t* p = v.GetTensorData<int64_t>();
    std::copy(p, p + n, out.begin());
  } else if (info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) {
    const int32_t* p = v.GetTensorData<int32_t>();
    std::copy(p, p + n, out.begin());
  } else {
    throw std::runtime_error("graph output has an element type that is not an integer type");
  }
  return out;
}

Pipeline::Pipeline(const std::string& root, const Manifest& manifest, const std::string& device,
                   int threads)
    : root_(root),
      manifest_(manifest),
      device_(device),
      tokenizer_(tok::Tokenizer::from_file(pure_path(root + "/" + manifest.tokenizer_file))) {
  prompts_ = std::make_unique<PromptTokenizer>(tokenizer_, manifest_.prompt, manifest_.truncation);
  for (const auto& [role, g] : manifest_.graphs)
    sessions_[role] = make_session(pure_path(root + "/" + g.file), g, device, threads);
  auto it = manifest_.special_tokens.find("pad");
  pad_id_ = it == manifest_.special_tokens.end() ? 0 : it->second;
}

const Ort::Session& Pipeline::session(const std::string& role) const {
  auto it = sessions_.find(role);
  if (it == sessions_.end())
    throw BundleError("the bundle has no graph '" + role + "' (family " + manifest_.family + ")");
  return *it->second;
}

std::vector<Encoded> Pipeline::tokenize(const std::vector<std::string>& texts,
                                        const std::vector<std::string>& instructions,
                                        const std::string& truncation) const {
  std::vector<Encoded> out;
  out.reserve(texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i)
    out.push_back(prompts_->encode(texts[i], instructions[i], truncation));
  return out;
}

Outputs Pipeline::run(const std::string& role, std::map<std::string, Ort::Value>& inputs) const {
  const GraphSpec& spec = manifest_.graph(role);
  std::vector<const char*> in_names, out_names;
  std::vector<const OrtValue*> in_values;
  for (const auto& name : spec.inputs) {
    auto it = inputs.find(name);
    if (it == inputs.end())
      throw BundleError("graph '" + role + "' declares an input '" + name + "' that the " +
                        manifest_.family + " runtime does not provide");
    in_names.push_back(name.c_str());
    in_values.push_back(static_cast<const OrtValue*>(it->second));
  }
  for (const auto& name : spec.outputs) out_names.push_back(name.c_str());
  std::vector<OrtValue*> outs(out_names.size(), nullptr);
  // Run is thread-safe on one session; everything of this call lives on this stack.
  Ort::ThrowOnError(
      Ort::GetApi().Run(const_cast<OrtSession*>(static_cast<const OrtSession*>(session(role))),
                        nullptr, in_names.data(), in_values.data(), in_values.size(),
                        out_names.data(), out_names.size(), outs.data()));
  Outputs result;
  for (std::size_t i = 0; i < spec.outputs.size(); ++i)
    result.emplace(spec.outputs[i], Ort::Value(outs[i]));
  return result;
}

std::map<std::string, I64Tensor> Pipeline::pad(const std::vector<const Encoded*>& batch) const {
  // Right padding leaves every real token's position unchanged, so a text's result does not
  // depend on its neighbours.
  int64_t n = int64_t(batch.size()), longest = 0;
  for (const Encoded* e : batch) longest = std::max<int64_t>(longest, int64_t(e->ids.size()));
  int64_t s = batch.empty() ? 0 : int64_t(batch[0]->slots.size());
  std::map<std::string, I64Tensor> a;
  a["input_ids"] = {std::vector<int64_t>(std::size_t(n * longest), pad_id_), {n, longest}};
  a["attention_mask"] = {std::vector<int64_t>(std::size_t(n * longest), 0), {n, longest}};
  a["token_type_ids"] = {std::vector<int64_t>(std::size_t(n * longest), 0), {n, longest}};
  a["slot_positions"] = {std::vector<int64_t>(std::size_t(n * s), 0), {n, s}};  // (B, S)
  a["pool_start"] = {std::vector<int64_t>(std::size_t(n), 0), {n}};             // (B,)
  for (int64_t i = 0; i < n; ++i) {
    const Encoded& e = *batch[std::size_t(i)];
    std::copy(e.ids.begin(), e.ids.end(), a["input_ids"].data.begin() + i * longest);
    std::fill_n(a["attention_mask"].data.begin() + i * longest, e.ids.size(), 1);
    std::copy(e.type_ids.begin(), e.type_ids.end(), a["token_type_ids"].data.begin() + i * longest);
    std::copy(e.slots.begin(), e.slots.end(), a["slot_positions"].data.begin() + i * s);
    a["pool_start"].data[std::size_t(i)] = e.pool_start;
  }
  return a;
}

std::string Pipeline::decode_answer(const std::vector<int64_t>& ids) const {
  std::vector<int32_t> v(ids.begin(), ids.end());
  std::string text = tokenizer_.decode(v, true);
  auto it = manifest_.decode.find("clean_up_tokenization_spaces");
  bool clean = it != manifest_.decode.end() && it->is_boolean() && it->get<bool>();
  return clean ? tok::clean_up_tokenization(std::move(text)) : text;
}

std::unique_ptr<Pipeline> make_pipeline(const std::string& root, const Manifest& manifest,
                                        const std::string& device, int threads) {
  std::string known;
  for (const auto& f : kFamilies) {
    if (manifest.family == f.name) return f.make(root, manifest, device, threads);
    known += (known.empty() ? "" : ", ") + std::string(f.name);
  }
  throw BundleError("bundle family '" + manifest.family +
                    "' is not supported by this runtime (known: " + known + ")");
}

}  // namespace inbedder
