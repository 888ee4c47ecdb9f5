// inbedder.hpp - thin RAII C++17 wrappers over the C API (inbedder.h); header-only, so no C++
// types cross the library boundary. Failures throw inbedder::Error (status + message).
//
//   inbedder::Model m("bundles/minilm");                       // device "cpu", threads default
//   inbedder::Options o;  o.set("answers", 1);
//   inbedder::Result r = m.encode({"I love cats!"}, {"What animal?"}, o);
//   std::vector<float> v = r.vector(0);  std::string a = r.answer(0);
#pragma once

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "inbedder/inbedder.h"

namespace inbedder {

class Error : public std::runtime_error {
 public:
  Error(inbedder_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  inbedder_status status() const noexcept { return status_; }

 private:
  inbedder_status status_;
};

inline void check(inbedder_status s) {
  if (s != INBEDDER_OK)
    throw Error(s, std::string(inbedder_status_name(s)) + ": " + inbedder_last_error());
}

class Options {
 public:
  Options() {
    inbedder_options* o = nullptr;
    check(inbedder_options_create(&o));
    p_.reset(o);
  }
  Options& set(const char* name, const std::string& value) {
    check(inbedder_options_set_string(p_.get(), name, value.c_str()));
    return *this;
  }
  Options& set(const char* name, const char* value) { return set(name, std::string(value)); }
  Options& set(const char* name, long value) {
    check(inbedder_options_set_int(p_.get(), name, value));
    return *this;
  }
  Options& set(const char* name, int value) { return set(name, static_cast<long>(value)); }
  Options& set(const char* name, bool value) { return set(name, value ? 1L : 0L); }
  const inbedder_options* get() const noexcept { return p_.get(); }

 private:
  struct Free {
    void operator()(inbedder_options* o) const noexcept { inbedder_options_destroy(o); }
  };
  std::unique_ptr<inbedder_options, Free> p_;
};

class Result {
 public:
  explicit Result(inbedder_result* r) : p_(r) {}
  std::size_t size() const { return info().n; }
  std::size_t dim() const { return info().dim; }
  // (size, dim) row-major floats, valid while the Result lives.
  const float* data() const { return info().data; }
  std::vector<float> vector(std::size_t i) const {
    Info in = info();
    if (i >= in.n) throw Error(INBEDDER_ERR_OUT_OF_RANGE, "vector index out of range");
    return std::vector<float>(in.data + i * in.dim, in.data + (i + 1) * in.dim);
  }
  std::vector<float> all() const {
    Info in = info();
    return std::vector<float>(in.data, in.data + in.n * in.dim);
  }
  std::string answer(std::size_t i) const {
    const char* a = nullptr;
    std::size_t len = 0;
    check(inbedder_result_answer(p_.get(), i, &a, &len));
    return std::string(a, len);
  }

 private:
  struct Info {
    const float* data;
    std::size_t n, dim;
  };
  Info info() const {
    Info in{nullptr, 0, 0};
    check(inbedder_result_embeddings(p_.get(), &in.data, &in.n, &in.dim));
    return in;
  }
  struct Free {
    void operator()(inbedder_result* r) const noexcept { inbedder_result_free(r); }
  };
  std::unique_ptr<inbedder_result, Free> p_;
};

class Model {
 public:
  explicit Model(const std::string& bundle_dir, const Options* options = nullptr) {
    inbedder_model* m = nullptr;
    check(inbedder_model_open(bundle_dir.c_str(), options ? options->get() : nullptr, &m));
    p_.reset(m);
  }
  Model(const std::string& bundle_dir, const Options& options) : Model(bundle_dir, &options) {}

  std::size_t dim() const {
    std::size_t d = 0;
    check(inbedder_model_dim(p_.get(), &d));
    return d;
  }
  std::string info(const char* key) const {
    const char* v = nullptr;
    check(inbedder_model_info(p_.get(), key, &v));
    return v;
  }
  bool answers() const {
    int a = 0;
    check(inbedder_model_answers(p_.get(), &a));
    return a != 0;
  }
  // instructions: one for every text, or one per text. Safe from several threads at once.
  Result encode(const std::vector<std::string>& texts, const std::vector<std::string>& instructions,
                const Options* options = nullptr) const {
    std::vector<const char*> t, ins;
    std::vector<std::size_t> lens;
    for (const auto& s : texts) t.push_back(s.data()), lens.push_back(s.size());
    for (const auto& s : instructions) ins.push_back(s.c_str());
    inbedder_result* r = nullptr;
    check(inbedder_encode(p_.get(), t.data(), lens.data(), t.size(), ins.data(), ins.size(),
                          options ? options->get() : nullptr, &r));
    return Result(r);
  }
  Result encode(const std::vector<std::string>& texts, const std::vector<std::string>& instructions,
                const Options& options) const {
    return encode(texts, instructions, &options);
  }
  inbedder_model* get() const noexcept { return p_.get(); }

 private:
  struct Free {
    void operator()(inbedder_model* m) const noexcept { inbedder_model_close(m); }
  };
  std::unique_ptr<inbedder_model, Free> p_;
};

}  // namespace inbedder
