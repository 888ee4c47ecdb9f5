// Decoders: ByteLevel, WordPiece, Metaspace, ByteFallback, Fuse, Strip, Replace and Sequence,
// each a decode_chain over token strings as in tokenizers; plus transformers' clean-up.
#include "internal.hpp"

namespace inbedder::tok::detail {
namespace {

struct ByteLevelD : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (auto& t : tokens) {
      std::string mapped;
      bool ok = true;
      for (size_t i = 0; i < t.size();) {
        int b = unicode_to_byte(next_cp(t, i));
        if (b < 0) {
          ok = false;
          break;
        }
        mapped += static_cast<char>(b);
      }
      bytes += ok ? mapped : t;  // a token with a non-byte char keeps its own bytes
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, pos)) {
    out.append(s, pos, p - pos);
    out.append(to);
    pos = p + from.size();
  }
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

struct WordPieceD : Decoder {
  std::string prefix = "##";
  bool cleanup = true;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      if (i != 0) {
        if (t.compare(0, prefix.size(), prefix) == 0)
          t.erase(0, prefix.size());
        else
          t.insert(0, " ");
      }
      if (cleanup) t = wordpiece_cleanup(t);
    }
  }
  static std::string wordpiece_cleanup(std::string s) {
    replace_all(s, " .", ".");
    replace_all(s, " ?", "?");
    replace_all(s, " !", "!");
    replace_all(s, " ,", ",");
    replace_all(s, " ' ", "'");
    replace_all(s, " n't", "n't");
    replace_all(s, " 'm", "'m");
    replace_all(s, " do not", " don't");
    replace_all(s, " 's", "'s");
    replace_all(s, " 've", "'ve");
    replace_all(s, " 're", "'re");
    return s;
  }
};

struct MetaspaceD : Decoder {
  char32_t rep = 0x2581;
  bool prepend = true;  // prepend_scheme != never
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& t = tokens[i];
      for (size_t k = 0; k < t.size();) {
        char32_t c = next_cp(t, k);
        if (c == rep) {
          if (!(i == 0 && prepend)) out += ' ';
        } else {
          put_cp(out, c);
        }
      }
      tokens[i] = std::move(out);
    }
  }
};

struct ByteFallbackD : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (invalid_utf8_at(pending) == std::string::npos)
        out.push_back(pending);
      else
        for (size_t k = 0; k < pending.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
      pending.clear();
    };
    for (auto& t : tokens) {
      int byte = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
        auto hex = [](char c) {
          if (c >= '0' && c <= '9') return c - '0';
          if (c >= 'a' && c <= 'f') return c - 'a' + 10;
          if (c >= 'A' && c <= 'F') return c - 'A' + 10;
          return -1;
        };
        int h = hex(t[3]), l = hex(t[4]);
        if (h >= 0 && l >= 0) byte = h * 16 + l;
      }
      if (byte >= 0) {
        pending += static_cast<char>(byte);
      } else {
        flush();
        out.push_back(t);
      }
    }
    flush();
    tokens = std::move(out);
  }
};

struct FuseD : Decoder {
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

struct StripD : Decoder {
  char32_t content = ' ';
  size_t start = 0, stop = 0;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      std::u32string cs = to_u32(t);
      size_t a = 0, b = cs.size();
      for (size_t i = 0; i < start && i < cs.size(); ++i) {
        if (cs[i] != content) break;
        a = i + 1;
      }
      for (size_t i = 0; i < stop && i < cs.size(); ++i) {
        size_t idx = cs.size() - i - 1;
        if (cs[idx] != content) break;
        b = idx;
      }
      std::string out;
      for (size_t i = a; i < b; ++i) put_cp(out, cs[i]);
      t = std::move(out);
    }
  }
};

struct ReplaceD : Decoder {
  Pattern pattern;
  std::string content;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      std::string out;
      for (auto& [span, m] : pattern.find_matches(t))
        out += m ? content : t.substr(span.first, span.second - span.first);
      t = std::move(out);
    }
  }
};

struct SequenceD : Decoder {
  std::vector<std::unique_ptr<Decoder>> items;
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& d : items) d->decode_chain(tokens);
  }
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const Json& j) {
  if (j.is_null()) return nullptr;
  std::string type = str_field(j, "type", "decoder");
  if (type == "ByteLevel") return std::make_unique<ByteLevelD>();
  if (type == "WordPiece") {
    auto d = std::make_unique<WordPieceD>();
    if (j.contains("prefix")) d->prefix = str_field(j, "prefix", "WordPiece decoder");
    d->cleanup = bool_field(j, "cleanup", "WordPiece decoder", true);
    return d;
  }
  if (type == "Metaspace") {
    auto d = std::make_unique<MetaspaceD>();
    std::string rep = str_field(j, "replacement", "Metaspace decoder");
    size_t i = 0;
    if (rep.empty()) fail("Metaspace decoder: 'replacement' must be one character");
    d->rep = next_cp(rep, i);
    std::string scheme =
        j.contains("prepend_scheme")
            ? str_field(j, "prepend_scheme", "Metaspace decoder")
            : (bool_field(j, "add_prefix_space", "Metaspace decoder", true) ? "always" : "never");
    d->prepend = scheme != "never";
    return d;
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackD>();
  if (type == "Fuse") return std::make_unique<FuseD>();
  if (type == "Strip") {
    auto d = std::make_unique<StripD>();
    std::string c = str_field(j, "content", "Strip decoder");
    size_t i = 0;
    if (c.empty()) fail("Strip decoder: 'content' must be one character");
    d->content = next_cp(c, i);
    const Json& a = field(j, "start", "Strip decoder");
    const Json& b = field(j, "stop", "Strip decoder");
    if (!a.is_number_unsigned() || !b.is_number_unsigned())
      fail("Strip decoder: 'start' and 'stop' must be integers");
    d->start = a.get<size_t>();
    d->stop = b.get<size_t>();
    return d;
  }
  if (type == "Replace") {
    auto d = std::make_unique<ReplaceD>();
    d->pattern = pattern_from_json(field(j, "pattern", "Replace decoder"), "Replace decoder");
    d->content = str_field(j, "content", "Replace decoder");
    return d;
  }
  if (type == "Sequence") {
    auto d = std::make_unique<SequenceD>();
    const Json& list = field(j, "decoders", "Sequence decoder");
    if (!list.is_array()) fail("Sequence decoder: 'decoders' must be an array");
    for (auto& x : list) {
      auto item = make_decoder(x);
      if (item) d->items.push_back(std::move(item));
    }
    return d;
  }
  fail("unsupported decoder: " + type);
}

}  // namespace inbedder::tok::detail

namespace inbedder::tok {

std::string clean_up_tokenization(std::string text) {
  // transformers' PreTrainedTokenizerBase.clean_up_tokenization
  const std::pair<const char*, const char*> rules[] = {
      {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (auto& [a, b] : rules) detail::replace_all(text, a, b);
  return text;
}

}  // namespace inbedder::tok
