// Tokenizer: loads tokenizer.json (nlohmann/json) into the components and runs the pipeline
// added tokens -> normalizer -> pre-tokenizer -> model -> truncation -> post-processor, and decode.
#include <cmath>
#include <fstream>
#include <sstream>
#include <unordered_set>

#include "internal.hpp"

namespace inbedder::tok {
namespace detail {

void fail(const std::string& what) { throw TokenizerError(what); }

const Json& field(const Json& j, const char* name, const char* component) {
  if (!j.is_object()) fail(std::string(component) + " must be a JSON object");
  auto it = j.find(name);
  if (it == j.end()) fail(std::string(component) + ": missing field '" + name + "'");
  return *it;
}

std::string str_field(const Json& j, const char* name, const char* component) {
  const Json& v = field(j, name, component);
  if (!v.is_string()) fail(std::string(component) + ": field '" + name + "' must be a string");
  return v.get<std::string>();
}

bool bool_field(const Json& j, const char* name, const char* component, bool dflt) {
  if (!j.is_object()) fail(std::string(component) + " must be a JSON object");
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) fail(std::string(component) + ": field '" + name + "' must be a boolean");
  return it->get<bool>();
}

std::unique_ptr<Model> make_bpe(const Json& j);
std::unique_ptr<Model> make_wordpiece(const Json& j);
std::unique_ptr<Model> make_unigram(const Json& j);

std::unique_ptr<Model> make_model(const Json& j) {
  std::string type = j.contains("type")     ? str_field(j, "type", "model")
                     : j.contains("merges") ? "BPE"
                                            : "";
  if (type == "BPE") return make_bpe(j);
  if (type == "WordPiece") return make_wordpiece(j);
  if (type == "Unigram") return make_unigram(j);
  fail("unsupported model: " + (type.empty() ? std::string("(no type)") : type));
}

}  // namespace detail

using namespace detail;

struct Tokenizer::Impl {
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Model> model;
  std::unique_ptr<PostProcessor> post;
  std::unique_ptr<Decoder> decoder;
  AddedVocabulary added;
  std::optional<Truncation> file_truncation;
  size_t vocab_size = 0;

  Enc encode_one(std::string_view text, int32_t type_id) const {
    size_t bad = invalid_utf8_at(text);
    if (bad != std::string_view::npos)
      fail("invalid UTF-8 in the input at byte " + std::to_string(bad));
    if (text.size() >= 0xFFFFFFFFu) fail("input text is too long (4 GiB or more)");
    Splits splits = added.extract_and_normalize(text, normalizer.get());
    if (pre_tokenizer) pre_tokenizer->pre_tokenize(splits);
    Enc e;
    e.text = text;
    std::vector<Token> toks;
    auto push = [&](int32_t id, std::string tok, Span sp, bool special) {
      e.ids.push_back(id);
      e.type_ids.push_back(type_id);
      e.seq_ids.push_back(type_id);
      e.tokens.push_back(std::move(tok));
      e.offsets.emplace_back(sp.first, sp.second);
      e.special.push_back(special ? 1 : 0);
    };
    for (auto& sp : splits) {
      const std::string& s = sp.ns.get();
      if (sp.token_id >= 0) {
        const AddedToken* t = added.by_id(sp.token_id);
        push(sp.token_id, s, sp.ns.original_span(0, s.size()), t && t->special);
        continue;
      }
      toks.clear();
      model->tokenize(s, toks);
      for (auto& t : toks) {
        const std::string* name = model->id_to_token(t.id);
        push(t.id, name ? *name : std::string(), sp.ns.original_span(t.start, t.end), false);
      }
    }
    return e;
  }

