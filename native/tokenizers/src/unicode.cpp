// UTF-8 decoding and validation, Unicode properties (utf8proc), and the alignment-aware Unicode
// normalization forms: the (char, change) streams that tokenizers' unicode-normalization-alignments
// produces, rebuilt on utf8proc's per-character decompositions and pairwise compositions.
#include <utf8proc.h>

#include <algorithm>

#include "internal.hpp"

namespace inbedder::tok::detail {

#include "unicode_compat.inc"

// tokenizers' unicode_categories tables are older than utf8proc's: the generated tables flip the
// classes of the code points where the two disagree.
template <size_t N>
static bool in_diff(const char32_t (&r)[N][2], char32_t c) {
  size_t lo = 0, hi = N;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (c < r[mid][0])
      hi = mid;
    else if (c > r[mid][1])
      lo = mid + 1;
    else
      return true;
  }
  return false;
}

char32_t next_cp(std::string_view s, size_t& i) {
  auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) {
    ++i;
    return b;
  }
  int n = b >= 0xF0 ? 3 : b >= 0xE0 ? 2 : 1;
  char32_t c = b & (0x3F >> n);
  ++i;
  for (int k = 0; k < n && i < s.size(); ++k, ++i) c = (c << 6) | (s[i] & 0x3F);
  return c;
}

size_t cp_len(char32_t c) { return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4; }

void put_cp(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// Length of the valid UTF-8 sequence at s[i], or 0 with `bad` = bytes of the maximal invalid
// subpart (at least 1).
static size_t valid_seq(std::string_view s, size_t i, size_t& bad) {
  auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char b = at(i);
  bad = 1;
  if (b < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) {
    n = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    n = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    n = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  for (size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) {
      bad = k;
      return 0;
    }
    unsigned char c = at(i + k);
    unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (c < l || c > h) {
      bad = k;
      return 0;
    }
  }
  return n;
}

size_t invalid_utf8_at(std::string_view s) {
  size_t i = 0, bad = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t n = valid_seq(s, i, bad);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0, bad = 0;
  while (i < s.size()) {
    size_t n = valid_seq(s, i, bad);
    if (n) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += bad;
    }
  }
  return out;
}

std::u32string to_u32(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) out += next_cp(s, i);
  return out;
}

bool is_whitespace(char32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
  if (c < 0x85) return false;
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

int general_category(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); }

bool is_punctuation(char32_t c) {
  int k = general_category(c);
  return (k >= UTF8PROC_CATEGORY_PC && k <= UTF8PROC_CATEGORY_PO) != in_diff(kDiff_punct, c);
}

bool is_word_char(char32_t c) {
  if (c < 0x80)
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  int k = general_category(c);
  return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_ND) || k == UTF8PROC_CATEGORY_NL ||
         k == UTF8PROC_CATEGORY_PC || c == 0x200C || c == 0x200D;
}

bool is_other_ccf(char32_t c) {
  int k = general_category(c);
  bool other = k == UTF8PROC_CATEGORY_CC || k == UTF8PROC_CATEGORY_CF || k == UTF8PROC_CATEGORY_CO;
  return other != in_diff(kDiff_other, c);
}

bool is_mark_nonspacing(char32_t c) {
  return (general_category(c) == UTF8PROC_CATEGORY_MN) != in_diff(kDiff_mn, c);
}

bool is_combining_mark(char32_t c) {
  int k = general_category(c);
  return k == UTF8PROC_CATEGORY_MN || k == UTF8PROC_CATEGORY_MC || k == UTF8PROC_CATEGORY_ME;
}

