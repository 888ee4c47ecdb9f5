// Added tokens (special and not): split out of the input before the model, leftmost-longest,
// with their single_word / lstrip / rstrip rules; non-normalized tokens are matched on the
// original text, normalized ones on each piece after the normalizer, as tokenizers'
// AddedVocabulary::extract_and_normalize.
#include "internal.hpp"

namespace inbedder::tok::detail {

void AddedVocabulary::load(const Json& added, const Normalizer* normalizer) {
  if (added.is_null()) return;
  if (!added.is_array()) fail("added_tokens must be an array");
  for (size_t i = 0; i < added.size(); ++i) {
    const Json& a = added[i];
    if (!a.is_object()) fail("added_tokens[" + std::to_string(i) + "] must be an object");
    AddedToken t;
    const Json& id = field(a, "id", "added_tokens");
    if (!id.is_number_unsigned() || id.get<uint64_t>() >= (1u << 24))
      fail("added_tokens[" + std::to_string(i) + "]: 'id' is out of range");
    t.id = id.get<int32_t>();
    t.content = str_field(a, "content", "added_tokens");
    t.single_word = bool_field(a, "single_word", "added_tokens", false);
    t.lstrip = bool_field(a, "lstrip", "added_tokens", false);
    t.rstrip = bool_field(a, "rstrip", "added_tokens", false);
    t.normalized = bool_field(a, "normalized", "added_tokens", true);
    t.special = bool_field(a, "special", "added_tokens", false);
    if (t.content.empty()) continue;
    size_t idx = tokens_.size();
    by_id_[t.id] = idx;
    by_content_[t.content] = idx;
    tokens_.push_back(std::move(t));
  }
  build(raw_, false, normalizer);
  build(normed_, true, normalizer);
}

void AddedVocabulary::build(Matcher& m, bool normalized, const Normalizer* normalizer) {
  m.by_first.assign(256, {});
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    if (t.normalized != normalized) continue;
    std::string pat = t.content;
    if (normalized && normalizer) {
      NormalizedString ns(pat);
      normalizer->normalize(ns);
      pat = ns.get();
    }
    if (pat.empty()) continue;
    m.by_first[static_cast<unsigned char>(pat[0])].push_back(m.patterns.size());
    m.patterns.emplace_back(std::move(pat), i);
  }
}

const AddedToken* AddedVocabulary::by_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int32_t> AddedVocabulary::id_of(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  if (it == by_content_.end()) return std::nullopt;
  return tokens_[it->second].id;
}

static bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t k = s.size() - 1;
  while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
  size_t i = k;
  return is_word_char(next_cp(s, i));
}

static bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t i = 0;
  return is_word_char(next_cp(s, i));
}

void AddedVocabulary::split_on(Splits& out, NormalizedString&& ns, const Matcher& m) const {
  const std::string& s = ns.get();
  if (m.empty() || s.empty()) {
    if (!s.empty()) out.push_back({std::move(ns), -1});
    return;
  }
  size_t start_offset = 0;
  std::vector<std::pair<std::pair<size_t, size_t>, int32_t>> parts;
  size_t pos = 0;
  while (pos < s.size()) {
    // leftmost-longest: the longest pattern starting at the first position where any matches
    size_t best_len = 0, best = 0;
    for (size_t pi : m.by_first[static_cast<unsigned char>(s[pos])]) {
      const std::string& p = m.patterns[pi].first;
      if (p.size() > best_len && s.compare(pos, p.size(), p) == 0) {
        best_len = p.size();
        best = pi;
      }
    }
    if (best_len == 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + best_len;
    pos = stop;
    const AddedToken& t = tokens_[m.patterns[best].second];
    if (t.single_word) {
      bool start_space = start == 0 || !ends_with_word(std::string_view(s).substr(0, start));
      bool stop_space = stop == s.size() || !starts_with_word(std::string_view(s).substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) {
      size_t k = start;  // leftmost start of the whitespace run ending at `start`
      while (k > 0) {
        size_t j = k - 1;
        while (j > 0 && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
        size_t q = j;
        if (!is_whitespace(next_cp(s, q))) break;
        k = j;
      }
      start = std::max(k, start_offset);
    }
    if (t.rstrip) {
      size_t q = stop;
      while (q < s.size()) {
        size_t r = q;
        if (!is_whitespace(next_cp(s, r))) break;
        q = r;
      }
      stop = q;  // the matcher itself resumes at the token's end, not after the spaces
    }
    if (start_offset < start) parts.push_back({{start_offset, start}, -1});
    parts.push_back({{start, stop}, t.id});
    start_offset = stop;
  }
  if (start_offset != s.size()) parts.push_back({{start_offset, s.size()}, -1});
  for (auto& [span, id] : parts) {
    NormalizedString piece = ns.slice(span.first, span.second);
    if (!piece.empty()) out.push_back({std::move(piece), id});
  }
}

Splits AddedVocabulary::extract_and_normalize(std::string_view text,
                                              const Normalizer* normalizer) const {
  Splits first;
  split_on(first, NormalizedString(text), raw_);
  Splits out;
  out.reserve(first.size());
  for (auto& sp : first) {
    if (sp.token_id >= 0) {
      out.push_back(std::move(sp));
      continue;
    }
    if (normalizer) normalizer->normalize(sp.ns);
    split_on(out, std::move(sp.ns), normed_);
  }
  return out;
}

}  // namespace inbedder::tok::detail
