// Pre-tokenizers: ByteLevel (GPT-2's regex and byte-to-char mapping), BertPreTokenizer,
// Metaspace, Whitespace, WhitespaceSplit, Split, Punctuation, Digits and Sequence.
#include "internal.hpp"

namespace inbedder::tok::detail {

void split_each(Splits& splits,
                const std::function<std::vector<NormalizedString>(NormalizedString&&)>& f) {
  Splits out;
  out.reserve(splits.size() * 2);
  for (auto& sp : splits) {
    if (sp.token_id >= 0) {
      out.push_back(std::move(sp));
      continue;
    }
    for (auto& ns : f(std::move(sp.ns)))
      if (!ns.empty()) out.push_back({std::move(ns), -1});
  }
  splits = std::move(out);
}

const std::vector<std::string>& byte_to_unicode() {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      char32_t c = keep ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      put_cp(t[static_cast<size_t>(b)], c);
    }
    return t;
  }();
  return table;
}

int unicode_to_byte(char32_t c) {
  static const std::unordered_map<char32_t, int> inv = [] {
    std::unordered_map<char32_t, int> m;
    const auto& t = byte_to_unicode();
    for (int b = 0; b < 256; ++b) {
      size_t i = 0;
      m[next_cp(t[static_cast<size_t>(b)], i)] = b;
    }
    return m;
  }();
  auto it = inv.find(c);
  return it == inv.end() ? -1 : it->second;
}

