// Internal declarations shared by the tokenizer's components: UTF-8 and Unicode helpers, the
// NormalizedString that tracks every normalized byte's original span (as `tokenizers` does), the
// split patterns, and the component interfaces (normalizer, pre-tokenizer, model, processor,
// decoder) with their JSON factories.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "inbedder/tokenizer.hpp"

namespace inbedder::tok::detail {

using Json = nlohmann::json;
using Span = std::pair<uint32_t, uint32_t>;  // [start, end) in bytes of the original input

[[noreturn]] void fail(const std::string& what);
// Field access that names the component and field on a missing or mistyped value.
const Json& field(const Json& j, const char* name, const char* component);
std::string str_field(const Json& j, const char* name, const char* component);
bool bool_field(const Json& j, const char* name, const char* component, bool dflt);

// ---- UTF-8 / Unicode (unicode.cpp) ----
// Decodes one code point of valid UTF-8 at s[i], advancing i.
char32_t next_cp(std::string_view s, size_t& i);
size_t cp_len(char32_t c);
void put_cp(std::string& out, char32_t c);
// Byte offset of the first invalid UTF-8 sequence, or npos.
size_t invalid_utf8_at(std::string_view s);
std::u32string to_u32(std::string_view s);
bool is_whitespace(char32_t c);    // Unicode White_Space, as Rust's char::is_whitespace
int general_category(char32_t c);  // utf8proc_category_t
bool is_punctuation(char32_t c);   // P*
bool is_word_char(char32_t c);     // Rust regex \w (approximated from categories)
bool is_other_ccf(char32_t c);     // Cc, Cf, Co (unicode_categories' is_other)
bool is_mark_nonspacing(char32_t c);
bool is_combining_mark(char32_t c);
void lowercase(char32_t c, std::vector<char32_t>& out);
// NFD/NFKD/NFC/NFKC as (char, change) transformations, as unicode-normalization-alignments.
std::vector<std::pair<char32_t, int>> unicode_normalize(std::string_view s, bool compat,
                                                        bool compose);
// Extended grapheme clusters: byte ranges.
std::vector<std::pair<size_t, size_t>> graphemes(std::string_view s);
// Lossy UTF-8 decoding (maximal subparts become U+FFFD, as Rust's from_utf8_lossy).
std::string utf8_lossy(std::string_view bytes);

// ---- Patterns (normalized_string.cpp) ----
class Regex {
 public:
  // Oniguruma-flavoured pattern (as tokenizers' SysRegex) compiled with PCRE2 in UTF+UCP mode.
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // All non-overlapping matches, leftmost first.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const;

 private:
  void* code_ = nullptr;
};

// A split pattern: a literal string, a regex, or a char predicate; `invert` flips matches.
struct Pattern {
  std::string literal;
  std::shared_ptr<Regex> regex;
  std::function<bool(char32_t)> pred;
  bool invert = false;
  // (span, is_match) covering the whole string, as tokenizers' Pattern::find_matches.
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> find_matches(std::string_view s) const;
};
Pattern pattern_from_json(const Json& j, const char* component);

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
SplitBehavior behavior_from_json(const Json& j, const char* component);

using Change = std::pair<char32_t, int>;

class NormalizedString {
 public:
  NormalizedString() = default;
  explicit NormalizedString(std::string_view original, uint32_t base = 0);

  const std::string& get() const { return norm_; }
  bool empty() const { return norm_.empty(); }
  uint32_t shift() const { return shift_; }
  // Original span of normalized bytes [s, e) (tokenizers' convert_offsets + original_shift).
  Span original_span(size_t s, size_t e) const;
  NormalizedString slice(size_t s, size_t e) const;

  void transform_range(size_t s, size_t e, const std::vector<Change>& dest, size_t initial_offset);
  void transform(const std::vector<Change>& dest, size_t initial_offset) {
    transform_range(0, norm_.size(), dest, initial_offset);
  }
  void prepend(std::string_view s);
  void replace(const Pattern& p, std::string_view content);
  void filter(const std::function<bool(char32_t)>& keep);
  void map(const std::function<char32_t(char32_t)>& f);
  void lowercase();
  void lrstrip(bool left, bool right);
  void normalize_unicode(bool compat, bool compose);
  std::vector<NormalizedString> split(const Pattern& p, SplitBehavior b) const;

