// Normalizers: Sequence, BertNormalizer, NFD/NFKD/NFC/NFKC, Lowercase, StripAccents, Strip,
// Prepend, Replace and Precompiled (sentencepiece's charsmap: a double-array trie over UTF-8
// keys and a blob of NUL-terminated replacements, read from the base64 in tokenizer.json).
#include <cstring>

#include "internal.hpp"

namespace inbedder::tok::detail {
namespace {

struct SequenceN : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> items;
  void normalize(NormalizedString& s) const override {
    for (auto& n : items) n->normalize(s);
  }
};

bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

struct BertN : Normalizer {
  bool clean_text = true, chinese = true, strip_accents = false, lowercase = true;
  void normalize(NormalizedString& s) const override {
    if (clean_text) {
      s.filter([](char32_t c) {
        bool control = c != '\t' && c != '\n' && c != '\r' && is_other_ccf(c);
        return !(c == 0 || c == 0xFFFD || control);
      });
      s.map([](char32_t c) { return is_whitespace(c) ? U' ' : c; });
    }
    if (chinese) {
      std::vector<Change> t;
      const std::string& g = s.get();
      bool any = false;
      t.reserve(g.size());
      for (size_t i = 0; i < g.size();) {
        char32_t c = next_cp(g, i);
        if (is_chinese_char(c)) {
          any = true;
          t.emplace_back(U' ', 0);
          t.emplace_back(c, 1);
          t.emplace_back(U' ', 1);
        } else {
          t.emplace_back(c, 0);
        }
      }
      if (any) s.transform(t, 0);
    }
    if (strip_accents) {
      s.normalize_unicode(false, false);
      s.filter([](char32_t c) { return !is_mark_nonspacing(c); });
    }
    if (lowercase) s.lowercase();
  }
};

struct UnicodeN : Normalizer {
  bool compat, compose;
  UnicodeN(bool k, bool c) : compat(k), compose(c) {}
  void normalize(NormalizedString& s) const override { s.normalize_unicode(compat, compose); }
};

struct LowercaseN : Normalizer {
  void normalize(NormalizedString& s) const override { s.lowercase(); }
};

struct StripAccentsN : Normalizer {
  void normalize(NormalizedString& s) const override {
    s.filter([](char32_t c) { return !is_combining_mark(c); });
  }
};

struct StripN : Normalizer {
  bool left, right;
  StripN(bool l, bool r) : left(l), right(r) {}
  void normalize(NormalizedString& s) const override { s.lrstrip(left, right); }
};

struct PrependN : Normalizer {
  std::string text;
  void normalize(NormalizedString& s) const override {
    if (!s.empty()) s.prepend(text);
  }
};

struct ReplaceN : Normalizer {
  Pattern pattern;
  std::string content;
  void normalize(NormalizedString& s) const override { s.replace(pattern, content); }
};

std::string base64_decode(const std::string& in) {
  static const std::string chars =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t buf = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    auto p = chars.find(c);
    if (p == std::string::npos) fail("Precompiled: precompiled_charsmap is not valid base64");
    buf = (buf << 6) | static_cast<uint32_t>(p);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((buf >> bits) & 0xFF);
    }
  }
  return out;
}

struct PrecompiledN : Normalizer {
  std::vector<uint32_t> trie;
  std::string blob;

  void load(const std::string& b64) {
    std::string raw = base64_decode(b64);
    if (raw.size() < 4) fail("Precompiled: precompiled_charsmap is truncated");
    uint32_t size;
    std::memcpy(&size, raw.data(), 4);
    if (size % 4 != 0 || size > raw.size() - 4)
      fail("Precompiled: precompiled_charsmap has a bad trie size");
    trie.resize(size / 4);
    std::memcpy(trie.data(), raw.data() + 4, size);
    blob = raw.substr(4 + size);
  }