  Encoding run(std::string_view a, const std::string_view* b, const Truncation* trunc,
               bool add_special) const {
    std::vector<Enc> encs;
    encs.push_back(encode_one(a, 0));
    if (b) encs.push_back(encode_one(*b, 1));
    const Truncation* t = trunc ? trunc : (file_truncation ? &*file_truncation : nullptr);
    if (t) {
      size_t n_added = post ? post->added_tokens(b != nullptr) : 0;
      Truncation eff = *t;
      if (add_special && n_added > 0) {
        // tokenizers subtracts in usize: a limit below the special tokens wraps around and so
        // truncates nothing.
        eff.max_length = t->max_length >= n_added ? t->max_length - n_added : SIZE_MAX;
      }
      truncate_encodings(encs[0], b ? &encs[1] : nullptr, eff);
    }
    if (post) post->process(encs, add_special);
    while (encs.size() > 1) {
      encs[0].append(encs[1]);
      encs.erase(encs.begin() + 1);
    }
    Enc& e = encs[0];
    Encoding out;
    out.ids = std::move(e.ids);
    out.type_ids = std::move(e.type_ids);
    out.offsets = std::move(e.offsets);
    out.sequence_ids = std::move(e.seq_ids);
    out.special_tokens_mask = std::move(e.special);
    return out;
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw TokenizerError("cannot open tokenizer file " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return from_json(ss.str());
  } catch (const TokenizerError& e) {
    throw TokenizerError(path + ": " + e.what());
  }
}

namespace {

// tokenizers reads floats with serde_json's default parser, which is not correctly rounded (it
// scales the decimal significand by a power of ten in f64 arithmetic): Unigram scores are then
// a few ULPs off from strtod's and Viterbi ties break differently. Re-read every float the same
// way serde_json does.
double serde_json_f64(const std::string& s) {
  static const double kPow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                  1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                  1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22, 1e23};
  size_t i = 0;
  bool neg = i < s.size() && s[i] == '-';
  if (neg) ++i;
  uint64_t sig = 0;
  long exp = 0;
  bool overflow = false;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) {
    auto d = static_cast<uint64_t>(s[i] - '0');
    if (overflow || sig > (UINT64_MAX - d) / 10) {  // further integer digits only scale
      overflow = true;
      ++exp;
    } else {
      sig = sig * 10 + d;
    }
  }
  if (i < s.size() && s[i] == '.') {
    for (++i; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) {
      auto d = static_cast<uint64_t>(s[i] - '0');
      if (overflow || sig > (UINT64_MAX - d) / 10) {
        overflow = true;  // further fraction digits are ignored
        continue;
      }
      sig = sig * 10 + d;
      --exp;
    }
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    bool eneg = i < s.size() && s[i] == '-';
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    long e = 0;
    for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i)
      e = std::min(e * 10 + (s[i] - '0'), 100000L);
    exp += eneg ? -e : e;
  }
  double f = static_cast<double>(sig);
  for (;;) {
    long a = exp < 0 ? -exp : exp;
    if (a <= 308) {
      // serde's table holds the literals 1e0..1e308: strtod gives the same doubles
      double p = a < 24 ? kPow10[a] : std::strtod(("1e" + std::to_string(a)).c_str(), nullptr);
      f = exp >= 0 ? f * p : f / p;
      break;
    }
    if (f == 0.0) break;
    if (exp >= 0) return neg ? -HUGE_VAL : HUGE_VAL;
    f /= 1e308;
    exp += 308;
  }
  return neg ? -f : f;
}

struct SerdeFloatsSax : nlohmann::detail::json_sax_dom_parser<Json> {
  using nlohmann::detail::json_sax_dom_parser<Json>::json_sax_dom_parser;
  bool number_float(double, const std::string& s) {
    return nlohmann::detail::json_sax_dom_parser<Json>::number_float(serde_json_f64(s), s);
  }
};

}  // namespace

