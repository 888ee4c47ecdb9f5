// The Unigram model (T5, INSTRUCTOR): Viterbi over all vocabulary pieces found by a byte trie,
// unknown characters scored min_score - 10 and consecutive unknowns fused, as tokenizers'
// Unigram::encode_optimized (ties keep the first candidate found, shortest piece first).
#include <cmath>
#include <limits>

#include "internal.hpp"
#include "vocab.hpp"

namespace inbedder::tok::detail {
namespace {

class Unigram : public Model {
 public:
  Vocab vocab;
  std::vector<double> scores;
  std::optional<int32_t> unk;
  double unk_score = 0;
  // Trie: (node << 8 | byte) -> child node; terminal[node] = piece id or -1.
  std::unordered_map<uint64_t, int32_t> edges;
  std::vector<int32_t> terminal{-1};

  void add_to_trie(const std::string& s, int32_t id) {
    uint64_t node = 0;
    for (unsigned char c : s) {
      uint64_t k = (node << 8) | c;
      auto it = edges.find(k);
      if (it == edges.end()) {
        int32_t n = static_cast<int32_t>(terminal.size());
        terminal.push_back(-1);
        edges.emplace(k, n);
        node = static_cast<uint64_t>(n);
      } else {
        node = static_cast<uint64_t>(it->second);
      }
    }
    terminal[node] = id;
  }

  void tokenize(std::string_view s, std::vector<Token>& out) const override {
    if (s.empty()) return;
    struct Best {
      int32_t id = -1;
      double score = 0;
      long starts_at = -1;
    };
    std::vector<Best> best(s.size() + 1);
    best[0].starts_at = 0;  // only its score (0) is read
    for (size_t start = 0; start < s.size();) {
      double base = best[start].score;
      size_t i = start;
      next_cp(s, i);
      size_t mblen = i - start;
      bool single = false;
      uint64_t node = 0;
      for (size_t k = start; k < s.size(); ++k) {
        auto it = edges.find((node << 8) | static_cast<unsigned char>(s[k]));
        if (it == edges.end()) break;
        node = static_cast<uint64_t>(it->second);
        int32_t id = terminal[node];
        if (id < 0) continue;
        size_t end = k + 1;
        double cand = base + scores[static_cast<size_t>(id)];
        Best& t = best[end];
        if (t.starts_at < 0 || cand > t.score) t = {id, cand, static_cast<long>(start)};
        if (end - start == mblen) single = true;
      }
      if (!single) {
        if (!unk) fail("Unigram: a character is not in the vocabulary and there is no unk_id");
        Best& t = best[start + mblen];
        double cand = base + unk_score;
        if (t.starts_at < 0 || cand > t.score) t = {*unk, cand, static_cast<long>(start)};
      }
      start += mblen;
    }
    // Backtrack, fusing runs of unknowns into one token.
    std::vector<Token> rev;
    size_t end = s.size();
    size_t unk_end = 0;
    bool in_unk = false;
    while (end > 0) {
      const Best& b = best[end];
      auto st = static_cast<size_t>(b.starts_at);
      if (unk && b.id == *unk) {
        if (!in_unk) unk_end = end;
        in_unk = true;
      } else {
        if (in_unk) rev.push_back({*unk, end, unk_end});
        in_unk = false;
        rev.push_back({b.id, st, end});
      }
      end = st;
    }
    if (in_unk) rev.push_back({*unk, 0, unk_end});
    for (auto r = rev.rbegin(); r != rev.rend(); ++r) {
      // tokenizers looks the piece's string up again: a fused unk run is unknown, a piece is
      // found (possibly under another id when the vocabulary repeats a piece).
      std::string_view piece = s.substr(r->start, r->end - r->start);
      auto id = vocab.get(piece);
      out.push_back({id ? *id : *unk, r->start, r->end});
    }
  }
  std::optional<int32_t> token_to_id(std::string_view t) const override { return vocab.get(t); }
  const std::string* id_to_token(int32_t id) const override { return vocab.token(id); }
  size_t vocab_size() const override { return vocab.by_id.size(); }
  std::vector<std::string> vocab_tokens() const override { return vocab.by_id; }
};

}  // namespace

std::unique_ptr<Model> make_unigram(const Json& j) {
  auto m = std::make_unique<Unigram>();
  if (bool_field(j, "byte_fallback", "Unigram model", false))
    fail("Unigram model: byte_fallback is not supported");
  const Json& v = field(j, "vocab", "Unigram model");
  if (!v.is_array()) fail("Unigram model: 'vocab' must be an array of [piece, score]");
  double min_score = std::numeric_limits<double>::infinity();
  m->vocab.map.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const Json& e = v[i];
    if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number())
      fail("Unigram model: vocab entry " + std::to_string(i) + " is not [piece, score]");
    auto id = static_cast<int32_t>(i);
    m->vocab.add(e[0].get<std::string>(), id, "Unigram model");
    double sc = e[1].get<double>();
    m->scores.push_back(sc);
    min_score = std::min(min_score, sc);
  }
  // Insert into the trie so that a repeated piece resolves as the map does (last id).
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string& p = m->vocab.by_id[i];
    m->add_to_trie(p, *m->vocab.get(p));
  }
  if (j.contains("unk_id") && !j["unk_id"].is_null()) {
    if (!j["unk_id"].is_number_unsigned() || j["unk_id"].get<size_t>() >= v.size())
      fail("Unigram model: 'unk_id' is out of range");
    m->unk = j["unk_id"].get<int32_t>();
  }
  m->unk_score = min_score - 10.0;
  return m;
}

}  // namespace inbedder::tok::detail