void lowercase(char32_t c, std::vector<char32_t>& out) {
  if (c < 0x80) {
    out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
    return;
  }
  if (c == 0x130) {  // the one unconditional multi-char lowercase mapping (SpecialCasing)
    out.push_back('i');
    out.push_back(0x307);
    return;
  }
  out.push_back(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
}

static int ccc(char32_t c) {
  if (in_diff(kDiff_zeroccc, c)) return 0;  // a mark newer than tokenizers' tables
  return utf8proc_get_property(static_cast<utf8proc_int32_t>(c))->combining_class;
}

static bool compose_pair(char32_t a, char32_t b, char32_t& r) {
  utf8proc_int32_t buf[2] = {static_cast<utf8proc_int32_t>(a), static_cast<utf8proc_int32_t>(b)};
  utf8proc_ssize_t n = utf8proc_normalize_utf32(buf, 2, UTF8PROC_COMPOSE);
  if (n == 1 && !in_diff(kDiff_nodecomp, static_cast<char32_t>(buf[0]))) {
    r = static_cast<char32_t>(buf[0]);
    return true;
  }
  return false;
}

namespace {
struct Item {
  int cls;
  char32_t c;
  int change;
};
}  // namespace

std::vector<Change> unicode_normalize(std::string_view s, bool compat, bool compose) {
  // Decomposition: each char's full decomposition (first piece "replaces", the rest are "added"),
  // then a stable sort by combining class of every run of non-starters.
  std::vector<Item> buf;
  buf.reserve(s.size() + 8);
  size_t pending = 0;
  utf8proc_int32_t dec[32];
  auto opts = static_cast<utf8proc_option_t>(UTF8PROC_DECOMPOSE | (compat ? UTF8PROC_COMPAT : 0));
  auto sort_pending = [&] {
    std::stable_sort(buf.begin() + static_cast<std::ptrdiff_t>(pending), buf.end(),
                     [](const Item& x, const Item& y) { return x.cls < y.cls; });
    pending = buf.size();
  };
  for (size_t i = 0; i < s.size();) {
    char32_t c = next_cp(s, i);
    int last_bound = 0;
    utf8proc_ssize_t n;
    if (in_diff(kDiff_nodecomp, c) || (compat && in_diff(kDiff_nocompat, c))) {
      dec[0] = static_cast<utf8proc_int32_t>(c);  // tokenizers' older data has no decomposition
      n = 1;
    } else {
      n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(c), dec, 32, opts, &last_bound);
    }
    if (n < 0 || n > 32) fail("Unicode normalization failed");
    for (utf8proc_ssize_t k = 0; k < n; ++k) {
      auto d = static_cast<char32_t>(dec[k]);
      int cls = ccc(d);
      if (cls == 0) sort_pending();
      buf.push_back({cls, d, k == 0 ? 0 : 1});
    }
  }
  sort_pending();
  std::vector<Change> out;
  out.reserve(buf.size());
  if (!compose) {
    for (auto& it : buf) out.emplace_back(it.c, it.change);
    return out;
  }
  // Canonical composition with the same bookkeeping of changes as the alignments crate: a
  // composite carries its parts' changes minus one; blocked marks wait in `held`.
  bool have = false;
  Change composee{0, 0};
  int last_ccc = -1;
  std::vector<Change> held;
  for (auto& it : buf) {
    char32_t ch = it.c;
    int change = it.change, cls = it.cls;
    if (!have) {
      if (cls != 0) {
        out.emplace_back(ch, change);
        continue;
      }
      composee = {ch, change};
      have = true;
      continue;
    }
    char32_t r;
    if (last_ccc < 0) {
      if (compose_pair(composee.first, ch, r)) {
        composee = {r, composee.second + change - 1};
        continue;
      }
      if (cls == 0) {
        out.push_back(composee);
        composee = {ch, change};
        continue;
      }
      held.emplace_back(ch, change);
      last_ccc = cls;
      continue;
    }
    if (last_ccc >= cls) {
      if (cls == 0) {
        out.push_back(composee);
        out.insert(out.end(), held.begin(), held.end());
        held.clear();
        composee = {ch, change};
        last_ccc = -1;
        continue;
      }
      held.emplace_back(ch, change);
      last_ccc = cls;
      continue;
    }
    if (compose_pair(composee.first, ch, r)) {
      composee = {r, composee.second + change - 1};
      continue;
    }
    held.emplace_back(ch, change);
    last_ccc = cls;
  }
  if (have) out.push_back(composee);
  out.insert(out.end(), held.begin(), held.end());
  return out;
}

std::vector<std::pair<size_t, size_t>> graphemes(std::string_view s) {
  std::vector<std::pair<size_t, size_t>> out;
  utf8proc_int32_t state = 0;
  size_t start = 0, i = 0;
  char32_t prev = 0;
  bool first = true;
  while (i < s.size()) {
    size_t at = i;
    char32_t c = next_cp(s, i);
    if (!first && utf8proc_grapheme_break_stateful(static_cast<utf8proc_int32_t>(prev),
                                                   static_cast<utf8proc_int32_t>(c), &state)) {
      out.emplace_back(start, at);
      start = at;
    }
    first = false;
    prev = c;
  }
  if (start < s.size()) out.emplace_back(start, s.size());
  return out;
}

}  // namespace inbedder::tok::detail
