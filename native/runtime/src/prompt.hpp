// Prompts and tokenization, as runtime/prompt.py: fill the template in one pass, the two
// truncation modes ("input", "reference"), answer slots, padding.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bundle.hpp"
#include "inbedder/tokenizer.hpp"

namespace inbedder {

// One tokenized prompt.
struct Encoded {
  std::vector<int64_t> ids;
  std::vector<int64_t> type_ids;
  std::vector<int64_t> slots;  // positions of the answer slots in ids (empty if none)
  bool truncated = false;
  int64_t pool_start = 0;  // first position pooled (instructor / sentence-encoder)
};

// Byte span of the input in a filled string; first = -1 when the template has no {input}.
using Span = std::pair<long long, long long>;

// Fills {input} and {instruction} in a single pass; returns the string and the input's span.
std::pair<std::string, Span> fill(std::string_view tpl, std::string_view text,
                                  std::string_view instruction);
// Python's str.strip() (Unicode whitespace); lead gets the bytes removed at the start.
std::string py_strip(std::string_view s, std::size_t* lead = nullptr);
bool valid_utf8(std::string_view s, std::size_t* bad_offset = nullptr);

class PromptTokenizer {
 public:
  PromptTokenizer(const tok::Tokenizer& tokenizer, const PromptSpec& prompt,
                  const TruncationSpec& truncation);
  // Tokens of the prompt with an empty text and an empty instruction (template, answer slots,
  // special tokens): what every prompt holds.
  std::size_t fixed_tokens() const;
  // Tokens of text alone, special tokens included, never truncated.
  std::size_t token_count(std::string_view text) const;
  // runtime/prompt.py's stand_in: for a text past 2 * 8 * (max_length + 32) characters, its head
  // and tail (each cut at the start of a run of ASCII whitespace, each more than max_length + 32
  // tokens), joined, which every truncation mode treats exactly as the text, at a cost bounded by
  // max_length rather than the text's length. Returns `text` itself, or a view of `storage`.
  std::string_view stand_in(std::string_view text, std::string& storage) const;
  // mode: "input" | "reference".
  Encoded encode(std::string_view text, std::string_view instruction,
                 const std::string& mode) const;

 private:
  struct Filled {
    std::vector<std::string> segs;
    Span span{-1, -1};
    int where = -1;  // which segment holds the input
  };
  Filled segments(std::string_view text, std::string_view instruction) const;
  tok::Encoding run(const Filled& f, const tok::Truncation* trunc) const;
  Encoded cut_input(std::string_view text, std::string_view instruction, const tok::Encoding& enc,
                    const Filled& f) const;
  Encoded finish(const tok::Encoding& enc, bool truncated, bool fallback = false) const;

  const tok::Tokenizer& tok_;
  PromptSpec prompt_;
  std::size_t max_length_;
  tok::Truncation plain_, ref_, first_only_;
  std::optional<int32_t> slot_id_;
  std::string slot_suffix_;
};

}  // namespace inbedder
