// (text, instruction) -> token ids, mirroring runtime/prompt.py step for step. Offsets here are
// UTF-8 byte offsets (the native tokenizer's), where Python uses code points: the same cut
// points, since every token boundary is a character boundary.
//
// Truncation modes (README, "Long texts"):
// - "input": cut the end of the input text until the prompt fits; template, instruction and
//   answer slots are kept; if they alone do not fit, fall back to the reference rule.
// - "reference": the published tokenizer call (manifest truncation side + strategy).
#include "prompt.hpp"

namespace inbedder {
namespace {

// Decodes one code point at s[i]; returns its length (0 if invalid).
std::size_t utf8_next(std::string_view s, std::size_t i, uint32_t* cp) {
  auto c = static_cast<unsigned char>(s[i]);
  std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (!n || i + n > s.size()) return 0;
  uint32_t v = n == 1 ? c : n == 2 ? (c & 0x1f) : n == 3 ? (c & 0x0f) : (c & 0x07);
  for (std::size_t k = 1; k < n; ++k) {
    auto cc = static_cast<unsigned char>(s[i + k]);
    if ((cc >> 6) != 2) return 0;
    v = (v << 6) | (cc & 0x3f);
  }
  static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (v < min[n] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
  *cp = v;
  return n;
}

// str.isspace(): the code points Python counts as whitespace.
bool py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
         c == 0x205f || c == 0x3000;
}

tok::TruncationStrategy strategy_of(const std::string& s) {
  if (s == "longest_first") return tok::TruncationStrategy::LongestFirst;
  if (s == "only_first") return tok::TruncationStrategy::OnlyFirst;
  if (s == "only_second") return tok::TruncationStrategy::OnlySecond;
  throw BundleError("unknown truncation strategy '" + s + "' in the manifest");
}

}  // namespace

bool valid_utf8(std::string_view s, std::size_t* bad_offset) {
  for (std::size_t i = 0; i < s.size();) {
    uint32_t cp;
    std::size_t n = utf8_next(s, i, &cp);
    if (!n) {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    i += n;
  }
  return true;
}

std::string py_strip(std::string_view s, std::size_t* lead) {
  std::size_t b = 0, e = s.size();
  while (b < e) {
    uint32_t cp = 0;
    std::size_t n = utf8_next(s, b, &cp);
    if (!n || !py_space(cp)) break;
    b += n;
  }
  // Scan forward for the last non-space character (UTF-8 cannot be read backwards safely
  // without the same decoder).
  std::size_t last_end = b;
  for (std::size_t i = b; i < e;) {
    uint32_t cp = 0;
    std::size_t n = utf8_next(s, i, &cp);
    if (!n) n = 1, cp = 0xfffd;
    i += n;
    if (!py_space(cp)) last_end = i;
  }
  if (lead) *lead = b;
  return std::string(s.substr(b, last_end - b));
}

std::pair<std::string, Span> fill(std::string_view tpl, std::string_view text,
                                  std::string_view instruction) {
  std::string out;
  Span span{-1, -1};
  std::size_t pos = 0;
  while (pos < tpl.size()) {
    std::size_t open = tpl.find('{', pos);
    if (open == std::string_view::npos) break;
    std::string_view rest = tpl.substr(open);
    bool is_input = rest.substr(0, 7) == "{input}";
    bool is_instr = rest.substr(0, 13) == "{instruction}";
    if (!is_input && !is_instr) {
      out.append(tpl.substr(pos, open + 1 - pos));
      pos = open + 1;
      continue;
    }
    out.append(tpl.substr(pos, open - pos));
    if (is_input) {
      span = {static_cast<long long>(out.size()), static_cast<long long>(out.size() + text.size())};
      out.append(text);
      pos = open + 7;
    } else {
      out.append(instruction);
      pos = open + 13;
    }
  }
  out.append(tpl.substr(pos));
  return {out, span};
}

PromptTokenizer::PromptTokenizer(const tok::Tokenizer& tokenizer, const PromptSpec& prompt,
                                 const TruncationSpec& truncation)
    : tok_(tokenizer), prompt_(prompt), max_length_(truncation.max_length) {
  ref_.max_length = max_length_;
  ref_.strategy = strategy_of(truncation.strategy);
  if (truncation.side != "left" && truncation.side != "right")
    throw BundleError("unknown truncation side '" + truncation.side + "' in the manifest");
  ref_.direction =
      truncation.side == "left" ? tok::TruncationDirection::Left : tok::TruncationDirection::Right;
  // "No truncation" (tokenizers' no_truncation()): the interface's null truncation means the
  // tokenizer.json's own truncation, which the runtime never uses; a limit no text reaches.
  plain_.max_length = std::size_t(1) << 40;
  first_only_.max_length = max_length_;
  first_only_.strategy = tok::TruncationStrategy::OnlyFirst;
  first_only_.direction = tok::TruncationDirection::Right;
  if (prompt.slot_token) {
    slot_id_ = tok_.token_to_id(*prompt.slot_token);
    if (!slot_id_)
      throw ValueError("slot token '" + *prompt.slot_token +
                       "' is not in the tokenizer's vocabulary");
    for (int i = 0; i < prompt.answer_slots; ++i) slot_suffix_ += *prompt.slot_token;
  }
}

std::size_t PromptTokenizer::fixed_tokens() const {
  return run(segments("", ""), &plain_).ids.size();
}

std::size_t PromptTokenizer::token_count(std::string_view text) const {
  return tok_.encode(text, &plain_).ids.size();
}

namespace {

// Python's string positions are code points; these walk UTF-8 (valid: encode checked it) by code
// point, keeping both the code-point index and the byte offset.
constexpr std::size_t kCharsPerToken = 8;  // first guess of a head's length, doubled as needed
constexpr std::size_t kMarginTokens = 32;  // tokens past the limit at each end of a stand-in

bool is_cont(unsigned char c) { return (c & 0xC0) == 0x80; }

std::size_t code_points(std::string_view s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += !is_cont(c);
  return n;
}

// Byte offset of code point `k` (k <= code_points(s)).
std::size_t byte_at(std::string_view s, std::size_t k) {
  std::size_t b = 0;
  for (; k > 0 && b < s.size(); --k) {
    ++b;
    while (b < s.size() && is_cont(static_cast<unsigned char>(s[b]))) ++b;
  }
  return b;
}

// Byte offset of code point `total - k_from_end`.
std::size_t byte_from_end(std::string_view s, std::size_t k_from_end) {
  std::size_t b = s.size();
  for (; k_from_end > 0 && b > 0; --k_from_end) {
    --b;
    while (b > 0 && is_cont(static_cast<unsigned char>(s[b]))) --b;
  }
  return b;
}

bool cut_space(char c) { return c == ' ' || c == '\t' || c == '\n'; }

// runtime/prompt.py's _run_start: the start of the run of whitespace nearest before code point
// `at` (within `window` code points), so that a cut there falls on a pre-token boundary; `at`
// itself when there is none. at_byte is at's byte offset; returns a byte offset.
std::size_t run_start(std::string_view s, std::size_t at, std::size_t at_byte, std::size_t window) {
  const std::size_t lo = std::max<std::size_t>(at >= window ? at - window : 0, 1);
  std::size_t i = at, b = at_byte;
  auto back = [&] {  // one code point back
    --i;
    --b;
    while (b > 0 && is_cont(static_cast<unsigned char>(s[b]))) --b;
  };
  while (i >= lo && !cut_space(s[b])) {
    if (i == lo) return at_byte;  // i would drop below lo
    back();
  }
  if (i < lo) return at_byte;
  while (i > lo && cut_space(s[b - 1])) back();  // ASCII: the previous byte is the previous char
  return b;
}

}  // namespace

std::string_view PromptTokenizer::stand_in(std::string_view text, std::string& storage) const {
  const std::size_t need = max_length_ + kMarginTokens;
  std::size_t n = kCharsPerToken * need;
  if (2 * n >= text.size()) return text;  // fewer bytes than 2n: fewer code points too
  const std::size_t len = code_points(text);
  while (2 * n < len) {
    std::string_view head = text.substr(0, run_start(text, n, byte_at(text, n), n / 2));
    std::size_t tail_at = byte_from_end(text, n);  // code point len - n
    std::string_view tail = text.substr(run_start(text, len - n, tail_at, n / 2));
    if (token_count(head) > need && token_count(tail) > need) {
      storage.assign(head);
      storage.append(tail);
      return storage;
    }
    n *= 2;
  }
  return text;
}

PromptTokenizer::Filled PromptTokenizer::segments(std::string_view text,
                                                  std::string_view instruction) const {
  Filled f;
  const auto& tpls = prompt_.segments;
  for (std::size_t i = 0; i < tpls.size(); ++i) {
    auto [s, sp] = fill(tpls[i], text, instruction);
    if (i == tpls.size() - 1) s += slot_suffix_;
    if (prompt_.strip) {
      std::size_t lead = 0;
      s = py_strip(s, &lead);
      if (sp.first >= 0) {
        long long l = static_cast<long long>(lead), n = static_cast<long long>(s.size());
        sp = {std::max(sp.first - l, 0LL), std::min(sp.second - l, n)};
      }
    }
    if (sp.first >= 0) f.span = sp, f.where = int(i);
    f.segs.push_back(std::move(s));
  }
  return f;
}

tok::Encoding PromptTokenizer::run(const Filled& f, const tok::Truncation* trunc) const {
  if (f.segs.size() == 1) return tok_.encode(f.segs[0], trunc);
  return tok_.encode_pair(f.segs[0], f.segs[1], trunc);
}

Encoded PromptTokenizer::encode(std::string_view text, std::string_view instruction,
                                const std::string& mode) const {
  if (mode != "input" && mode != "reference")
    throw ValueError("truncation must be one of ('input', 'reference'), got '" + mode + "'");
  // A long instruction is never cut in mode "input" but is truncated by the reference rule: its
  // stand-in gives the same prompt, as the text's does.
  std::string text_storage, instruction_storage;
  text = stand_in(text, text_storage);
  instruction = stand_in(instruction, instruction_storage);
  Filled f = segments(text, instruction);
  if (mode == "reference") {
    tok::Encoding enc = run(f, &ref_);
    std::size_t full = run(f, &plain_).ids.size();
    return finish(enc, full > max_length_);
  }
  tok::Encoding enc = run(f, &plain_);
  if (enc.ids.size() <= max_length_) return finish(enc, false);
  if (f.segs.size() == 2 && f.where == 0 && prompt_.segments[0] == "{input}") {
    // The text is a whole segment: the tokenizer cuts it natively and keeps the second intact.
    try {
      return finish(run(f, &first_only_), true);
    } catch (const tok::TokenizerError&) {
      return finish(run(f, &ref_), true, true);
    }
  }
  return cut_input(text, instruction, enc, f);
}

Encoded PromptTokenizer::cut_input(std::string_view text, std::string_view instruction,
                                   const tok::Encoding& enc, const Filled& f) const {
  if (f.span.first < 0) return finish(run(f, &ref_), true);
  // Tokens lying wholly inside the input's span, in order (byte-level BPE gives some tokens an
  // empty span: they count too).
  std::vector<std::size_t> inside;
  for (std::size_t i = 0; i < enc.ids.size(); ++i) {
    auto [s, e] = enc.offsets[i];
    if (enc.sequence_ids[i] == f.where && static_cast<long long>(s) >= f.span.first &&
        static_cast<long long>(e) <= f.span.second)
      inside.push_back(i);
  }
  long long keep = static_cast<long long>(inside.size()) -
                   (static_cast<long long>(enc.ids.size()) - static_cast<long long>(max_length_));
  while (keep > 0) {
    std::size_t cut = enc.offsets[inside[std::size_t(keep - 1)]].second - std::size_t(f.span.first);
    tok::Encoding trial = run(segments(text.substr(0, cut), instruction), &plain_);
    if (trial.ids.size() <= max_length_) return finish(trial, true);
    keep -= std::max<long long>(1, static_cast<long long>(trial.ids.size() - max_length_));
  }
  Filled empty = segments("", instruction);
  tok::Encoding trial = run(empty, &plain_);
  if (trial.ids.size() <= max_length_) return finish(trial, true);
  // Template + instruction + slots alone exceed the limit: the reference rule.
  return finish(run(empty, &ref_), true, true);
}

// fallback: mode "input" fell back to the reference rule because the prompt without the text
// does not fit (the error then says so).
Encoded PromptTokenizer::finish(const tok::Encoding& enc, bool truncated, bool fallback) const {
  Encoded e;
  e.ids.assign(enc.ids.begin(), enc.ids.end());
  e.type_ids.assign(enc.type_ids.begin(), enc.type_ids.end());
  e.truncated = truncated;
  if (prompt_.answer_slots) {
    std::vector<int64_t> found;
    for (std::size_t i = 0; i < e.ids.size(); ++i)
      if (e.ids[i] == *slot_id_) found.push_back(int64_t(i));
    std::size_t want = std::size_t(prompt_.answer_slots);
    std::size_t from = found.size() > want ? found.size() - want : 0;
    e.slots.assign(found.begin() + long(from), found.end());
    if (e.slots.size() < want && fallback)
      throw ValueError(
          "the instruction is too long: the prompt without the text (template, instruction, " +
          std::to_string(want) + " answer slots) exceeds the bundle's max_length " +
          std::to_string(max_length_) +
          " tokens, and truncation would remove answer slots; use a shorter instruction");
    if (e.slots.size() < want)
      throw ValueError("truncation removed answer slots (" + std::to_string(e.slots.size()) +
                       " of " + std::to_string(want) +
                       " left); use truncation='input' or a shorter instruction");
  }
  return e;
}

}  // namespace inbedder
