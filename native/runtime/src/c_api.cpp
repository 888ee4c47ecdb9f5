// The C API (include/inbedder/inbedder.h) over Embedder: handles, options, results, and the
// boundary where every exception becomes an inbedder_status plus a per-thread message.
#include <cstring>
#include <map>
#include <new>
#include <string>
#include <variant>

#include "embedder.hpp"
#include "inbedder/inbedder.h"
#include "inbedder/tokenizer.hpp"

struct inbedder_options {
  std::map<std::string, std::variant<long long, std::string>> values;
};

struct inbedder_model {
  std::unique_ptr<inbedder::Embedder> embedder;
};

struct inbedder_result {
  inbedder::EncodeResult r;
  bool has_answers = false;
};

namespace {

using inbedder::OptionError;
using inbedder::ValueError;

thread_local std::string g_error;

enum class Kind { Open, Encode };
struct OptionInfo {
  const char* name;
  Kind kind;
  bool is_string;
};
const OptionInfo kOptions[] = {
    {"device", Kind::Open, true},          {"threads", Kind::Open, false},
    {"verify", Kind::Open, false},         {"spinning", Kind::Open, false},
    {"session_cache", Kind::Open, true},   {"row_ops", Kind::Open, false},
    {"batch_size", Kind::Encode, false},   {"truncation", Kind::Encode, true},
    {"normalize", Kind::Encode, false},    {"answers", Kind::Encode, false},
    {"decode_steps", Kind::Encode, false}, {"max_new_tokens", Kind::Encode, false},
    {"precision", Kind::Encode, true},
};

const OptionInfo* find_option(const char* name) {
  for (const auto& o : kOptions)
    if (std::strcmp(o.name, name) == 0) return &o;
  return nullptr;
}

std::string known_names() {
  std::string out;
  for (const auto& o : kOptions) out += (out.empty() ? "" : ", ") + std::string(o.name);
  return out;
}

inbedder_status fail(inbedder_status s, const std::string& msg) {
  g_error = msg;
  return s;
}

// Runs f, mapping every exception to a status (nothing crosses the C boundary).
template <class F>
inbedder_status guard(F&& f) {
  g_error.clear();
  try {
    return f();
  } catch (const inbedder::BundleError& e) {
    return fail(INBEDDER_ERR_BUNDLE, e.what());
  } catch (const inbedder::DeviceError& e) {
    return fail(INBEDDER_ERR_DEVICE, e.what());
  } catch (const OptionError& e) {
    return fail(INBEDDER_ERR_UNKNOWN_OPTION, e.what());
  } catch (const inbedder::UnsupportedError& e) {
    return fail(INBEDDER_ERR_UNSUPPORTED, e.what());
  } catch (const ValueError& e) {
    return fail(INBEDDER_ERR_INVALID_ARGUMENT, e.what());
  } catch (const inbedder::tok::TokenizerError& e) {
    return fail(INBEDDER_ERR_RUNTIME, std::string("tokenizer: ") + e.what());
  } catch (const Ort::Exception& e) {
    return fail(INBEDDER_ERR_RUNTIME, std::string("onnxruntime: ") + e.what());
  } catch (const std::bad_alloc&) {
    return fail(INBEDDER_ERR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(INBEDDER_ERR_INTERNAL, e.what());
  } catch (...) {
    return fail(INBEDDER_ERR_INTERNAL, "unknown error");
  }
}

#define NEED(ptr) \
  if (!(ptr)) return fail(INBEDDER_ERR_INVALID_ARGUMENT, #ptr " is NULL")

// Rejects options of the other kind (an encode option given to open, or the reverse).
void check_kind(const inbedder_options* o, Kind kind) {
  if (!o) return;
  for (const auto& [name, value] : o->values) {
    if (find_option(name.c_str())->kind != kind)
      throw OptionError("option '" + name + "' is " +
                        (kind == Kind::Open ? "an encode option, not an open option"
                                            : "an open option, not an encode option"));
  }
}

long long get_int(const inbedder_options* o, const char* name, long long dflt) {
  if (!o) return dflt;
  auto it = o->values.find(name);
  return it == o->values.end() ? dflt : std::get<long long>(it->second);
}

// An int option that must be 0 or 1; `choices` says what each means (ValueError otherwise).
bool get_flag(const inbedder_options* o, const char* name, bool dflt, const char* choices) {
  const long long v = get_int(o, name, dflt ? 1 : 0);
  if (v != 0 && v != 1)
    throw ValueError(std::string(name) + " must be " + choices + ", got " + std::to_string(v));
  return v == 1;
}

std::string get_str(const inbedder_options* o, const char* name, const char* dflt) {
  if (!o) return dflt;
  auto it = o->values.find(name);
  return it == o->values.end() ? dflt : std::get<std::string>(it->second);
}

// "verify": a string "stamp" | "full" | "none", or an int 1 ("stamp", the default) / 0 ("none"),
// as the Python runtime's verify=True / False.
inbedder::Verify verify_of(const inbedder_options* o) {
  if (!o) return inbedder::Verify::Stamp;
  auto it = o->values.find("verify");
  if (it == o->values.end()) return inbedder::Verify::Stamp;
  if (const auto* s = std::get_if<std::string>(&it->second)) return inbedder::verify_mode(*s);
  long long v = std::get<long long>(it->second);
  if (v != 0 && v != 1)
    throw ValueError("verify must be one of ['stamp', 'full', 'none'] (or 1 / 0), got " +
                     std::to_string(v));
  return v ? inbedder::Verify::Stamp : inbedder::Verify::None;
}

inbedder::EncodeParams params_of(const inbedder_options* o) {
  check_kind(o, Kind::Encode);
  inbedder::EncodeParams p;
  p.batch_size = get_int(o, "batch_size", 32);
  p.normalize = get_int(o, "normalize", 0) != 0;
  p.answers = get_int(o, "answers", 0) != 0;
  p.truncation = get_str(o, "truncation", "input");
  p.precision = get_str(o, "precision", "float32");
  if (o) {
    for (const char* name : {"decode_steps", "max_new_tokens"}) {
      auto it = o->values.find(name);
      if (it != o->values.end()) p.family[name] = std::get<long long>(it->second);
    }
  }
  return p;
}

}  // namespace

extern "C" {

const char* inbedder_version(void) { return "0.1.0"; }

const char* inbedder_status_name(inbedder_status s) {
  switch (s) {
    case INBEDDER_OK:
      return "INBEDDER_OK";
    case INBEDDER_ERR_INVALID_ARGUMENT:
      return "INBEDDER_ERR_INVALID_ARGUMENT";
    case INBEDDER_ERR_UNKNOWN_OPTION:
      return "INBEDDER_ERR_UNKNOWN_OPTION";
    case INBEDDER_ERR_BUNDLE:
      return "INBEDDER_ERR_BUNDLE";
    case INBEDDER_ERR_DEVICE:
      return "INBEDDER_ERR_DEVICE";
    case INBEDDER_ERR_BUFFER_TOO_SMALL:
      return "INBEDDER_ERR_BUFFER_TOO_SMALL";
    case INBEDDER_ERR_UNSUPPORTED:
      return "INBEDDER_ERR_UNSUPPORTED";
    case INBEDDER_ERR_RUNTIME:
      return "INBEDDER_ERR_RUNTIME";
    case INBEDDER_ERR_OUT_OF_RANGE:
      return "INBEDDER_ERR_OUT_OF_RANGE";
    case INBEDDER_ERR_OUT_OF_MEMORY:
      return "INBEDDER_ERR_OUT_OF_MEMORY";
    case INBEDDER_ERR_INTERNAL:
      return "INBEDDER_ERR_INTERNAL";
  }
  return "INBEDDER_ERR_UNKNOWN_STATUS";
}

const char* inbedder_last_error(void) { return g_error.c_str(); }

inbedder_status inbedder_options_create(inbedder_options** out) {
  return guard([&] {
    NEED(out);
    *out = new inbedder_options();
    return INBEDDER_OK;
  });
}

void inbedder_options_destroy(inbedder_options* options) { delete options; }

inbedder_status inbedder_options_set_string(inbedder_options* options, const char* name,
                                            const char* value) {
  return guard([&] {
    NEED(options);
    NEED(name);
    NEED(value);
    const OptionInfo* info = find_option(name);
    if (!info)
      return fail(INBEDDER_ERR_UNKNOWN_OPTION,
                  "unknown option '" + std::string(name) + "' (known: " + known_names() + ")");
    if (!info->is_string && std::strcmp(name, "verify") != 0)  // verify takes both
      return fail(INBEDDER_ERR_INVALID_ARGUMENT,
                  "option '" + std::string(name) + "' takes an int (inbedder_options_set_int)");
    options->values[name] = std::string(value);
    return INBEDDER_OK;
  });
}

inbedder_status inbedder_options_set_int(inbedder_options* options, const char* name, long value) {
  return guard([&] {
    NEED(options);
    NEED(name);
    const OptionInfo* info = find_option(name);
    if (!info)
      return fail(INBEDDER_ERR_UNKNOWN_OPTION,
                  "unknown option '" + std::string(name) + "' (known: " + known_names() + ")");
    if (info->is_string && std::strcmp(name, "verify") != 0)
      return fail(
          INBEDDER_ERR_INVALID_ARGUMENT,
          "option '" + std::string(name) + "' takes a string (inbedder_options_set_string)");
    options->values[name] = static_cast<long long>(value);
    return INBEDDER_OK;
  });
}

inbedder_status inbedder_options_clear(inbedder_options* options, const char* name) {
  return guard([&] {
    NEED(options);
    NEED(name);
    if (!find_option(name))
      return fail(INBEDDER_ERR_UNKNOWN_OPTION,
                  "unknown option '" + std::string(name) + "' (known: " + known_names() + ")");
    options->values.erase(name);
    return INBEDDER_OK;
  });
}

inbedder_status inbedder_model_open(const char* bundle_dir, const inbedder_options* options,
                                    inbedder_model** out) {
  if (out) *out = nullptr;
  return guard([&] {
    NEED(out);
    NEED(bundle_dir);
    check_kind(options, Kind::Open);
    long long threads = get_int(options, "threads", 0);
    if (threads < 0 || threads > 1024)
      return fail(
          INBEDDER_ERR_INVALID_ARGUMENT,
          "threads must be 0 (the default) or a positive int, got " + std::to_string(threads));
    // The Python runtime's spinning=True / False (ThreadOptions), checked before anything is read.
    const bool spinning =
        get_flag(options, "spinning", false,
                 "0 (the default: idle pool threads sleep) or 1 (they busy-wait)");
    const bool row_ops = get_flag(options, "row_ops", true,
                                  "1 (the default: a graph's row-ops form when the bundle has one) "
                                  "or 0 (the stock graph)");
    std::string cache = get_str(options, "session_cache", "");
    if (!cache.empty()) cache = inbedder::cache_root(cache);
    auto m = std::make_unique<inbedder_model>();
    m->embedder = std::make_unique<inbedder::Embedder>(
        bundle_dir, get_str(options, "device", "cpu"),
        inbedder::OpenSettings{{int(threads), spinning}, cache, row_ops}, verify_of(options));
    *out = m.release();
    return INBEDDER_OK;
  });
}

void inbedder_model_close(inbedder_model* model) { delete model; }

inbedder_status inbedder_model_dim(const inbedder_model* model, size_t* dim) {
  return guard([&] {
    NEED(model);
    NEED(dim);
    *dim = model->embedder->dim();
    return INBEDDER_OK;
  });
}

inbedder_status inbedder_model_info(const inbedder_model* model, const char* key,
                                    const char** value) {
  return guard([&] {
    NEED(model);
    NEED(key);
    NEED(value);
    const auto& m = model->embedder->manifest();
    std::string k = key;
    if (k == "recipe")
      *value = m.recipe.c_str();
    else if (k == "family")
      *value = m.family.c_str();
    else if (k == "precision")
      *value = m.precision.c_str();
    else if (k == "device")
      *value = model->embedder->device().c_str();
    else if (k == "needs_instruction")
      *value = model->embedder->pipeline().needs_instruction() ? "yes" : "no";
    else
      return fail(INBEDDER_ERR_INVALID_ARGUMENT,
                  "unknown info key '" + k +
                      "' (known: recipe, family, precision, device, needs_instruction)");
    return INBEDDER_OK;
  });
}

inbedder_status inbedder_model_answers(const inbedder_model* model, int* answers) {
  return guard([&] {
    NEED(model);
    NEED(answers);
    *answers = model->embedder->pipeline().answers() ? 1 : 0;
    return INBEDDER_OK;
  });
}

inbedder_status inbedder_encode(inbedder_model* model, const char* const* texts,
                                const size_t* text_lengths, size_t n_texts,
                                const char* const* instructions, size_t n_instructions,
                                const inbedder_options* options, inbedder_result** out) {
  if (out) *out = nullptr;
  return guard([&] {
    NEED(out);
    NEED(model);
    if (n_texts == 0) return fail(INBEDDER_ERR_INVALID_ARGUMENT, "no texts (n_texts == 0)");
    NEED(texts);
    if (n_instructions && !instructions)
      return fail(INBEDDER_ERR_INVALID_ARGUMENT,
                  "instructions is NULL but n_instructions is " + std::to_string(n_instructions));
    if (n_instructions != 0 && n_instructions != 1 && n_instructions != n_texts)
      return fail(INBEDDER_ERR_INVALID_ARGUMENT,
                  "got " + std::to_string(n_instructions) + " instructions for " +
                      std::to_string(n_texts) + " texts; give one, or one per text");
    std::vector<std::string> t, ins;
    t.reserve(n_texts);
    for (size_t i = 0; i < n_texts; ++i) {
      if (!texts[i])
        return fail(INBEDDER_ERR_INVALID_ARGUMENT, "texts[" + std::to_string(i) + "] is NULL");
      t.emplace_back(texts[i], text_lengths ? text_lengths[i] : std::strlen(texts[i]));
    }
    for (size_t i = 0; i < n_instructions; ++i) {
      if (!instructions[i])
        return fail(INBEDDER_ERR_INVALID_ARGUMENT,
                    "instructions[" + std::to_string(i) + "] is NULL");
      ins.emplace_back(instructions[i]);
    }
    inbedder::EncodeParams p = params_of(options);
    auto res = std::make_unique<inbedder_result>();
    res->r = model->embedder->encode(t, ins, p);
    res->has_answers = p.answers;
    *out = res.release();
    return INBEDDER_OK;
  });
}

inbedder_status inbedder_result_embeddings(const inbedder_result* result, const float** data,
                                           size_t* n, size_t* dim) {
  return guard([&] {
    NEED(result);
    NEED(data);
    *data = result->r.vectors.data();
    if (n) *n = result->r.n;
    if (dim) *dim = result->r.dim;
    return INBEDDER_OK;
  });
}

inbedder_status inbedder_result_copy_embeddings(const inbedder_result* result, float* buffer,
                                                size_t capacity, size_t* required) {
  return guard([&] {
    NEED(result);
    size_t need = result->r.vectors.size();
    if (required) *required = need;
    if (capacity < need)
      return fail(INBEDDER_ERR_BUFFER_TOO_SMALL, "buffer holds " + std::to_string(capacity) +
                                                     " floats; " + std::to_string(need) +
                                                     " needed");
    NEED(buffer);
    std::copy(result->r.vectors.begin(), result->r.vectors.end(), buffer);
    return INBEDDER_OK;
  });
}

inbedder_status inbedder_result_output_shape(const inbedder_result* result, const char** precision,
                                             size_t* n, size_t* cols, size_t* element_bytes) {
  return guard([&] {
    NEED(result);
    const inbedder::QuantizedOutput& q = result->r.output;
    if (precision) *precision = q.precision.c_str();
    if (n) *n = q.n;
    if (cols) *cols = q.cols;
    if (element_bytes) *element_bytes = q.element_bytes;
    return INBEDDER_OK;
  });
}

inbedder_status inbedder_result_copy_output(const inbedder_result* result, void* buffer,
                                            size_t capacity, size_t* required) {
  return guard([&] {
    NEED(result);
    const inbedder::QuantizedOutput& q = result->r.output;
    const bool f32 = q.precision == "float32";
    const size_t need = f32 ? result->r.vectors.size() * sizeof(float) : q.bytes.size();
    if (required) *required = need;
    if (capacity < need)
      return fail(INBEDDER_ERR_BUFFER_TOO_SMALL, "buffer holds " + std::to_string(capacity) +
                                                     " bytes; " + std::to_string(need) +
                                                     " needed (" + q.precision + " output)");
    NEED(buffer);
    if (need)
      std::memcpy(buffer, f32 ? static_cast<const void*>(result->r.vectors.data()) : q.bytes.data(),
                  need);
    return INBEDDER_OK;
  });
}

inbedder_status inbedder_result_answer(const inbedder_result* result, size_t index,
                                       const char** answer, size_t* length) {
  return guard([&] {
    NEED(result);
    NEED(answer);
    if (!result->has_answers)
      return fail(INBEDDER_ERR_UNSUPPORTED,
                  "the encode did not ask for answers (option 'answers' = 1)");
    if (index >= result->r.answers.size())
      return fail(INBEDDER_ERR_OUT_OF_RANGE, "answer index " + std::to_string(index) +
                                                 " >= " + std::to_string(result->r.answers.size()));
    *answer = result->r.answers[index].c_str();
    if (length) *length = result->r.answers[index].size();
    return INBEDDER_OK;
  });
}

void inbedder_result_free(inbedder_result* result) { delete result; }

inbedder_status inbedder_embed(inbedder_model* model, const char* const* texts, size_t n_texts,
                               const char* instruction, const inbedder_options* options, float* out,
                               size_t capacity, size_t* required) {
  return guard([&] {
    NEED(model);
    size_t need = n_texts * model->embedder->dim();
    if (required) *required = need;
    if (n_texts && capacity < need)
      return fail(INBEDDER_ERR_BUFFER_TOO_SMALL, "buffer holds " + std::to_string(capacity) +
                                                     " floats; " + std::to_string(need) +
                                                     " needed");
    if (n_texts) NEED(out);
    inbedder_result* r = nullptr;
    inbedder_status s = inbedder_encode(model, texts, nullptr, n_texts, &instruction,
                                        instruction ? 1 : 0, options, &r);
    if (s != INBEDDER_OK) return s;
    std::unique_ptr<inbedder_result, void (*)(inbedder_result*)> owned(r, &inbedder_result_free);
    std::copy(r->r.vectors.begin(), r->r.vectors.end(), out);
    return INBEDDER_OK;
  });
}

}  // extern "C"
