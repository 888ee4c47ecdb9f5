// inbedder-tokenize TOKENIZER_JSON [--decode [--clean-up]] [--bench N]: JSONL in ({"text",
// "pair", "max_length", "strategy", "direction"}), JSONL out ({"ids", "type_ids", "offsets"
// (bytes), "sequence_ids", with --decode "decoded" and "decoded_skip" (skip_special_tokens), with
// --clean-up also "decoded_clean": decoded_skip after transformers' clean_up_tokenization}).
// A bad record gets {"error": "record N: ..."} and the tool goes on. --bench N times N passes of encode over all
// records in-process (no JSON I/O in the timing) and prints one JSON line of figures.
#include <chrono>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "inbedder/tokenizer.hpp"

using nlohmann::json;
namespace tok = inbedder::tok;

namespace {

struct Record {
  std::string text;
  std::optional<std::string> pair;
  std::optional<tok::Truncation> trunc;
};

Record parse_record(const std::string& line) {
  json j = json::parse(line);  // throws on malformed JSON or ill-formed UTF-8
  if (!j.is_object()) throw std::runtime_error("a record must be a JSON object");
  Record r;
  auto t = j.find("text");
  if (t == j.end() || !t->is_string()) throw std::runtime_error("'text' must be a string");
  r.text = t->get<std::string>();
  if (auto p = j.find("pair"); p != j.end() && !p->is_null()) {
    if (!p->is_string()) throw std::runtime_error("'pair' must be a string");
    r.pair = p->get<std::string>();
  }
  if (auto m = j.find("max_length"); m != j.end() && !m->is_null()) {
    if (!m->is_number_unsigned()) throw std::runtime_error("'max_length' must be an integer >= 0");
    tok::Truncation tr;
    tr.max_length = m->get<size_t>();
    std::string s = j.value("strategy", std::string("longest_first"));
    if (s == "longest_first")
      tr.strategy = tok::TruncationStrategy::LongestFirst;
    else if (s == "only_first")
      tr.strategy = tok::TruncationStrategy::OnlyFirst;
    else if (s == "only_second")
      tr.strategy = tok::TruncationStrategy::OnlySecond;
    else
      throw std::runtime_error("unknown strategy '" + s + "'");
    std::string d = j.value("direction", std::string("right"));
    if (d == "right")
      tr.direction = tok::TruncationDirection::Right;
    else if (d == "left")
      tr.direction = tok::TruncationDirection::Left;
    else
      throw std::runtime_error("unknown direction '" + d + "'");
    r.trunc = tr;
  }
  return r;
}

tok::Encoding run(const tok::Tokenizer& t, const Record& r) {
  const tok::Truncation* tr = r.trunc ? &*r.trunc : nullptr;
  return r.pair ? t.encode_pair(r.text, *r.pair, tr) : t.encode(r.text, tr);
}

int usage() {
  std::cerr << "usage: inbedder-tokenize TOKENIZER_JSON [--decode [--clean-up]] [--bench N]"
               " < records.jsonl\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string path;
  bool decode = false, clean_up = false;
  long bench = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--decode") == 0) {
      decode = true;
    } else if (std::strcmp(argv[i], "--clean-up") == 0) {
      clean_up = true;
    } else if (std::strcmp(argv[i], "--bench") == 0 && i + 1 < argc) {
      bench = std::atol(argv[++i]);
    } else if (argv[i][0] == '-' || !path.empty()) {
      return usage();
    } else {
      path = argv[i];
    }
  }
  if (path.empty()) return usage();
  std::optional<tok::Tokenizer> t;
  try {
    t.emplace(tok::Tokenizer::from_file(path));
  } catch (const std::exception& e) {
    std::cerr << "inbedder-tokenize: " << e.what() << "\n";
    return 1;
  }
  std::ios::sync_with_stdio(false);
  std::string line;
  size_t n = 0;
  if (bench > 0) {
    std::vector<Record> recs;
    size_t bytes = 0;
    while (std::getline(std::cin, line)) {
      try {
        recs.push_back(parse_record(line));
        bytes += recs.back().text.size() + (recs.back().pair ? recs.back().pair->size() : 0);
      } catch (const std::exception&) {
      }
    }
    size_t tokens = 0;
    auto t0 = std::chrono::steady_clock::now();
    for (long k = 0; k < bench; ++k)
      for (auto& r : recs) {
        try {
          tokens += run(*t, r).ids.size();
        } catch (const tok::TokenizerError&) {
        }
      }
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cout << json{{"records", recs.size()},
                      {"passes", bench},
                      {"bytes", bytes},
                      {"tokens", tokens},
                      {"seconds", s}}
                     .dump()
              << "\n";
    return 0;
  }
  while (std::getline(std::cin, line)) {
    ++n;
    json out;
    try {
      Record r = parse_record(line);
      tok::Encoding e = run(*t, r);
      json offs = json::array();
      for (auto& [a, b] : e.offsets) offs.push_back({a, b});
      out = {{"ids", e.ids},
             {"type_ids", e.type_ids},
             {"offsets", offs},
             {"sequence_ids", e.sequence_ids}};
      if (decode) {
        out["decoded"] = t->decode(e.ids, false);
        out["decoded_skip"] = t->decode(e.ids, true);
        if (clean_up) out["decoded_clean"] = tok::clean_up_tokenization(out["decoded_skip"]);
      }
    } catch (const std::exception& e) {
      out = {{"error", "record " + std::to_string(n) + ": " + e.what()}};
    }
    std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  }
  return 0;
}
