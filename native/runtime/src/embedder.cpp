// Embedder::encode: checks, longest-first stable batching, order restored, post-processing.
#include "embedder.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

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

Embedder::Embedder(const std::string& bundle_dir, const std::string& device, int threads,
                   bool verify)
    : manifest_(load_manifest(bundle_dir, verify)), device_(resolve_device(device)) {
  if (threads < 0) throw ValueError("threads must be a positive int or 0 (the default)");
  pipeline_ = make_pipeline(pure_path(bundle_dir), manifest_, device_, threads);
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
  return r;
}

}  // namespace inbedder
