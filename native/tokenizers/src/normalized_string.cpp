// NormalizedString: the normalized text with each byte's original span, and its edits (transform,
// prepend, replace, filter, strip, split), following tokenizers' NormalizedString step for step
// (its odd corners included, since offsets must match). Also the split patterns and PCRE2 regexes.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "internal.hpp"

namespace inbedder::tok::detail {

// ---- Regex ----

// Oniguruma's \s is Unicode White_Space; PCRE2's UCP \s lacks U+0085, so spell it out.
static const char* kWsMembers = "\\t\\n\\x{0B}\\f\\r\\x{85}\\p{Z}";

static std::string translate(const std::string& p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char n = p[i + 1];
      if (n == 's') {
        out += in_class ? std::string(kWsMembers) : "[" + std::string(kWsMembers) + "]";
      } else if (n == 'S' && !in_class) {
        out += "[^" + std::string(kWsMembers) + "]";
      } else if (n == 'S') {
        fail("Regex: \\S inside a character class is not supported: " + p);
      } else {
        out += c;
        out += n;
      }
      ++i;
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

Regex::Regex(const std::string& pattern) {
  std::string t = translate(pattern);
  int err = 0;
  PCRE2_SIZE at = 0;
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(t.data()), t.size(),
                             PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &at, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail("Regex: cannot compile " + pattern + ": " + reinterpret_cast<char*>(msg));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // a failure only means the interpreter is used
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view s) const {
  std::vector<std::pair<size_t, size_t>> out;
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  while (pos <= s.size()) {
    int rc = pcre2_match(code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0) break;
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t a = ov[0], b = ov[1];
    out.emplace_back(a, b);
    if (b > a) {
      pos = b;
    } else {  // empty match: step over one character
      if (b >= s.size()) break;
      size_t i = b;
      next_cp(s, i);
      pos = i;
    }
  }
  pcre2_match_data_free(md);
  return out;
}

// ---- Pattern ----

std::vector<std::pair<std::pair<size_t, size_t>, bool>> Pattern::find_matches(
    std::string_view s) const {
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> out;
  if (s.empty()) {
    out.push_back({{0, 0}, false});
    return out;
  }
  auto from_spans = [&](const std::vector<std::pair<size_t, size_t>>& spans) {
    size_t prev = 0;
    for (auto [a, b] : spans) {
      if (prev != a) out.push_back({{prev, a}, false});
      out.push_back({{a, b}, true});
      prev = b;
    }
    if (prev != s.size()) out.push_back({{prev, s.size()}, false});
  };
  if (regex) {
    from_spans(regex->find_all(s));
  } else if (pred) {
    size_t last = 0;
    for (size_t i = 0; i < s.size();) {
      size_t b = i;
      char32_t c = next_cp(s, i);
      if (pred(c)) {
        if (last < b) out.push_back({{last, b}, false});
        out.push_back({{b, i}, true});
        last = i;
      }
    }
    if (last < s.size()) out.push_back({{last, s.size()}, false});
  } else if (literal.empty()) {
    out.push_back({{0, s.size()}, false});
  } else {
    std::vector<std::pair<size_t, size_t>> spans;
    for (size_t p = s.find(literal); p != std::string_view::npos;
         p = s.find(literal, p + literal.size()))
      spans.emplace_back(p, p + literal.size());
    from_spans(spans);
  }
  if (invert)
    for (auto& m : out) m.second = !m.second;
  return out;
}

Pattern pattern_from_json(const Json& j, const char* component) {
  Pattern p;
  if (!j.is_object()) fail(std::string(component) + ": 'pattern' must be an object");
  if (j.contains("String")) {
    p.literal = str_field(j, "String", component);
  } else if (j.contains("Regex")) {
    p.regex = std::make_shared<Regex>(str_field(j, "Regex", component));
  } else {
    fail(std::string(component) + ": 'pattern' needs String or Regex");
  }
  return p;
}

SplitBehavior behavior_from_json(const Json& j, const char* component) {
  if (!j.is_string()) fail(std::string(component) + ": 'behavior' must be a string");
  std::string b = j.get<std::string>();
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  fail(std::string(component) + ": unknown split behavior " + b);
}

// ---- NormalizedString ----

NormalizedString::NormalizedString(std::string_view original, uint32_t base)
    : norm_(original), shift_(base) {
  align_.resize(norm_.size());
  for (size_t i = 0; i < norm_.size();) {
    size_t b = i;
    next_cp(norm_, i);
    for (size_t k = b; k < i; ++k)
      align_[k] = {static_cast<uint32_t>(base + b), static_cast<uint32_t>(base + i)};
  }
}

Span NormalizedString::original_span(size_t s, size_t e) const {
  if (s >= e || e > align_.size())
    return {static_cast<uint32_t>(shift_ + s), static_cast<uint32_t>(shift_ + e)};
  return {align_[s].first, align_[e - 1].second};
}

NormalizedString NormalizedString::slice(size_t s, size_t e) const {
  NormalizedString out;
  out.norm_ = norm_.substr(s, e - s);
  out.align_.assign(align_.begin() + static_cast<std::ptrdiff_t>(s),
                    align_.begin() + static_cast<std::ptrdiff_t>(e));
  out.shift_ = s < e ? align_[s].first : static_cast<uint32_t>(shift_ + s);
  return out;
}

void NormalizedString::transform_range(size_t s, size_t e, const std::vector<Change>& dest,
                                       size_t initial_offset) {
  // Sizes of the replaced chars, consumed as tokenizers' `replaced_normalized` iterator is.
  std::vector<uint8_t> sizes;
  for (size_t i = s; i < e;) {
    size_t b = i;
    next_cp(norm_, i);
    sizes.push_back(static_cast<uint8_t>(i - b));
  }
  size_t it = 0;
  size_t offset = s;
  for (; it < initial_offset && it < sizes.size(); ++it) offset += sizes[it];
  std::string out;
  out.reserve(e - s + 8);
  std::vector<Span> al;
  al.reserve(e - s + 8);
  for (auto [c, change] : dest) {
    Span a;
    if (change > 0) {
      a = offset < 1 ? Span{shift_, shift_} : align_.at(offset - 1);
    } else {
      if (offset >= align_.size()) fail("normalization produced an inconsistent alignment");
      a = align_[offset];
      if (it < sizes.size()) offset += sizes[it++];
    }
    for (int k = 0; k < -change && it < sizes.size(); ++k) offset += sizes[it++];
    size_t before = out.size();
    put_cp(out, c);
    al.insert(al.end(), out.size() - before, a);
  }
  norm_.replace(s, e - s, out);
  align_.erase(align_.begin() + static_cast<std::ptrdiff_t>(s),
               align_.begin() + static_cast<std::ptrdiff_t>(e));
  align_.insert(align_.begin() + static_cast<std::ptrdiff_t>(s), al.begin(), al.end());
}

void NormalizedString::prepend(std::string_view p) {
  if (norm_.empty()) return;
  size_t i = 0;
  char32_t next = next_cp(norm_, i);
  std::vector<Change> t;
  size_t k = 0;
  for (size_t j = 0; j < p.size(); ++k) t.emplace_back(next_cp(p, j), k != 0 ? 1 : 0);
  t.emplace_back(next, 1);
  transform_range(0, i, t, 0);
}

void NormalizedString::replace(const Pattern& p, std::string_view content) {
  std::string nn;
  std::vector<Span> na;
  nn.reserve(norm_.size());
  na.reserve(align_.size());
  size_t last = 0;
  for (auto& [span, is_match] : p.find_matches(norm_)) {
    if (!is_match) continue;
    auto [a, b] = span;
    nn.append(norm_, last, a - last);
    na.insert(na.end(), align_.begin() + static_cast<std::ptrdiff_t>(last),
              align_.begin() + static_cast<std::ptrdiff_t>(a));
    // Every replacement char is "added" after the removed match: it takes the alignment of the
    // match's last byte (tokenizers' transform_range with initial_offset = removed chars).
    Span al = b < 1 ? Span{shift_, shift_} : align_[b - 1];
    size_t before = nn.size();
    nn.append(content);
    na.insert(na.end(), nn.size() - before, al);
    last = b;
  }
  nn.append(norm_, last, std::string::npos);
  na.insert(na.end(), align_.begin() + static_cast<std::ptrdiff_t>(last), align_.end());
  norm_ = std::move(nn);
  align_ = std::move(na);
}

void NormalizedString::filter(const std::function<bool(char32_t)>& keep) {
  int removed = 0;
  size_t removed_start = 0;
  bool have = false;
  char32_t last = 0;
  std::vector<Change> t;
  t.reserve(norm_.size());
  for (size_t i = 0; i < norm_.size();) {
    char32_t c = next_cp(norm_, i);
    if (keep(c)) {
      if (have)
        t.emplace_back(last, -removed);
      else
        removed_start = static_cast<size_t>(removed);
      have = true;
      last = c;
      removed = 0;
    } else {
      ++removed;
    }
  }
  if (have) t.emplace_back(last, -removed);
  transform(t, removed_start);
}

void NormalizedString::map(const std::function<char32_t(char32_t)>& f) {
  std::vector<Change> t;
  t.reserve(norm_.size());
  for (size_t i = 0; i < norm_.size();) t.emplace_back(f(next_cp(norm_, i)), 0);
  transform(t, 0);
}

void NormalizedString::lowercase() {
  std::vector<Change> t;
  t.reserve(norm_.size());
  std::vector<char32_t> low;
  bool ascii_lower = true;
  for (unsigned char ch : norm_)
    if (ch >= 0x80 || (ch >= 'A' && ch <= 'Z')) ascii_lower = false;
  if (ascii_lower) return;
  for (size_t i = 0; i < norm_.size();) {
    low.clear();
    detail::lowercase(next_cp(norm_, i), low);
    for (size_t k = 0; k < low.size(); ++k) t.emplace_back(low[k], k > 0 ? 1 : 0);
  }
  transform(t, 0);
}

void NormalizedString::lrstrip(bool left, bool right) {
  std::u32string cs = to_u32(norm_);
  size_t lead = 0, trail = 0;
  if (left)
    while (lead < cs.size() && is_whitespace(cs[lead])) ++lead;
  if (right)
    while (trail < cs.size() && is_whitespace(cs[cs.size() - 1 - trail])) ++trail;
  if (lead == 0 && trail == 0) return;
  std::vector<Change> t;
  // tokenizers compares the char index with the *byte* length here; kept for equal offsets.
  auto marker = static_cast<long long>(norm_.size()) - static_cast<long long>(trail) - 1;
  for (size_t i = 0; i < cs.size(); ++i) {
    if (i < lead || i >= cs.size() - trail) continue;
    if (static_cast<long long>(i) == marker)
      t.emplace_back(cs[i], -static_cast<int>(trail));
    else
      t.emplace_back(cs[i], 0);
  }
  transform(t, lead);
}

void NormalizedString::normalize_unicode(bool compat, bool compose) {
  bool ascii = true;
  for (unsigned char ch : norm_)
    if (ch >= 0x80) {
      ascii = false;
      break;
    }
  if (ascii) return;  // every form leaves ASCII unchanged
  transform(unicode_normalize(norm_, compat, compose), 0);
}

std::vector<NormalizedString> NormalizedString::split(const Pattern& p, SplitBehavior b) const {
  auto m = p.find_matches(norm_);
  using M = std::pair<std::pair<size_t, size_t>, bool>;
  std::vector<M> parts;  // (span, remove)
  switch (b) {
    case SplitBehavior::Removed:
      parts = m;
      break;
    case SplitBehavior::Isolated:
      for (auto& x : m) parts.push_back({x.first, false});
      break;
    case SplitBehavior::MergedWithPrevious: {
      bool prev = false;
      for (auto& x : m) {
        if (x.second && !prev && !parts.empty())
          parts.back().first.second = x.first.second;
        else
          parts.push_back({x.first, false});
        prev = x.second;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool prev = false;
      for (auto r = m.rbegin(); r != m.rend(); ++r) {
        if (r->second && !prev && !parts.empty())
          parts.back().first.first = r->first.first;
        else
          parts.push_back({r->first, false});
        prev = r->second;
      }
      std::reverse(parts.begin(), parts.end());
      break;
    }
    case SplitBehavior::Contiguous: {
      bool prev = false;
      for (auto& x : m) {
        if (x.second == prev && !parts.empty())
          parts.back().first.second = x.first.second;
        else
          parts.push_back({x.first, false});
        prev = x.second;
      }
      break;
    }
  }
  std::vector<NormalizedString> out;
  out.reserve(parts.size());
  for (auto& [span, remove] : parts)
    if (!remove) out.push_back(slice(span.first, span.second));
  return out;
}

}  // namespace inbedder::tok::detail
