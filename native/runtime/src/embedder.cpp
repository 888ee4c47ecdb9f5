// Embedder::encode: checks, longest-first stable batching, order restored, post-processing.
#include "embedder.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <numeric>
#include <set>

#include "cpu.hpp"
#include "hub.hpp"
#include "pipeline.hpp"
#include "session.hpp"

namespace inbedder {

void postprocess(std::vector<float>& emb, std::size_t dim, const std::vector<std::string>& steps) {
  const std::size_t n = dim ? emb.size() / dim : 0;
  for (const auto& step : steps) {
    if (step != "standardize" && step != "l2")
      throw ValueError("unknown post-processing step '" + step + "' in the manifest");
    for (std::size_t i = 0; i < n; ++i) {
      float* v = emb.data() + i * dim;
      if (step == "standardize") {
        // (x - mean(x)) / std(x), unbiased std, per vector (recipe masked-answer-pair).
        double mu = 0, ss = 0;
        for (std::size_t k = 0; k < dim; ++k) mu += v[k];
        mu /= double(dim);
        for (std::size_t k = 0; k < dim; ++k) ss += (v[k] - mu) * (v[k] - mu);
        double sd = dim > 1 ? std::sqrt(ss / double(dim - 1)) : NAN;
        sd = std::max(sd, 1e-12);
        for (std::size_t k = 0; k < dim; ++k) v[k] = float((v[k] - mu) / sd);
      } else {
        double ss = 0;
        for (std::size_t k = 0; k < dim; ++k) ss += double(v[k]) * v[k];
        double norm = std::max(std::sqrt(ss), 1e-12);
        for (std::size_t k = 0; k < dim; ++k) v[k] = float(v[k] / norm);
      }
    }
  }
}

QuantizedOutput quantize_output(const std::vector<float>& emb, std::size_t dim,
                                const std::string& precision) {
  QuantizedOutput q;
  q.precision = precision;
  q.n = dim ? emb.size() / dim : 0;
  const std::size_t n = q.n;
  if (precision == "float32") {
    q.cols = dim;
    q.element_bytes = 4;
    q.bytes.resize(emb.size() * 4);
    if (!emb.empty()) std::memcpy(q.bytes.data(), emb.data(), q.bytes.size());
  } else if (precision == "float16") {
    q.cols = dim;
    q.element_bytes = 2;
    q.bytes.resize(emb.size() * 2);
    for (std::size_t i = 0; i < emb.size(); ++i) {
      uint16_t h = Ort::Float16_t(emb[i]).val;  // round to nearest even, as numpy's astype
      std::memcpy(q.bytes.data() + 2 * i, &h, 2);
    }
  } else if (precision == "int8" || precision == "uint8") {
    if (n == 1)
      throw ValueError("precision='" + precision +
                       "' takes its ranges from the texts of the call: give more than one");
    q.cols = dim;
    q.element_bytes = 1;
    q.bytes.resize(emb.size());
    // Per dimension over this call's vectors: lo, hi and (hi - lo) / 255 steps (1 where the
    // range is 0), all in float32 as numpy computes them; then floor((x - lo) / step) in 0..255.
    std::vector<float> lo(dim), step(dim);
    for (std::size_t k = 0; k < dim && n; ++k) {
      float a = emb[k], b = emb[k];
      for (std::size_t i = 1; i < n; ++i) {
        a = std::min(a, emb[i * dim + k]);
        b = std::max(b, emb[i * dim + k]);
      }
      float st = (b - a) / 255.0f;
      lo[k] = a;
      step[k] = st == 0.0f ? 1.0f : st;
    }
    const bool signed8 = precision == "int8";
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t k = 0; k < dim; ++k) {
        float v = std::floor((emb[i * dim + k] - lo[k]) / step[k]);
        v = std::min(std::max(v, 0.0f), 255.0f);
        int u = int(v);
        q.bytes[i * dim + k] = signed8 ? uint8_t(int8_t(u - 128)) : uint8_t(u);
      }
  } else if (precision == "binary" || precision == "ubinary") {
    q.cols = (dim + 7) / 8;
    q.element_bytes = 1;
    q.bytes.assign(n * q.cols, 0);
    for (std::size_t i = 0; i < n; ++i) {
      for (std::size_t k = 0; k < dim; ++k)
        if (emb[i * dim + k] > 0.0f) q.bytes[i * q.cols + k / 8] |= uint8_t(0x80u >> (k % 8));
      if (precision == "binary")  // int8: the packed byte offset by -128
        for (std::size_t c = 0; c < q.cols; ++c)
          q.bytes[i * q.cols + c] = uint8_t(int8_t(int(q.bytes[i * q.cols + c]) - 128));
    }
  } else {
    std::string names;
    for (const char* p : kOutputPrecisions)
      names += (names.empty() ? "'" : ", '") + std::string(p) + "'";
    throw ValueError("precision must be one of (" + names + "), got '" + precision + "'");
  }
  return q;
}

