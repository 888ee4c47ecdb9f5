// inbedder::tok — a reader of Hugging Face `tokenizer.json`, token-for-token equal to `tokenizers`.
//
// Scope: the C++ interface the native runtime uses (the same calls runtime/prompt.py makes on
// `tokenizers.Tokenizer`): encode a text or a text pair with the post-processor's special tokens,
// truncation as `tokenizers` does it, added/special tokens, token_to_id, decode. Internal to
// libinbedder: the public C API (inbedder.h) never exposes it. Errors are exceptions
// (TokenizerError) here; the C API turns them into status codes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace inbedder::tok {

// Any failure: unreadable or malformed tokenizer.json (names the component or field), an
// unsupported component (names it), invalid UTF-8 input (names the byte offset), or a truncation
// that cannot be satisfied (same cases as `tokenizers`' "Truncation error").
class TokenizerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class TruncationStrategy { LongestFirst, OnlyFirst, OnlySecond };
enum class TruncationDirection { Left, Right };

struct Truncation {
  std::size_t max_length = 512;
  TruncationStrategy strategy = TruncationStrategy::LongestFirst;
  TruncationDirection direction = TruncationDirection::Right;
};

// One encoded sequence or pair, as `tokenizers.Encoding`.
struct Encoding {
  std::vector<int32_t> ids;
  std::vector<int32_t> type_ids;
  // Byte offsets [start, end) into the UTF-8 input of the token's own sequence (text_a or
  // text_b); (0, 0) for special tokens added by the post-processor.
  std::vector<std::pair<std::size_t, std::size_t>> offsets;
  // 0 or 1: which input the token came from; -1 for tokens added by the post-processor.
  std::vector<int32_t> sequence_ids;
  // 1 for special tokens (post-processor's and special added tokens), else 0.
  std::vector<uint8_t> special_tokens_mask;
};

class Tokenizer {
 public:
  static Tokenizer from_file(const std::string& path);
  static Tokenizer from_json(std::string_view json_text);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // All const methods are safe to call from several threads at once.
  Encoding encode(std::string_view text, const Truncation* truncation = nullptr,
                  bool add_special_tokens = true) const;
  Encoding encode_pair(std::string_view text_a, std::string_view text_b,
                       const Truncation* truncation = nullptr, bool add_special_tokens = true) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  std::size_t vocab_size() const;  // including added tokens, as get_vocab_size(with_added_tokens=True)

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// transformers' `clean_up_tokenization` (decode with clean_up_tokenization_spaces=True).
std::string clean_up_tokenization(std::string text);

}  // namespace inbedder::tok
