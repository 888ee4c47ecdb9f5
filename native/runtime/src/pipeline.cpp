// The base pipeline's stages and the family registry (runtime/pipeline.py).
#include "pipeline.hpp"

#include <algorithm>
#include <future>
#if defined(__GLIBC__)
#include <malloc.h>  // malloc_trim
#endif

#include "session.hpp"

namespace inbedder {
namespace {

const Ort::MemoryInfo& cpu_memory() {
  static Ort::MemoryInfo info = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  return info;
}

struct Family {
  const char* name;
  Factory make;
};
const Family kFamilies[] = {{"causal-lm", make_causal_lm},
                            {"instructor", make_instructor},
                            {"masked-lm", make_masked_lm},
                            {"sentence-encoder", make_sentence_encoder}};

// The tokenizer from the bytes load_bundle hashed (never re-read: a file swapped meanwhile cannot
// slip in), with runtime/pipeline.py's error when they are not a tokenizer.
tok::Tokenizer tokenizer_of(const Bundle& bundle) {
  try {
    return tok::Tokenizer::from_json(bundle.tokenizer_json);
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {  // the tokenizer's errors, and its JSON parser's
    std::string first = e.what();
    first = first.substr(0, first.find('\n'));
    throw BundleError(pure_path(bundle.root + "/" + bundle.manifest.tokenizer_file) +
                      ": not a tokenizer `tokenizers` can read (" + first + ")");
  }
}

// runtime/heap.py's: the C heap's free pages back to the OS (glibc only; elsewhere nothing).
void release_free_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

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

void check_manifest(const FamilyChecks& family, const Manifest& m, const tok::Tokenizer& tokenizer,
                    const std::string& origin) {
  using json = nlohmann::ordered_json;
  auto fail = [&](const std::string& msg) { throw BundleError(origin + ": " + msg); };
  if (family.before) family.before(m, origin);
  if (!family.recipes.empty() &&
      std::find(family.recipes.begin(), family.recipes.end(), m.recipe) == family.recipes.end())
    fail("recipe " + py_repr(m.recipe) + " is not one the " + py_repr(family.family) +
         " family runs (" + py_repr(json(family.recipes)) + ")");
  for (const auto& [role, outputs] : family.graphs) {
    if (!m.has_graph(role)) {
      std::vector<std::string> roles;
      for (const auto& [r, o] : family.graphs) roles.push_back(r);
      std::sort(roles.begin(), roles.end());
      fail("graph " + py_repr(role) + " is missing (a " + py_repr(family.family) +
           " bundle needs " + py_repr(json(roles)) + ")");
    }
    const auto& have = m.graph(role).outputs;
    std::vector<std::string> lacking;
    for (const auto& o : outputs)
      if (std::find(have.begin(), have.end(), o) == have.end()) lacking.push_back(o);
    if (!lacking.empty()) fail("graphs." + role + ".outputs lacks " + py_repr(json(lacking)));
  }
  const int64_t vocab = int64_t(tokenizer.vocab_size());  // added tokens included
  int64_t limit = vocab;
  auto table = m.source.find("vocab_size");
  if (table != m.source.end() && !table->is_null()) {
    const std::optional<int64_t> rows_or = json_int(*table);  // a boolean is not an int
    if (!rows_or || *rows_or < 1)
      fail("source.vocab_size must be a positive int, got " + py_repr(*table));
    const int64_t rows = *rows_or;
    if (vocab > rows)
      fail("the tokenizer's vocabulary (" + std::to_string(vocab) +
           " tokens, added ones included) does not fit the graph's embedding table "
           "(source.vocab_size " +
           table->dump() + ")");
    limit = std::min(vocab, rows);
  }
  for (const auto& [name, id] : m.special_tokens)
    if (id >= limit)
      fail("special_tokens." + name + " " + std::to_string(id) + " is outside the vocabulary (" +
           std::to_string(limit) + " tokens)");
  auto ids = m.decode.find("special_ids");
  if (ids != m.decode.end()) {
    bool ok = ids->is_array();
    for (std::size_t k = 0; ok && k < ids->size(); ++k) {
      const json& i = (*ids)[k];
      const std::optional<int64_t> id = json_int(i);
      ok = id && *id >= 0 && *id < limit;
    }
    if (!ok)
      fail("decode.special_ids must be token ids within the vocabulary (" + std::to_string(limit) +
           " tokens)");
  }
  if (m.prompt.slot_token && !tokenizer.token_to_id(*m.prompt.slot_token))
    fail("slot token " + py_repr(*m.prompt.slot_token) + " is not in the tokenizer's vocabulary");
  if (family.after) family.after(m, origin);
}

std::map<std::string, std::unique_ptr<Ort::Session>> Pipeline::open_sessions(
    const OpenSettings& open) const {
  std::map<std::string, std::unique_ptr<Ort::Session>> sessions;
  for (const auto& [role, g] : manifest_.graphs) {
    // The row-ops form gives the same bits (row_ops.hpp); CPU only, as its kernels are.
    const bool row_ops = g.row_ops && device_ == "cpu" && open.row_ops;
    const std::string file = row_ops ? *g.row_ops : g.file;
    const std::string path = pure_path(root_ + "/" + file);
    std::optional<CacheSlot> slot;
    if (!open.session_cache.empty()) {
      std::vector<std::string> files = {file};
      if (g.data) files.push_back(*g.data);
      slot.emplace(open.session_cache, manifest_, files, cache_settings(g));
    }
    auto session = make_session(path, g, device_, open.threads, slot ? &*slot : nullptr, row_ops);
    // The graph's own inputs and outputs against the manifest's (runtime/pipeline.py's words).
    Ort::AllocatorWithDefaultOptions alloc;
    nlohmann::ordered_json declared = nlohmann::ordered_json::array();
    std::vector<std::string> have_out;
    for (std::size_t k = 0; k < session->GetInputCount(); ++k)
      declared.push_back(std::string(session->GetInputNameAllocated(k, alloc).get()));
    for (std::size_t k = 0; k < session->GetOutputCount(); ++k)
      have_out.push_back(session->GetOutputNameAllocated(k, alloc).get());
    std::vector<std::string> a = declared.get<std::vector<std::string>>(), b = g.inputs;
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    if (a != b)
      throw BundleError(path + ": the graph's inputs " + py_repr(declared) +
                        " differ from the manifest's graphs." + role + ".inputs " +
                        py_repr(nlohmann::ordered_json(g.inputs)));
    std::vector<std::string> missing;
    for (const auto& o : g.outputs)
      if (std::find(have_out.begin(), have_out.end(), o) == have_out.end()) missing.push_back(o);
    std::sort(missing.begin(), missing.end());
    missing.erase(std::unique(missing.begin(), missing.end()), missing.end());
    if (!missing.empty())
      throw BundleError(path + ": the graph has no outputs " +
                        py_repr(nlohmann::ordered_json(missing)) + " (graphs." + role +
                        ".outputs)");
    sessions[role] = std::move(session);
  }
  return sessions;
}

Pipeline::Pipeline(const Bundle& bundle, const FamilyChecks& family, const std::string& device,
                   const OpenSettings& open)
    : root_(bundle.root),
      manifest_(bundle.manifest),
      device_(device),
      // The sessions are created on a second thread while this one parses the tokenizer and
      // checks the manifest: the open's two largest costs, independent of each other, and
      // onnxruntime creates a session on one thread (README "The session cache"). Should this
      // thread fail first, the member's destruction waits for the sessions and drops their
      // error: the tokenizer's or manifest's error is the one reported, as when sequential.
      opening_(std::async(std::launch::async, [this, open] { return open_sessions(open); })),
      tokenizer_(tokenizer_of(bundle)) {
  check_manifest(family, manifest_, tokenizer_, pure_path(root_ + "/" + kManifestName));
  prompts_ = std::make_unique<PromptTokenizer>(tokenizer_, manifest_.prompt, manifest_.truncation);
  const std::size_t fixed = prompts_->fixed_tokens();
  if (manifest_.truncation.max_length < fixed)
    throw BundleError(pure_path(root_ + "/" + kManifestName) + ": truncation.max_length " +
                      std::to_string(manifest_.truncation.max_length) + " is below the prompt's " +
                      std::to_string(fixed) +
                      " fixed tokens (template, answer slots, special tokens)");
  release_free_memory();  // the tokenizer parse's freed heap, before the weights fill the process
  sessions_ = opening_.get();
  pad_id_ = manifest_.special_token("pad").value_or(0);
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
  auto it = manifest_.pooling.find("pool_start");
  if (it == manifest_.pooling.end() || it->is_null() || (it->is_object() && it->empty()))
    return out;
  std::map<std::string, long long> starts;  // one count per distinct instruction
  for (std::size_t i = 0; i < out.size(); ++i) {
    auto s = starts.find(instructions[i]);
    if (s == starts.end())
      s = starts.emplace(instructions[i], pool_start(instructions[i], *it)).first;
    out[i].pool_start = s->second;
  }
  return out;
}

long long Pipeline::pool_start(const std::string& instruction,
                               const nlohmann::ordered_json& rule) const {
  // The token count of the instruction encoded alone (special tokens included; stripped first
  // if `strip`) plus `offset` (-1 leaves its closing special token pooled, as INSTRUCTOR and
  // sentence-transformers count); 0 for an empty instruction.
  if (!rule.is_object() || !rule.contains("count") || rule["count"] != "instruction")
    throw BundleError("unknown pooling.pool_start rule " + py_repr(rule) + " in the manifest");
  bool strip = rule.contains("strip") && rule["strip"].is_boolean() && rule["strip"].get<bool>();
  long long offset = rule.contains("offset") && rule["offset"].is_number_integer()
                         ? rule["offset"].get<long long>()
                         : 0;
  std::string text = strip ? py_strip(instruction) : instruction;
  if (text.empty()) return 0;  // nothing to leave out
  // A stand-in of a very long instruction counts differently, but past every position of the
  // (truncated) prompt either way: nothing of it is pooled, as with the full count.
  std::string storage;
  std::size_t n = prompts_->token_count(prompts_->stand_in(text, storage));
  return std::max<long long>((long long)n + offset, 0);
}

long long positive_int(const std::string& name, const nlohmann::ordered_json& value, long long lo,
                       std::optional<long long> hi) {
  bool ok = value.is_number_integer() && value.get<long long>() >= lo &&
            (!hi || value.get<long long>() <= *hi);
  if (!ok) {
    std::string span = hi        ? "an int in " + std::to_string(lo) + ".." + std::to_string(*hi)
                       : lo == 1 ? std::string("a positive int")
                                 : "an int >= " + std::to_string(lo);
    throw ValueError(name + " must be " + span + ", got " + py_repr(value));
  }
  return value.get<long long>();
}

long long Pipeline::check_option(const std::string&, long long value) const { return value; }

FamilyOptions Pipeline::resolve_options(const FamilyOptions& asked) const {
  auto opts = options();
  std::vector<std::string> names, unknown;
  for (const auto& [n, d] : opts) names.push_back(n);
  for (const auto& [n, v] : asked)
    if (std::find(names.begin(), names.end(), n) == names.end()) unknown.push_back(n);
  if (!unknown.empty()) {
    auto list = [](std::vector<std::string> v) {
      std::sort(v.begin(), v.end());
      std::string s;
      for (const auto& x : v) s += (s.empty() ? "'" : ", '") + x + "'";
      return "[" + s + "]";
    };
    throw OptionError("unknown option(s) " + list(unknown) + " for a " + py_repr(family()) +
                      " bundle (accepted: " + (names.empty() ? std::string("none") : list(names)) +
                      ")");
  }
  FamilyOptions out;
  for (const auto& [name, dflt] : opts) {
    auto a = asked.find(name);
    if (a != asked.end()) {
      out[name] = check_option(name, a->second);
      continue;
    }
    auto m = manifest_.options.find(name);
    if (m != manifest_.options.end() && !m->is_null()) {
      if (!m->is_number_integer() || m->is_boolean())
        out[name] = check_option(name, positive_int(name, *m, 1, std::nullopt));
      else
        out[name] = check_option(name, m->get<long long>());
    } else {
      out[name] = check_option(name, dflt);
    }
  }
  return out;
}

void EmbeddingGraphPipeline::embed_batch(const std::vector<const Encoded*>& batch, bool,
                                         const FamilyOptions&, float* out,
                                         std::vector<std::string>*) const {
  auto arrays = pad(batch);
  std::map<std::string, Ort::Value> feed;
  for (auto& [name, tensor] : arrays) feed.emplace(name, tensor.value());
  Outputs o = run("encoder", feed);
  const Ort::Value& e = o.at("embedding");  // (B, D)
  std::vector<int64_t> shape = shape_of(e);
  if (shape.size() != 2 || shape[1] != manifest_.embedding_dim)
    throw BundleError("the graph's embedding output has width " + std::to_string(shape.back()) +
                      ", the manifest says " + std::to_string(manifest_.embedding_dim));
  std::vector<float> v = to_float(e);
  std::copy(v.begin(), v.end(), out);
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

std::vector<std::pair<std::string, std::vector<std::string>>> EmbeddingGraphPipeline::graphs() {
  return {{"encoder", {"embedding"}}};
}

void EmbeddingGraphPipeline::check(const Manifest& m, const std::string& origin) {
  auto rule = m.pooling.find("pool_start");
  if (rule != m.pooling.end() && !rule->is_null() &&
      (!rule->is_object() || !rule->contains("count") || (*rule)["count"] != "instruction"))
    throw BundleError(origin + ": unknown pooling.pool_start rule " + py_repr(*rule));
}

std::unique_ptr<Pipeline> make_pipeline(const Bundle& bundle, const std::string& device,
                                        const OpenSettings& open) {
  for (const auto& f : kFamilies)
    if (bundle.manifest.family == f.name) return f.make(bundle, device, open);
  throw BundleError("bundle family " + py_repr(bundle.manifest.family) +
                    " is not supported by this runtime (upgrade inbedder?)");
}

}  // namespace inbedder
