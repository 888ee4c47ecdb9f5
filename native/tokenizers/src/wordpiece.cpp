// The WordPiece model (BERT, MiniLM): greedy longest-match-first with the continuing-subword
// prefix; a word longer than max_input_chars_per_word, or with a piece not in the vocabulary,
// becomes one unk token spanning the whole word.
#include "internal.hpp"
#include "vocab.hpp"

namespace inbedder::tok::detail {
namespace {

class WordPiece : public Model {
 public:
  Vocab vocab;
  std::string unk, prefix;
  size_t max_chars = 100;

  void tokenize(std::string_view w, std::vector<Token>& out) const override {
    size_t chars = 0;
    for (size_t i = 0; i < w.size(); ++chars) next_cp(w, i);
    if (chars > max_chars) {
      out.push_back({unk_id(), 0, w.size()});
      return;
    }
    size_t mark = out.size();
    std::string buf;
    size_t start = 0;
    while (start < w.size()) {
      size_t end = w.size();
      std::optional<int32_t> found;
      while (start < end) {
        std::string_view sub = w.substr(start, end - start);
        if (start > 0) {
          buf.assign(prefix);
          buf.append(sub);
          found = vocab.get(buf);
        } else {
          found = vocab.get(sub);
        }
        if (found) break;
        // step back one char (the substring's last char)
        size_t k = end - 1;
        while (k > start && (static_cast<unsigned char>(w[k]) & 0xC0) == 0x80) --k;
        end = k;
      }
      if (!found) {
        out.resize(mark);
        out.push_back({unk_id(), 0, w.size()});
        return;
      }
      out.push_back({*found, start, end});
      start = end;
    }
  }
  int32_t unk_id() const {
    auto id = vocab.get(unk);
    if (!id) fail("WordPiece: unk_token '" + unk + "' is not in the vocabulary");
    return *id;
  }
  std::optional<int32_t> token_to_id(std::string_view t) const override { return vocab.get(t); }
  const std::string* id_to_token(int32_t id) const override { return vocab.token(id); }
  size_t vocab_size() const override { return vocab.map.size(); }
  std::vector<std::string> vocab_tokens() const override { return vocab.map.keys(); }
};

}  // namespace

std::unique_ptr<Model> make_wordpiece(const Json& j) {
  auto m = std::make_unique<WordPiece>();
  const Json& v = field(j, "vocab", "WordPiece model");
  if (!v.is_object()) fail("WordPiece model: 'vocab' must be an object");
  m->vocab.map.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_number_integer())
      fail("WordPiece model: id of '" + it.key() + "' is not an integer");
    m->vocab.add(it.key(), it.value().get<int64_t>(), "WordPiece model");
  }
  m->unk = str_field(j, "unk_token", "WordPiece model");
  m->prefix = j.contains("continuing_subword_prefix")
                  ? str_field(j, "continuing_subword_prefix", "WordPiece model")
                  : "##";
  if (j.contains("max_input_chars_per_word")) {
    const Json& x = j["max_input_chars_per_word"];
    if (!x.is_number_unsigned())
      fail("WordPiece model: 'max_input_chars_per_word' must be a non-negative integer");
    m->max_chars = x.get<size_t>();
  }
  return m;
}

}  // namespace inbedder::tok::detail
