// Unit tests of inbedder_tokenizers: a tiny hand-written tokenizer.json per model family, and
// damaged files (truncated JSON, wrong types, missing merges, ids out of range) that must give a
// clear TokenizerError.
#include "inbedder/tokenizer.hpp"

#include <gtest/gtest.h>

#include <string>
#include <thread>

using inbedder::tok::Tokenizer;
using inbedder::tok::TokenizerError;

namespace {

const char* kWordPiece = R"({
  "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                 "strip_accents": null, "lowercase": true},
  "pre_tokenizer": {"type": "BertPreTokenizer"},
  "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "hello": 3, "world": 4, "##s": 5, "!": 6}},
  "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 2], "cls": ["[CLS]", 1]},
  "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
  "added_tokens": [{"id": 0, "content": "[UNK]", "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true},
                   {"id": 1, "content": "[CLS]", "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true},
                   {"id": 2, "content": "[SEP]", "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true}]
})";

std::string with_model(const std::string& model) {
  return std::string(R"({"model": )") + model + "}";
}

}  // namespace

TEST(WordPiece, EncodesWithSpecialsAndOffsets) {
  Tokenizer t = Tokenizer::from_json(kWordPiece);
  auto e = t.encode("Hello worlds!");
  EXPECT_EQ(e.ids, (std::vector<int32_t>{1, 3, 4, 5, 6, 2}));
  ASSERT_EQ(e.offsets.size(), 6u);
  EXPECT_EQ(e.offsets[1], (std::pair<size_t, size_t>{0, 5}));
  EXPECT_EQ(e.offsets[3], (std::pair<size_t, size_t>{11, 12}));
  EXPECT_EQ(e.sequence_ids.front(), -1);
  EXPECT_EQ(t.decode(e.ids, true), "hello worlds!");
  EXPECT_EQ(t.token_to_id("world"), 4);
  EXPECT_EQ(t.id_to_token(3), "hello");
}

TEST(WordPiece, PairTypeIds) {
  Tokenizer t = Tokenizer::from_json(kWordPiece);
  auto e = t.encode_pair("hello", "world");
  EXPECT_EQ(e.ids, (std::vector<int32_t>{1, 3, 2, 4, 2}));
  EXPECT_EQ(e.type_ids, (std::vector<int32_t>{0, 0, 0, 1, 1}));
}

TEST(Input, InvalidUtf8IsAnError) {
  Tokenizer t = Tokenizer::from_json(kWordPiece);
  EXPECT_THROW(t.encode("abc\xff"), TokenizerError);
  EXPECT_THROW(t.encode("\xe2\x82"), TokenizerError);
}

TEST(Damaged, TruncatedJson) {
  std::string s(kWordPiece);
  for (size_t n : {size_t{0}, size_t{1}, s.size() / 3, s.size() / 2, s.size() - 2})
    EXPECT_THROW(Tokenizer::from_json(s.substr(0, n)), TokenizerError) << n;
}

TEST(Damaged, WrongTypes) {
  EXPECT_THROW(Tokenizer::from_json("[]"), TokenizerError);
  EXPECT_THROW(Tokenizer::from_json(with_model("3")), TokenizerError);
  EXPECT_THROW(Tokenizer::from_json(with_model(R"({"type": "WordPiece", "vocab": [1],
      "unk_token": "x"})")),
               TokenizerError);
  EXPECT_THROW(Tokenizer::from_json(with_model(R"({"type": "BPE", "vocab": {"a": "1"},
      "merges": []})")),
               TokenizerError);
}

TEST(Damaged, MissingMerges) {
  EXPECT_THROW(Tokenizer::from_json(with_model(R"({"type": "BPE", "vocab": {"a": 0}})")),
               TokenizerError);
  EXPECT_THROW(Tokenizer::from_json(
                   with_model(R"({"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]})")),
               TokenizerError);
}

TEST(Damaged, IdsOutOfRange) {
  EXPECT_THROW(
      Tokenizer::from_json(with_model(R"({"type": "BPE", "vocab": {"a": -4}, "merges": []})")),
      TokenizerError);
  EXPECT_THROW(Tokenizer::from_json(
                   with_model(R"({"type": "Unigram", "unk_id": 7, "vocab": [["a", -1.0]]})")),
               TokenizerError);
}

TEST(Damaged, UnsupportedComponentIsNamed) {
  try {
    Tokenizer::from_json(R"({"model": {"type": "WordLevel", "vocab": {}}})");
    FAIL() << "no error";
  } catch (const TokenizerError& e) {
    EXPECT_NE(std::string(e.what()).find("WordLevel"), std::string::npos);
  }
}

TEST(Bpe, ByteLevelMerges) {
  Tokenizer t = Tokenizer::from_json(R"({
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                      "use_regex": true},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "\u0120": 3, "\u0120a": 4},
              "merges": ["a b", "\u0120 a"]},
    "decoder": {"type": "ByteLevel"}
  })");
  auto e = t.encode("ab ab");
  // "a b" ranks first: " ab" is Ġ + ab, not Ġa + b
  EXPECT_EQ(e.ids, (std::vector<int32_t>{2, 3, 2}));
  EXPECT_EQ(t.decode(e.ids, false), "ab ab");
}

TEST(CleanUp, TransformersRules) {
  EXPECT_EQ(inbedder::tok::clean_up_tokenization("hello , world ! it 's"), "hello, world! it's");
}

TEST(Threads, ConstEncodeFromEightThreads) {
  Tokenizer t = Tokenizer::from_json(kWordPiece);
  const std::string text = "Hello worlds! hello world hello worlds!";
  const auto want = t.encode(text).ids;
  std::vector<std::thread> pool;
  std::vector<int> ok(8, 0);
  for (int k = 0; k < 8; ++k)
    pool.emplace_back([&, k] {
      bool same = true;
      for (int i = 0; i < 500; ++i) same = same && t.encode(text).ids == want;
      ok[static_cast<size_t>(k)] = same;
    });
  for (auto& th : pool) th.join();
  for (int v : ok) EXPECT_TRUE(v);
}