  // The first (shortest) key that prefixes `chunk`, as spm_precompiled's transform does.
  bool lookup(std::string_view chunk, std::string_view& out) const {
    if (trie.empty()) return false;
    size_t pos = 0;
    uint32_t unit = trie[0];
    pos ^= offset(unit);
    for (unsigned char c : chunk) {
      if (c == 0) break;
      pos ^= c;
      if (pos >= trie.size()) return false;
      unit = trie[pos];
      if (label(unit) != c) return false;
      pos ^= offset(unit);
      if (has_leaf(unit)) {
        if (pos >= trie.size()) return false;
        size_t idx = trie[pos] & 0x7FFFFFFFu;
        if (idx >= blob.size()) return false;
        size_t end = blob.find('\0', idx);
        if (end == std::string::npos) end = blob.size();
        out = std::string_view(blob).substr(idx, end - idx);
        return true;
      }
    }
    return false;
  }
  static bool has_leaf(uint32_t u) { return (u >> 8) & 1; }
  static uint32_t label(uint32_t u) { return u & ((1u << 31) | 0xFF); }
  static size_t offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }

  static void replace(std::vector<Change>& t, std::string_view old_part, std::string_view repl) {
    long old_n = 0, new_n = 0;
    for (size_t i = 0; i < old_part.size(); ++old_n) next_cp(old_part, i);
    for (size_t i = 0; i < repl.size(); ++new_n) t.emplace_back(next_cp(repl, i), 0);
    long diff = new_n - old_n;
    if (diff > 0) {
      for (long k = 0; k < diff; ++k) t[t.size() - 1 - static_cast<size_t>(k)].second = 1;
    } else if (diff < 0 && !t.empty()) {
      // tokenizers charges the removal to the last transformation, even a previous char's
      t.back().second += static_cast<int>(diff);
    }
  }

  void normalize(NormalizedString& s) const override {
    const std::string& g = s.get();
    std::vector<Change> t;
    t.reserve(g.size());
    bool modified = false;
    std::string_view sv(g), norm;
    for (auto [a, b] : graphemes(sv)) {
      std::string_view gr = sv.substr(a, b - a);
      if (gr.size() < 6 && lookup(gr, norm)) {
        modified = true;
        replace(t, gr, norm);
        continue;
      }
      for (size_t i = 0; i < gr.size();) {
        size_t st = i;
        char32_t c = next_cp(gr, i);
        std::string_view part = gr.substr(st, i - st);
        if (lookup(part, norm)) {
          modified = true;
          replace(t, part, norm);
        } else {
          t.emplace_back(c, 0);
        }
      }
    }
    if (modified) s.transform(t, 0);
  }
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const Json& j) {
  if (j.is_null()) return nullptr;
  std::string type = str_field(j, "type", "normalizer");
  if (type == "Sequence") {
    auto n = std::make_unique<SequenceN>();
    const Json& list = field(j, "normalizers", "Sequence normalizer");
    if (!list.is_array()) fail("Sequence normalizer: 'normalizers' must be an array");
    for (auto& x : list) {
      auto item = make_normalizer(x);
      if (item) n->items.push_back(std::move(item));
    }
    return n;
  }
  if (type == "BertNormalizer") {
    auto n = std::make_unique<BertN>();
    n->clean_text = bool_field(j, "clean_text", "BertNormalizer", true);
    n->chinese = bool_field(j, "handle_chinese_chars", "BertNormalizer", true);
    n->lowercase = bool_field(j, "lowercase", "BertNormalizer", true);
    const Json* sa = j.contains("strip_accents") ? &j["strip_accents"] : nullptr;
    if (sa && !sa->is_null() && !sa->is_boolean())
      fail("BertNormalizer: 'strip_accents' must be a boolean or null");
    n->strip_accents = (sa && sa->is_boolean()) ? sa->get<bool>() : n->lowercase;
    return n;
  }
  if (type == "NFD") return std::make_unique<UnicodeN>(false, false);
  if (type == "NFKD") return std::make_unique<UnicodeN>(true, false);
  if (type == "NFC") return std::make_unique<UnicodeN>(false, true);
  if (type == "NFKC") return std::make_unique<UnicodeN>(true, true);
  if (type == "Lowercase") return std::make_unique<LowercaseN>();
  if (type == "StripAccents") return std::make_unique<StripAccentsN>();
  if (type == "Strip")
    return std::make_unique<StripN>(bool_field(j, "strip_left", "Strip", true),
                                    bool_field(j, "strip_right", "Strip", true));
  if (type == "Prepend") {
    auto n = std::make_unique<PrependN>();
    n->text = str_field(j, "prepend", "Prepend");
    return n;
  }
  if (type == "Replace") {
    auto n = std::make_unique<ReplaceN>();
    n->pattern = pattern_from_json(field(j, "pattern", "Replace normalizer"), "Replace normalizer");
    n->content = str_field(j, "content", "Replace normalizer");
    return n;
  }
  if (type == "Precompiled") {
    auto n = std::make_unique<PrecompiledN>();
    const Json& m = field(j, "precompiled_charsmap", "Precompiled");
    if (m.is_null()) return nullptr;  // tokenizers treats an empty charsmap as identity
    if (!m.is_string()) fail("Precompiled: 'precompiled_charsmap' must be a base64 string");
    if (m.get<std::string>().empty()) return nullptr;
    n->load(m.get<std::string>());
    return n;
  }
  fail("unsupported normalizer: " + type);
}

}  // namespace inbedder::tok::detail