Embedder::Embedder(const std::string& bundle_dir, const std::string& device,
                   const OpenSettings& open, Verify verify)
    : device_(resolve_device(device)) {
  if (open.threads.threads < 0)
    throw ValueError("threads must be a positive int or 0 (the default)");
  // Built while this version of the bundle is locked: every file comes from it.
  // A directory, or a hub name looked up in the local bundle cache (no network).
  load_bundle(resolve_bundle(bundle_dir), verify, [&](const Bundle& bundle) {
    manifest_ = bundle.manifest;
    if (device_ == "cpu")  // CUDA's int8 kernels do not use MLAS's u8 x s8 pair sums
      check_int8_range(manifest_, cpu_features(), bundle.root + "/" + kManifestName);
    pipeline_ = make_pipeline(bundle, device_, open);
  });
}

EncodeResult Embedder::encode(const std::vector<std::string>& texts,
                              const std::vector<std::string>& instructions_in,
                              const EncodeParams& params) const {
  const std::size_t n = texts.size();
  for (std::size_t i = 0; i < n; ++i) {
    std::size_t bad = 0;
    if (!valid_utf8(texts[i], &bad))
      throw ValueError("texts[" + std::to_string(i) + "] is not valid UTF-8 (byte " +
                       std::to_string(bad) + ")");
  }
  if (instructions_in.empty() && pipeline_->needs_instruction())
    // runtime/embedder.py's rule: a family that embeds under an instruction needs one given;
    // "" is one (the empty instruction), none at all is a mistake worth naming.
    throw ValueError("this bundle (" + manifest_.recipe +
                     ") embeds a text under an instruction: pass one (or \"\" to embed under an "
                     "empty one)");
  if (!instructions_in.empty() && instructions_in.size() != 1 && instructions_in.size() != n)
    throw ValueError("got " + std::to_string(instructions_in.size()) + " instructions for " +
                     std::to_string(n) + " texts; give one, or one per text");
  for (std::size_t i = 0; i < instructions_in.size(); ++i) {
    std::size_t bad = 0;
    if (!valid_utf8(instructions_in[i], &bad))
      throw ValueError("instruction[" + std::to_string(i) + "] is not valid UTF-8 (byte " +
                       std::to_string(bad) + ")");
  }
  std::vector<std::string> instructions =
      instructions_in.size() == n
          ? instructions_in
          : std::vector<std::string>(n, instructions_in.empty() ? "" : instructions_in[0]);
  if (std::find_if(std::begin(kOutputPrecisions), std::end(kOutputPrecisions), [&](const char* p) {
        return params.precision == p;
      }) == std::end(kOutputPrecisions))
    quantize_output({}, 0, params.precision);  // throws: names the precisions
  if (params.batch_size < 1)
    throw ValueError("batch_size must be a positive int, got " + std::to_string(params.batch_size));
  if (params.truncation != "input" && params.truncation != "reference")
    throw ValueError("truncation must be one of ('input', 'reference'), got '" + params.truncation +
                     "'");
  FamilyOptions resolved = pipeline_->resolve_options(params.family);
  if (params.answers && !pipeline_->answers())
    throw UnsupportedError(
        "this bundle (" + manifest_.recipe +
        ") embeds texts without answering; return_answers=True is not available");

  EncodeResult r;
  r.n = n;
  r.dim = dim();
  r.vectors.assign(n * r.dim, 0.f);
  if (params.answers) r.answers.assign(n, "");
  std::vector<Encoded> encoded = pipeline_->tokenize(texts, instructions, params.truncation);
  // Longest first (stable), like the reference: memory peaks show up at once and pads are few.
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return encoded[a].ids.size() > encoded[b].ids.size();
  });
  const std::size_t bs = std::size_t(params.batch_size);
  std::vector<float> buf;
  for (std::size_t s = 0; s < n; s += bs) {
    std::vector<std::size_t> idx(order.begin() + long(s),
                                 order.begin() + long(std::min(n, s + bs)));
    std::vector<const Encoded*> batch;
    for (std::size_t i : idx) batch.push_back(&encoded[i]);
    buf.assign(idx.size() * r.dim, 0.f);  // (B, D)
    std::vector<std::string> ans;
    pipeline_->embed_batch(batch, params.answers, resolved, buf.data(),
                           params.answers ? &ans : nullptr);
    for (std::size_t j = 0; j < idx.size(); ++j) {
      std::copy_n(buf.begin() + long(j * r.dim), r.dim, r.vectors.begin() + long(idx[j] * r.dim));
      if (params.answers) r.answers[idx[j]] = ans.at(j);
    }
  }
  postprocess(r.vectors, r.dim, manifest_.postprocess);
  if (params.normalize) postprocess(r.vectors, r.dim, {"l2"});
  if (params.precision == "float32")  // served from r.vectors: no second copy
    r.output = QuantizedOutput{"float32", n, r.dim, 4, {}};
  else
    r.output = quantize_output(r.vectors, r.dim, params.precision);
  return r;
}

}  // namespace inbedder