static Truncation truncation_from_json(const Json& j) {
  Truncation t;
  const Json& ml = field(j, "max_length", "truncation");
  if (!ml.is_number_unsigned()) fail("truncation: 'max_length' must be an integer");
  t.max_length = ml.get<size_t>();
  std::string s = j.contains("strategy") ? str_field(j, "strategy", "truncation") : "LongestFirst";
  if (s == "LongestFirst")
    t.strategy = TruncationStrategy::LongestFirst;
  else if (s == "OnlyFirst")
    t.strategy = TruncationStrategy::OnlyFirst;
  else if (s == "OnlySecond")
    t.strategy = TruncationStrategy::OnlySecond;
  else
    fail("truncation: unknown strategy " + s);
  std::string d = j.contains("direction") ? str_field(j, "direction", "truncation") : "Right";
  t.direction = d == "Left" ? TruncationDirection::Left : TruncationDirection::Right;
  if (j.contains("stride") && j["stride"] != 0) fail("truncation: a stride is not supported");
  return t;
}

Tokenizer Tokenizer::from_json(std::string_view json_text) {
  Json j;
  try {
    SerdeFloatsSax sax(j);
    if (!Json::sax_parse(json_text.begin(), json_text.end(), &sax))
      throw TokenizerError("tokenizer.json is not valid JSON");
  } catch (const TokenizerError&) {
    throw;
  } catch (const std::exception& e) {
    throw TokenizerError(std::string("tokenizer.json is not valid JSON: ") + e.what());
  }
  try {
    if (!j.is_object()) fail("tokenizer.json must hold a JSON object");
    auto impl = std::make_unique<Impl>();
    impl->normalizer = make_normalizer(j.value("normalizer", Json()));
    impl->pre_tokenizer = make_pre_tokenizer(j.value("pre_tokenizer", Json()));
    impl->model = make_model(field(j, "model", "tokenizer.json"));
    impl->post = make_post_processor(j.value("post_processor", Json()));
    impl->decoder = make_decoder(j.value("decoder", Json()));
    impl->added.load(j.value("added_tokens", Json()), impl->normalizer.get());
    Json tr = j.value("truncation", Json());
    if (!tr.is_null()) impl->file_truncation = truncation_from_json(tr);
    std::unordered_set<std::string> all;
    for (auto& t : impl->model->vocab_tokens()) all.insert(t);
    for (auto& t : impl->added.tokens()) all.insert(t.content);
    impl->vocab_size = all.size();
    return Tokenizer(std::move(impl));
  } catch (const TokenizerError&) {
    throw;
  } catch (const std::exception& e) {  // e.g. nlohmann type errors on damaged files
    throw TokenizerError(std::string("malformed tokenizer.json: ") + e.what());
  }
}

Encoding Tokenizer::encode(std::string_view text, const Truncation* truncation,
                           bool add_special_tokens) const {
  return impl_->run(text, nullptr, truncation, add_special_tokens);
}

Encoding Tokenizer::encode_pair(std::string_view text_a, std::string_view text_b,
                                const Truncation* truncation, bool add_special_tokens) const {
  return impl_->run(text_a, &text_b, truncation, add_special_tokens);
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* t = nullptr;
    if (const AddedToken* a = impl_->added.by_id(id))
      t = &a->content;
    else
      t = impl_->model->id_to_token(id);
    if (!t) continue;  // unknown ids are skipped, as tokenizers does
    if (skip_special_tokens) {
      auto sid = impl_->added.id_of(*t);
      const AddedToken* a = sid ? impl_->added.by_id(*sid) : nullptr;
      if (a && a->special) continue;
    }
    tokens.push_back(*t);
  }
  if (!impl_->decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  impl_->decoder->decode_chain(tokens);
  std::string out;
  for (auto& t : tokens) out += t;
  return out;
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto id = impl_->added.id_of(token)) return id;
  return impl_->model->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (const AddedToken* a = impl_->added.by_id(id)) return a->content;
  if (const std::string* t = impl_->model->id_to_token(id)) return *t;
  return std::nullopt;
}

std::size_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

}  // namespace inbedder::tok
