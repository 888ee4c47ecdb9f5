// Post-processors: RobertaProcessing, BertProcessing, TemplateProcessing, ByteLevel (offset
// trimming only) and Sequence; they add the special tokens, set type ids and merge a pair.
#include "internal.hpp"

namespace inbedder::tok::detail {

void Enc::append(const Enc& o) {
  ids.insert(ids.end(), o.ids.begin(), o.ids.end());
  type_ids.insert(type_ids.end(), o.type_ids.begin(), o.type_ids.end());
  seq_ids.insert(seq_ids.end(), o.seq_ids.begin(), o.seq_ids.end());
  tokens.insert(tokens.end(), o.tokens.begin(), o.tokens.end());
  offsets.insert(offsets.end(), o.offsets.begin(), o.offsets.end());
  special.insert(special.end(), o.special.begin(), o.special.end());
}

static size_t step_fwd(std::string_view t, size_t i) {
  ++i;
  while (i < t.size() && (static_cast<unsigned char>(t[i]) & 0xC0) == 0x80) ++i;
  return i;
}
static size_t step_back(std::string_view t, size_t i) {
  --i;
  while (i > 0 && (static_cast<unsigned char>(t[i]) & 0xC0) == 0x80) --i;
  return i;
}

void trim_offsets(Enc& e, bool add_prefix_space) {
  static const char32_t kSpaceChar = 0x120;  // 'Ġ', the byte-level char of ' '
  for (size_t i = 0; i < e.ids.size(); ++i) {
    std::u32string cs = to_u32(e.tokens[i]);
    auto spacey = [](char32_t c) { return c == kSpaceChar || is_whitespace(c); };
    size_t lead = 0, trail = 0;
    while (lead < cs.size() && spacey(cs[lead])) ++lead;
    while (trail < cs.size() && spacey(cs[cs.size() - 1 - trail])) ++trail;
    if (lead == 0 && trail == 0) continue;
    auto& [s, en] = e.offsets[i];
    // tokenizers trims char offsets: step over whole characters of the input.
    if (lead > 0) {
      bool is_first = i == 0 || s == 0;
      if (is_first && add_prefix_space && lead == 1) lead = 0;
      for (size_t k = 0; k < lead && s < en; ++k) s = std::min(step_fwd(e.text, s), en);
    }
    if (trail > 0) {
      size_t chars_before = 0, q = en;
      while (q > 0 && chars_before < trail) {
        q = step_back(e.text, q);
        ++chars_before;
      }
      if (chars_before >= trail) en = std::max(q, s);
    }
  }
}

namespace {

void add_special(Enc& out, const std::vector<int32_t>& ids, const std::vector<std::string>& toks,
                 int32_t type_id) {
  for (size_t k = 0; k < ids.size(); ++k) {
    out.ids.push_back(ids[k]);
    out.type_ids.push_back(type_id);
    out.seq_ids.push_back(-1);
    out.tokens.push_back(k < toks.size() ? toks[k] : std::string());
    out.offsets.emplace_back(0, 0);
    out.special.push_back(1);
  }
}

void set_type(Enc& e, int32_t t) { e.type_ids.assign(e.ids.size(), t); }

struct RobertaPP : PostProcessor {
  std::string sep_t, cls_t;
  int32_t sep = 0, cls = 0;
  bool trim = true, add_prefix_space = true;
  size_t added_tokens(bool pair) const override { return pair ? 4 : 2; }
  void process(std::vector<Enc>& encs, bool add) const override {
    if (trim)
      for (auto& e : encs) trim_offsets(e, add_prefix_space);
    for (auto& e : encs) set_type(e, 0);
    if (!add) return;
    Enc out;
    add_special(out, {cls}, {cls_t}, 0);
    out.append(encs[0]);
    add_special(out, {sep}, {sep_t}, 0);
    if (encs.size() > 1) {
      add_special(out, {sep}, {sep_t}, 0);
      out.append(encs[1]);
      add_special(out, {sep}, {sep_t}, 0);
    }
    encs.assign(1, std::move(out));
  }
};

struct BertPP : PostProcessor {
  std::string sep_t, cls_t;
  int32_t sep = 0, cls = 0;
  size_t added_tokens(bool pair) const override { return pair ? 3 : 2; }
  void process(std::vector<Enc>& encs, bool add) const override {
    if (!add) return;
    Enc out;
    add_special(out, {cls}, {cls_t}, 0);
    out.append(encs[0]);
    add_special(out, {sep}, {sep_t}, 0);
    if (encs.size() > 1) {
      out.append(encs[1]);
      add_special(out, {sep}, {sep_t}, 1);
    }
    encs.assign(1, std::move(out));
  }
};

struct ByteLevelPP : PostProcessor {
  bool trim = true, add_prefix_space = true;
  size_t added_tokens(bool) const override { return 0; }
  void process(std::vector<Enc>& encs, bool) const override {
    if (trim)
      for (auto& e : encs) trim_offsets(e, add_prefix_space);
  }
};

struct Piece {
  bool is_seq;
  int seq;              // 0 = A, 1 = B
  std::string special;  // key into specials
  int32_t type_id;
};
struct SpecialEntry {
  std::vector<int32_t> ids;
  std::vector<std::string> tokens;
};

struct TemplatePP : PostProcessor {
  std::vector<Piece> single, pair;
  std::unordered_map<std::string, SpecialEntry> specials;
  size_t count(const std::vector<Piece>& t) const {
    size_t n = 0;
    for (auto& p : t)
      if (!p.is_seq) n += specials.at(p.special).ids.size();
    return n;
  }
  size_t added_tokens(bool is_pair) const override { return count(is_pair ? pair : single); }
  void process(std::vector<Enc>& encs, bool add) const override {
    const auto& tpl = encs.size() > 1 ? pair : single;
    Enc out;
    for (auto& p : tpl) {
      if (p.is_seq) {
        if (static_cast<size_t>(p.seq) >= encs.size()) continue;
        Enc& e = encs[static_cast<size_t>(p.seq)];
        set_type(e, p.type_id);
        out.append(e);
      } else if (add) {
        const SpecialEntry& s = specials.at(p.special);
        add_special(out, s.ids, s.tokens, p.type_id);
      }
    }
    encs.assign(1, std::move(out));
  }
};

struct SequencePP : PostProcessor {
  std::vector<std::unique_ptr<PostProcessor>> items;
  size_t added_tokens(bool pair) const override {
    size_t n = 0;
    for (auto& p : items) n += p->added_tokens(pair);
    return n;
  }
  void process(std::vector<Enc>& encs, bool add) const override {
    for (auto& p : items) p->process(encs, add);
  }
};

std::pair<std::string, int32_t> tok_pair(const Json& j, const char* name, const char* comp) {
  const Json& x = field(j, name, comp);
  if (!x.is_array() || x.size() != 2 || !x[0].is_string() || !x[1].is_number_unsigned())
    fail(std::string(comp) + ": '" + name + "' must be [token, id]");
  return {x[0].get<std::string>(), x[1].get<int32_t>()};
}

std::vector<Piece> parse_template(const Json& t, const TemplatePP& pp, const char* which) {
  std::vector<Piece> out;
  if (!t.is_array()) fail(std::string("TemplateProcessing: '") + which + "' must be an array");
  for (auto& x : t) {
    if (x.contains("Sequence")) {
      const Json& s = x["Sequence"];
      std::string id = str_field(s, "id", "TemplateProcessing");
      if (id != "A" && id != "B") fail("TemplateProcessing: sequence id must be A or B");
      const Json& ty = field(s, "type_id", "TemplateProcessing");
      if (!ty.is_number_unsigned()) fail("TemplateProcessing: 'type_id' must be an integer");
      out.push_back({true, id == "A" ? 0 : 1, "", ty.get<int32_t>()});
    } else if (x.contains("SpecialToken")) {
      const Json& s = x["SpecialToken"];
      std::string id = str_field(s, "id", "TemplateProcessing");
      if (!pp.specials.count(id))
        fail("TemplateProcessing: special token '" + id + "' is missing from special_tokens");
      const Json& ty = field(s, "type_id", "TemplateProcessing");
      if (!ty.is_number_unsigned()) fail("TemplateProcessing: 'type_id' must be an integer");
      out.push_back({false, 0, id, ty.get<int32_t>()});
    } else {
      fail("TemplateProcessing: a piece must be Sequence or SpecialToken");
    }
  }
  return out;
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const Json& j) {
  if (j.is_null()) return nullptr;
  std::string type = str_field(j, "type", "post_processor");
  if (type == "RobertaProcessing") {
    auto p = std::make_unique<RobertaPP>();
    std::tie(p->sep_t, p->sep) = tok_pair(j, "sep", "RobertaProcessing");
    std::tie(p->cls_t, p->cls) = tok_pair(j, "cls", "RobertaProcessing");
    p->trim = bool_field(j, "trim_offsets", "RobertaProcessing", true);
    p->add_prefix_space = bool_field(j, "add_prefix_space", "RobertaProcessing", true);
    return p;
  }
  if (type == "BertProcessing") {
    auto p = std::make_unique<BertPP>();
    std::tie(p->sep_t, p->sep) = tok_pair(j, "sep", "BertProcessing");
    std::tie(p->cls_t, p->cls) = tok_pair(j, "cls", "BertProcessing");
    return p;
  }
  if (type == "ByteLevel") {
    auto p = std::make_unique<ByteLevelPP>();
    p->trim = bool_field(j, "trim_offsets", "ByteLevel post_processor", true);
    p->add_prefix_space = bool_field(j, "add_prefix_space", "ByteLevel post_processor", true);
    return p;
  }
  if (type == "TemplateProcessing") {
    auto p = std::make_unique<TemplatePP>();
    const Json& sp = field(j, "special_tokens", "TemplateProcessing");
    if (!sp.is_object()) fail("TemplateProcessing: 'special_tokens' must be an object");
    for (auto it = sp.begin(); it != sp.end(); ++it) {
      SpecialEntry e;
      const Json& ids = field(it.value(), "ids", "TemplateProcessing special token");
      const Json& toks = field(it.value(), "tokens", "TemplateProcessing special token");
      if (!ids.is_array() || !toks.is_array() || ids.size() != toks.size())
        fail("TemplateProcessing: special token '" + it.key() +
             "' needs ids and tokens of equal length");
      for (auto& x : ids) {
        if (!x.is_number_unsigned()) fail("TemplateProcessing: special token ids must be integers");
        e.ids.push_back(x.get<int32_t>());
      }
      for (auto& x : toks) {
        if (!x.is_string()) fail("TemplateProcessing: special token tokens must be strings");
        e.tokens.push_back(x.get<std::string>());
      }
      p->specials[it.key()] = std::move(e);
    }
    p->single = parse_template(field(j, "single", "TemplateProcessing"), *p, "single");
    p->pair = parse_template(field(j, "pair", "TemplateProcessing"), *p, "pair");
    return p;
  }
  if (type == "Sequence") {
    auto p = std::make_unique<SequencePP>();
    const Json& list = field(j, "processors", "Sequence post_processor");
    if (!list.is_array()) fail("Sequence post_processor: 'processors' must be an array");
    for (auto& x : list) {
      auto item = make_post_processor(x);
      if (item) p->items.push_back(std::move(item));
    }
    return p;
  }
  fail("unsupported post_processor: " + type);
}

}  // namespace inbedder::tok::detail