 private:
  std::string norm_;
  std::vector<Span> align_;  // one per byte of norm_
  uint32_t shift_ = 0;
};

// ---- Components ----
struct Normalizer {
  virtual ~Normalizer() = default;
  virtual void normalize(NormalizedString& s) const = 0;
};
std::unique_ptr<Normalizer> make_normalizer(const Json& j);

// A piece of the input on its way to the model: text still to tokenize, or an added token.
struct Split {
  NormalizedString ns;
  int32_t token_id = -1;  // >= 0: an added token, already tokenized
};
using Splits = std::vector<Split>;

struct PreTokenizer {
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(Splits& splits) const = 0;
};
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& j);
// Applies f to each untokenized split, replacing it by f's non-empty results.
void split_each(Splits& splits,
                const std::function<std::vector<NormalizedString>(NormalizedString&&)>& f);
const std::vector<std::string>& byte_to_unicode();  // GPT-2's byte -> char (UTF-8)
int unicode_to_byte(char32_t c);                    // inverse, -1 if not a byte char

struct Token {
  int32_t id;
  size_t start, end;  // bytes of the split's normalized string
};

struct Model {
  virtual ~Model() = default;
  virtual void tokenize(std::string_view s, std::vector<Token>& out) const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view t) const = 0;
  virtual const std::string* id_to_token(int32_t id) const = 0;
  virtual size_t vocab_size() const = 0;
  virtual std::vector<std::string> vocab_tokens() const = 0;
};
std::unique_ptr<Model> make_model(const Json& j);

// One sequence (or the merged result) while post-processing.
struct Enc {
  std::vector<int32_t> ids, type_ids, seq_ids;
  std::vector<std::string> tokens;
  std::vector<std::pair<size_t, size_t>> offsets;
  std::vector<uint8_t> special;
  std::string_view text;  // the sequence's input (for char-based offset trimming)
  void truncate(size_t max_len, TruncationDirection dir);
  void append(const Enc& o);
};

struct PostProcessor {
  virtual ~PostProcessor() = default;
  virtual size_t added_tokens(bool pair) const = 0;
  // encs: one or two sequences; may merge them into one.
  virtual void process(std::vector<Enc>& encs, bool add_special) const = 0;
};
std::unique_ptr<PostProcessor> make_post_processor(const Json& j);
// ByteLevel's trim_offsets, done on char offsets as tokenizers does (Python gets char offsets).
void trim_offsets(Enc& e, bool add_prefix_space);

struct Decoder {
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};
std::unique_ptr<Decoder> make_decoder(const Json& j);

void truncate_encodings(Enc& a, Enc* b, const Truncation& t);

// ---- Added vocabulary (added_vocabulary.cpp) ----
struct AddedToken {
  int32_t id;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

class AddedVocabulary {
 public:
  void load(const Json& added, const Normalizer* normalizer);
  // Split `text` on added tokens (non-normalized ones on the original, normalized ones after the
  // normalizer), as tokenizers' extract_and_normalize.
  Splits extract_and_normalize(std::string_view text, const Normalizer* normalizer) const;
  const AddedToken* by_id(int32_t id) const;
  std::optional<int32_t> id_of(std::string_view content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  struct Matcher {
    std::vector<std::pair<std::string, size_t>> patterns;  // (pattern, token index), by first byte
    std::vector<std::vector<size_t>> by_first;             // 256 buckets of pattern indices
    bool empty() const { return patterns.empty(); }
  };
  void build(Matcher& m, bool normalized, const Normalizer* normalizer);
  void split_on(Splits& out, NormalizedString&& ns, const Matcher& m) const;
  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  Matcher raw_, normed_;
};

}  // namespace inbedder::tok::detail