namespace {

const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct ByteLevelP : PreTokenizer {
  bool add_prefix_space = true, use_regex = true;
  Pattern re;
  ByteLevelP() { re.regex = std::make_shared<Regex>(kGpt2Pattern); }
  void pre_tokenize(Splits& splits) const override {
    split_each(splits, [&](NormalizedString&& ns) {
      if (add_prefix_space && ns.get().rfind(' ', 0) != 0) ns.prepend(" ");
      if (use_regex) return ns.split(re, SplitBehavior::Isolated);
      return std::vector<NormalizedString>{std::move(ns)};
    });
    const auto& table = byte_to_unicode();
    for (auto& sp : splits) {
      if (sp.token_id >= 0) continue;
      const std::string& s = sp.ns.get();
      std::vector<Change> t;
      t.reserve(s.size());
      for (size_t i = 0; i < s.size();) {
        size_t b = i;
        next_cp(s, i);
        for (size_t k = b; k < i; ++k) {
          const std::string& m = table[static_cast<unsigned char>(s[k])];
          size_t j = 0;
          t.emplace_back(next_cp(m, j), k > b ? 1 : 0);
        }
      }
      sp.ns.transform(t, 0);
    }
  }
};

bool is_bert_punc(char32_t c) {
  if (c < 0x80)
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
           (c >= 123 && c <= 126);
  return is_punctuation(c);
}

struct BertP : PreTokenizer {
  void pre_tokenize(Splits& splits) const override {
    Pattern ws;
    ws.pred = is_whitespace;
    Pattern punc;
    punc.pred = is_bert_punc;
    split_each(splits, [&](NormalizedString&& ns) { return ns.split(ws, SplitBehavior::Removed); });
    split_each(splits,
               [&](NormalizedString&& ns) { return ns.split(punc, SplitBehavior::Isolated); });
  }
};

enum class Prepend { Always, First, Never };

struct MetaspaceP : PreTokenizer {
  std::string rep;
  char32_t rep_c = 0x2581;
  Prepend scheme = Prepend::Always;
  bool split = true;
  void pre_tokenize(Splits& splits) const override {
    Pattern space;
    space.literal = " ";
    Pattern on_rep;
    on_rep.pred = [this](char32_t c) { return c == rep_c; };
    split_each(splits, [&](NormalizedString&& ns) {
      ns.replace(space, rep);
      bool starts = ns.get().rfind(rep, 0) == 0;
      if (scheme == Prepend::Always && !starts) ns.prepend(rep);
      if (scheme == Prepend::First && !starts && ns.shift() == 0) ns.prepend(rep);
      if (split) return ns.split(on_rep, SplitBehavior::MergedWithNext);
      return std::vector<NormalizedString>{std::move(ns)};
    });
  }
};

struct WhitespaceSplitP : PreTokenizer {
  void pre_tokenize(Splits& splits) const override {
    Pattern ws;
    ws.pred = is_whitespace;
    split_each(splits, [&](NormalizedString&& ns) { return ns.split(ws, SplitBehavior::Removed); });
  }
};

struct SplitP : PreTokenizer {
  Pattern pattern;
  SplitBehavior behavior = SplitBehavior::Removed;
  void pre_tokenize(Splits& splits) const override {
    split_each(splits, [&](NormalizedString&& ns) { return ns.split(pattern, behavior); });
  }
};

struct SequenceP : PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizer>> items;
  void pre_tokenize(Splits& splits) const override {
    for (auto& p : items) p->pre_tokenize(splits);
  }
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& j) {
  if (j.is_null()) return nullptr;
  std::string type = str_field(j, "type", "pre_tokenizer");
  if (type == "ByteLevel") {
    auto p = std::make_unique<ByteLevelP>();
    p->add_prefix_space = bool_field(j, "add_prefix_space", "ByteLevel", true);
    p->use_regex = bool_field(j, "use_regex", "ByteLevel", true);
    return p;
  }
  if (type == "BertPreTokenizer") return std::make_unique<BertP>();
  if (type == "WhitespaceSplit") return std::make_unique<WhitespaceSplitP>();
  if (type == "Whitespace") {
    auto p = std::make_unique<SplitP>();
    p->pattern.regex = std::make_shared<Regex>(
        R"([\p{L}\p{Nl}\p{M}\p{Nd}\p{Pc}]+|[^\p{L}\p{Nl}\p{M}\p{Nd}\p{Pc}\s]+)");
    p->pattern.invert = true;
    p->behavior = SplitBehavior::Removed;
    return p;
  }
  if (type == "Metaspace") {
    auto p = std::make_unique<MetaspaceP>();
    p->rep = str_field(j, "replacement", "Metaspace");
    size_t i = 0;
    if (p->rep.empty()) fail("Metaspace: 'replacement' must be one character");
    p->rep_c = next_cp(p->rep, i);
    if (i != p->rep.size()) fail("Metaspace: 'replacement' must be one character");
    std::string scheme = j.contains("prepend_scheme") ? str_field(j, "prepend_scheme", "Metaspace")
                         : bool_field(j, "add_prefix_space", "Metaspace", true) ? "always"
                                                                                : "never";
    if (scheme == "always")
      p->scheme = Prepend::Always;
    else if (scheme == "first")
      p->scheme = Prepend::First;
    else if (scheme == "never")
      p->scheme = Prepend::Never;
    else
      fail("Metaspace: unknown prepend_scheme " + scheme);
    p->split = bool_field(j, "split", "Metaspace", true);
    return p;
  }
  if (type == "Split") {
    auto p = std::make_unique<SplitP>();
    p->pattern = pattern_from_json(field(j, "pattern", "Split"), "Split");
    p->pattern.invert = bool_field(j, "invert", "Split", false);
    p->behavior = behavior_from_json(field(j, "behavior", "Split"), "Split");
    return p;
  }
  if (type == "Punctuation") {
    auto p = std::make_unique<SplitP>();
    p->pattern.pred = is_bert_punc;
    p->behavior = j.contains("behavior") ? behavior_from_json(j["behavior"], "Punctuation")
                                         : SplitBehavior::Isolated;
    return p;
  }
  if (type == "Digits") {
    auto p = std::make_unique<SplitP>();
    p->pattern.pred = [](char32_t c) {
      int k = general_category(c);  // Rust char::is_numeric: Nd, Nl, No
      return k >= 9 && k <= 11;
    };
    p->behavior = bool_field(j, "individual_digits", "Digits", false) ? SplitBehavior::Isolated
                                                                      : SplitBehavior::Contiguous;
    return p;
  }
  if (type == "Sequence") {
    auto p = std::make_unique<SequenceP>();
    const Json& list = field(j, "pretokenizers", "Sequence pre_tokenizer");
    if (!list.is_array()) fail("Sequence pre_tokenizer: 'pretokenizers' must be an array");
    for (auto& x : list) {
      auto item = make_pre_tokenizer(x);
      if (item) p->items.push_back(std::move(item));
    }
    return p;
  }
  fail("unsupported pre_tokenizer: " + type);
}

}  // namespace inbedder::tok::detail
