// The C API under bad input (NULL pointers, missing or damaged bundles, wrong sizes, invalid
// UTF-8, unknown options, zero texts) and its thread-safety contract (8 threads on one handle
// give the vectors of sequential calls). Bundle paths come from INBEDDER_TEST_BUNDLE (a masked-lm
// bundle), INBEDDER_TEST_CAUSAL_BUNDLE and INBEDDER_TEST_SENTENCE_BUNDLE (a sentence encoder);
// tests needing one skip without it.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "inbedder/inbedder.h"
#include "inbedder/inbedder.hpp"

namespace fs = std::filesystem;

namespace {

// Changes the byte at `offset` of the file in place (same size).
void flip_byte(const fs::path& path, std::streamoff offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(offset);
  char c = 0;
  f.get(c);
  f.seekp(offset);
  f.put(char(c ^ 0x5a));
}

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

#define NEED_BUNDLE(var, name) \
  std::string var = env(name); \
  if (var.empty()) GTEST_SKIP() << name " is not set"

std::string last() { return inbedder_last_error(); }

struct Model {
  inbedder_model* m = nullptr;
  explicit Model(const std::string& path, const inbedder_options* o = nullptr) {
    EXPECT_EQ(inbedder_model_open(path.c_str(), o, &m), INBEDDER_OK) << last();
  }
  ~Model() { inbedder_model_close(m); }
};

const char* kTexts[] = {"I love cats!", "",
                        "Ça coûte 20 €, naïve café — 東京で会いましょう 🙂",
                        "a literal <mask> and {instruction} inside", "ok"};
const char* kInstr = "What animal is mentioned?";

// The first n of kTexts under kInstr, embedded by m ((n, dim) row-major; a failure is reported).
std::vector<float> embed_first(const Model& m, size_t n) {
  size_t dim = 0;
  EXPECT_EQ(inbedder_model_dim(m.m, &dim), INBEDDER_OK) << last();
  std::vector<float> v(n * dim);
  EXPECT_EQ(inbedder_embed(m.m, kTexts, n, kInstr, nullptr, v.data(), v.size(), nullptr),
            INBEDDER_OK)
      << last();
  return v;
}

}  // namespace

TEST(CApi, NullPointersAreErrorsNotCrashes) {
  EXPECT_EQ(inbedder_options_create(nullptr), INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_NE(last().find("NULL"), std::string::npos);
  EXPECT_EQ(inbedder_options_set_int(nullptr, "threads", 1), INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(inbedder_options_set_string(nullptr, "device", "cpu"), INBEDDER_ERR_INVALID_ARGUMENT);
  inbedder_options* o = nullptr;
  ASSERT_EQ(inbedder_options_create(&o), INBEDDER_OK);
  EXPECT_EQ(inbedder_options_set_int(o, nullptr, 1), INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(inbedder_options_set_string(o, "device", nullptr), INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(inbedder_options_clear(o, nullptr), INBEDDER_ERR_INVALID_ARGUMENT);
  inbedder_options_destroy(o);
  inbedder_model* m = reinterpret_cast<inbedder_model*>(0x1);
  EXPECT_EQ(inbedder_model_open(nullptr, nullptr, &m), INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(m, nullptr);
  EXPECT_EQ(inbedder_model_open("x", nullptr, nullptr), INBEDDER_ERR_INVALID_ARGUMENT);
  size_t d = 0;
  const char* s = nullptr;
  int a = 0;
  EXPECT_EQ(inbedder_model_dim(nullptr, &d), INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(inbedder_model_info(nullptr, "recipe", &s), INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(inbedder_model_answers(nullptr, &a), INBEDDER_ERR_INVALID_ARGUMENT);
  inbedder_result* r = nullptr;
  EXPECT_EQ(inbedder_encode(nullptr, kTexts, nullptr, 1, &kInstr, 1, nullptr, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(inbedder_encode(nullptr, kTexts, nullptr, 1, &kInstr, 1, nullptr, nullptr),
            INBEDDER_ERR_INVALID_ARGUMENT);
  const float* f = nullptr;
  EXPECT_EQ(inbedder_result_embeddings(nullptr, &f, nullptr, nullptr),
            INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(inbedder_result_copy_embeddings(nullptr, nullptr, 0, nullptr),
            INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(inbedder_result_answer(nullptr, 0, &s, nullptr), INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(inbedder_embed(nullptr, kTexts, 1, kInstr, nullptr, nullptr, 0, nullptr),
            INBEDDER_ERR_INVALID_ARGUMENT);
  // Destroying NULL is a no-op.
  inbedder_options_destroy(nullptr);
  inbedder_model_close(nullptr);
  inbedder_result_free(nullptr);
  EXPECT_STREQ(inbedder_status_name(INBEDDER_ERR_BUNDLE), "INBEDDER_ERR_BUNDLE");
  EXPECT_STREQ(inbedder_status_name(static_cast<inbedder_status>(99)),
               "INBEDDER_ERR_UNKNOWN_STATUS");
}

TEST(CApi, UnknownOptionsAndWrongTypesAreNamed) {
  inbedder_options* o = nullptr;
  ASSERT_EQ(inbedder_options_create(&o), INBEDDER_OK);
  EXPECT_EQ(inbedder_options_set_int(o, "batchsize", 8), INBEDDER_ERR_UNKNOWN_OPTION);
  EXPECT_NE(last().find("'batchsize'"), std::string::npos) << last();
  EXPECT_EQ(inbedder_options_set_string(o, "colour", "red"), INBEDDER_ERR_UNKNOWN_OPTION);
  EXPECT_EQ(inbedder_options_clear(o, "colour"), INBEDDER_ERR_UNKNOWN_OPTION);
  EXPECT_EQ(inbedder_options_set_string(o, "threads", "2"), INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(inbedder_options_set_int(o, "device", 1), INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(inbedder_options_set_int(o, "batch_size", 8), INBEDDER_OK);
  EXPECT_STREQ(inbedder_last_error(), "");
  // An encode option given to open.
  inbedder_model* m = nullptr;
  EXPECT_EQ(inbedder_model_open("/nonexistent", o, &m), INBEDDER_ERR_UNKNOWN_OPTION);
  EXPECT_NE(last().find("batch_size"), std::string::npos) << last();
  inbedder_options_destroy(o);
}

TEST(CApi, MissingBundle) {
  inbedder_model* m = nullptr;
  EXPECT_EQ(inbedder_model_open("/nonexistent/bundle/", nullptr, &m), INBEDDER_ERR_BUNDLE);
  EXPECT_EQ(last(), "/nonexistent/bundle: no such bundle directory");
  fs::path dir = fs::temp_directory_path() / "inbedder-empty-bundle";
  fs::create_directories(dir);
  EXPECT_EQ(inbedder_model_open(dir.c_str(), nullptr, &m), INBEDDER_ERR_BUNDLE);
  EXPECT_NE(last().find("missing manifest"), std::string::npos) << last();
  fs::remove_all(dir);
}

TEST(CApi, DamagedBundleEachFile) {
  NEED_BUNDLE(src, "INBEDDER_TEST_BUNDLE");
  fs::path tmp = fs::temp_directory_path() / ("inbedder-damaged-" + std::to_string(::getpid()));
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(src)) {
    std::string name = e.path().filename().string();
    // The Python runtime's verified-stamp (.inbedder-verified) sits beside the files it vouches
    // for but is not a bundle file: damaging it only costs a full hash there.
    if (e.is_regular_file() && name.rfind(".inbedder-verified", 0) != 0) names.push_back(name);
  }
  ASSERT_GE(names.size(), 3u);
  for (const auto& name : names) {
    for (const char* how : {"remove", "truncate", "flip"}) {
      fs::remove_all(tmp);
      fs::copy(src, tmp);
      fs::path p = tmp / name;
      if (std::string(how) == "remove") {
        fs::remove(p);
      } else if (std::string(how) == "truncate") {
        fs::resize_file(p, fs::file_size(p) / 2);
      } else {
        flip_byte(p, 0);
      }
      inbedder_model* m = nullptr;
      inbedder_status s = inbedder_model_open(tmp.c_str(), nullptr, &m);
      EXPECT_EQ(s, INBEDDER_ERR_BUNDLE) << name << " " << how << ": " << last();
      EXPECT_EQ(m, nullptr);
      EXPECT_FALSE(last().empty());
      inbedder_model_close(m);
    }
  }
  fs::remove_all(tmp);
}

TEST(CApi, BadEncodeArguments) {
  NEED_BUNDLE(path, "INBEDDER_TEST_BUNDLE");
  Model mm(path);
  inbedder_model* m = mm.m;
  ASSERT_NE(m, nullptr);
  size_t dim = 0;
  ASSERT_EQ(inbedder_model_dim(m, &dim), INBEDDER_OK);
  ASSERT_GT(dim, 0u);
  const char* v = nullptr;
  EXPECT_EQ(inbedder_model_info(m, "recipe", &v), INBEDDER_OK);
  EXPECT_EQ(inbedder_model_info(m, "nope", &v), INBEDDER_ERR_INVALID_ARGUMENT);
  inbedder_result* r = nullptr;
  // Zero texts.
  EXPECT_EQ(inbedder_encode(m, kTexts, nullptr, 0, &kInstr, 1, nullptr, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(r, nullptr);
  // NULL text inside the array, NULL instructions, wrong instruction count.
  const char* with_null[] = {"a", nullptr};
  EXPECT_EQ(inbedder_encode(m, with_null, nullptr, 2, &kInstr, 1, nullptr, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_NE(last().find("texts[1]"), std::string::npos);
  EXPECT_EQ(inbedder_encode(m, kTexts, nullptr, 2, nullptr, 1, nullptr, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);
  const char* two[] = {kInstr, kInstr};
  EXPECT_EQ(inbedder_encode(m, kTexts, nullptr, 3, two, 2, nullptr, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_NE(last().find("got 2 instructions for 3 texts"), std::string::npos) << last();
  // Invalid UTF-8, in a text and in an instruction; explicit lengths with embedded bytes.
  const char* bad[] = {"fine", "bad \xff\xfe byte"};
  EXPECT_EQ(inbedder_encode(m, bad, nullptr, 2, &kInstr, 1, nullptr, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_NE(last().find("texts[1] is not valid UTF-8"), std::string::npos) << last();
  const char* bad_instr = "\xc3(";
  EXPECT_EQ(inbedder_encode(m, kTexts, nullptr, 1, &bad_instr, 1, nullptr, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);
  size_t cut[] = {2};
  const char* trunc_utf8[] = {"\xc3\xa7x"};  // "çx" cut inside nothing: 2 bytes = "ç"
  ASSERT_EQ(inbedder_encode(m, trunc_utf8, cut, 1, &kInstr, 1, nullptr, &r), INBEDDER_OK) << last();
  inbedder_result_free(r);
  size_t cut1[] = {1};
  EXPECT_EQ(inbedder_encode(m, trunc_utf8, cut1, 1, &kInstr, 1, nullptr, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);
  // Options: bad values, open options at encode, a family option of another family.
  inbedder_options* o = nullptr;
  ASSERT_EQ(inbedder_options_create(&o), INBEDDER_OK);
  inbedder_options_set_int(o, "batch_size", 0);
  EXPECT_EQ(inbedder_encode(m, kTexts, nullptr, 2, &kInstr, 1, o, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_NE(last().find("batch_size must be a positive int, got 0"), std::string::npos) << last();
  inbedder_options_clear(o, "batch_size");
  inbedder_options_set_string(o, "truncation", "middle");
  EXPECT_EQ(inbedder_encode(m, kTexts, nullptr, 2, &kInstr, 1, o, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);
  inbedder_options_clear(o, "truncation");
  inbedder_options_set_int(o, "max_new_tokens", 3);
  EXPECT_EQ(inbedder_encode(m, kTexts, nullptr, 2, &kInstr, 1, o, &r), INBEDDER_ERR_UNKNOWN_OPTION);
  EXPECT_NE(last().find("unknown option(s) ['max_new_tokens'] for a 'masked-lm' bundle"),
            std::string::npos)
      << last();
  inbedder_options_clear(o, "max_new_tokens");
  inbedder_options_set_int(o, "decode_steps", 99);
  EXPECT_EQ(inbedder_encode(m, kTexts, nullptr, 2, &kInstr, 1, o, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);
  inbedder_options_clear(o, "decode_steps");
  inbedder_options_set_int(o, "threads", 2);
  EXPECT_EQ(inbedder_encode(m, kTexts, nullptr, 2, &kInstr, 1, o, &r), INBEDDER_ERR_UNKNOWN_OPTION);
  inbedder_options_destroy(o);
  // Result buffers: too small reports the size needed; answers not asked for; index past end.
  ASSERT_EQ(inbedder_encode(m, kTexts, nullptr, 5, &kInstr, 1, nullptr, &r), INBEDDER_OK) << last();
  size_t need = 0;
  std::vector<float> small(dim);
  EXPECT_EQ(inbedder_result_copy_embeddings(r, small.data(), small.size(), &need),
            INBEDDER_ERR_BUFFER_TOO_SMALL);
  EXPECT_EQ(need, 5 * dim);
  std::vector<float> full(need);
  EXPECT_EQ(inbedder_result_copy_embeddings(r, full.data(), full.size(), &need), INBEDDER_OK);
  const char* ans = nullptr;
  EXPECT_EQ(inbedder_result_answer(r, 0, &ans, nullptr), INBEDDER_ERR_UNSUPPORTED);
  inbedder_result_free(r);
  ASSERT_EQ(inbedder_options_create(&o), INBEDDER_OK);
  inbedder_options_set_int(o, "answers", 1);
  ASSERT_EQ(inbedder_encode(m, kTexts, nullptr, 5, &kInstr, 1, o, &r), INBEDDER_OK) << last();
  EXPECT_EQ(inbedder_result_answer(r, 4, &ans, nullptr), INBEDDER_OK);
  EXPECT_EQ(inbedder_result_answer(r, 5, &ans, nullptr), INBEDDER_ERR_OUT_OF_RANGE);
  inbedder_result_free(r);
  inbedder_options_destroy(o);
  // inbedder_embed into a caller buffer.
  EXPECT_EQ(inbedder_embed(m, kTexts, 5, kInstr, nullptr, small.data(), small.size(), &need),
            INBEDDER_ERR_BUFFER_TOO_SMALL);
  EXPECT_EQ(need, 5 * dim);
  std::vector<float> mine(need);
  ASSERT_EQ(inbedder_embed(m, kTexts, 5, kInstr, nullptr, mine.data(), mine.size(), &need),
            INBEDDER_OK);
  EXPECT_EQ(mine, full);
}

// runtime/embedder.py's rule: a family that embeds under an instruction refuses none at all
// (NULL / n_instructions 0); "" is an instruction. A sentence encoder takes none as "".
TEST(CApi, MissingInstruction) {
  NEED_BUNDLE(path, "INBEDDER_TEST_BUNDLE");
  Model mm(path);
  const char* needs = nullptr;
  ASSERT_EQ(inbedder_model_info(mm.m, "needs_instruction", &needs), INBEDDER_OK);
  EXPECT_STREQ(needs, "yes");
  inbedder_result* r = nullptr;
  EXPECT_EQ(inbedder_encode(mm.m, kTexts, nullptr, 2, nullptr, 0, nullptr, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(r, nullptr);
  EXPECT_NE(last().find("embeds a text under an instruction"), std::string::npos) << last();
  EXPECT_EQ(inbedder_encode(mm.m, kTexts, nullptr, 2, &kInstr, 0, nullptr, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);  // n_instructions 0: none, whatever the pointer
  EXPECT_EQ(inbedder_encode(mm.m, kTexts, nullptr, 2, nullptr, 1, nullptr, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_NE(last().find("instructions is NULL but n_instructions is 1"), std::string::npos)
      << last();
  size_t dim = 0, need = 0;
  ASSERT_EQ(inbedder_model_dim(mm.m, &dim), INBEDDER_OK);
  std::vector<float> out(2 * dim);
  EXPECT_EQ(inbedder_embed(mm.m, kTexts, 2, nullptr, nullptr, out.data(), out.size(), &need),
            INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_NE(last().find("embeds a text under an instruction"), std::string::npos) << last();
  const char* empty = "";
  EXPECT_EQ(inbedder_embed(mm.m, kTexts, 2, empty, nullptr, out.data(), out.size(), &need),
            INBEDDER_OK)
      << last();

  NEED_BUNDLE(st, "INBEDDER_TEST_SENTENCE_BUNDLE");
  Model sm(st);
  ASSERT_EQ(inbedder_model_info(sm.m, "needs_instruction", &needs), INBEDDER_OK);
  EXPECT_STREQ(needs, "no");
  ASSERT_EQ(inbedder_model_dim(sm.m, &dim), INBEDDER_OK);
  std::vector<float> none(2 * dim), blank(2 * dim);
  ASSERT_EQ(inbedder_embed(sm.m, kTexts, 2, nullptr, nullptr, none.data(), none.size(), &need),
            INBEDDER_OK)
      << last();
  ASSERT_EQ(inbedder_embed(sm.m, kTexts, 2, empty, nullptr, blank.data(), blank.size(), &need),
            INBEDDER_OK)
      << last();
  EXPECT_EQ(none, blank);
  ASSERT_EQ(inbedder_encode(sm.m, kTexts, nullptr, 2, nullptr, 0, nullptr, &r), INBEDDER_OK)
      << last();
  inbedder_result_free(r);
}

// Output precisions into caller-owned buffers with explicit sizes.
TEST(CApi, OutputPrecision) {
  NEED_BUNDLE(path, "INBEDDER_TEST_BUNDLE");
  Model mm(path);
  size_t dim = 0;
  ASSERT_EQ(inbedder_model_dim(mm.m, &dim), INBEDDER_OK);
  inbedder_options* o = nullptr;
  ASSERT_EQ(inbedder_options_create(&o), INBEDDER_OK);
  inbedder_result* r = nullptr;
  struct Case {
    const char* name;
    size_t cols, element_bytes;
  } cases[] = {{"float32", dim, 4}, {"float16", dim, 2},          {"int8", dim, 1},
               {"uint8", dim, 1},   {"binary", (dim + 7) / 8, 1}, {"ubinary", (dim + 7) / 8, 1}};
  std::vector<float> f32;
  for (const Case& c : cases) {
    ASSERT_EQ(inbedder_options_set_string(o, "precision", c.name), INBEDDER_OK);
    ASSERT_EQ(inbedder_encode(mm.m, kTexts, nullptr, 5, &kInstr, 1, o, &r), INBEDDER_OK) << last();
    const char* name = nullptr;
    size_t n = 0, cols = 0, eb = 0, need = 0;
    ASSERT_EQ(inbedder_result_output_shape(r, &name, &n, &cols, &eb), INBEDDER_OK);
    EXPECT_STREQ(name, c.name);
    EXPECT_EQ(n, 5u);
    EXPECT_EQ(cols, c.cols) << c.name;
    EXPECT_EQ(eb, c.element_bytes) << c.name;
    std::vector<unsigned char> buf(n * cols * eb);
    EXPECT_EQ(inbedder_result_copy_output(r, buf.data(), buf.size() - 1, &need),
              INBEDDER_ERR_BUFFER_TOO_SMALL);
    EXPECT_EQ(need, buf.size());
    EXPECT_NE(last().find("bytes"), std::string::npos) << last();
    EXPECT_EQ(inbedder_result_copy_output(r, nullptr, buf.size(), &need),
              INBEDDER_ERR_INVALID_ARGUMENT);
    ASSERT_EQ(inbedder_result_copy_output(r, buf.data(), buf.size(), &need), INBEDDER_OK);
    // The float32 vectors stay available whatever the precision, and equal float32's output.
    const float* v = nullptr;
    ASSERT_EQ(inbedder_result_embeddings(r, &v, &n, &cols), INBEDDER_OK);
    if (f32.empty()) {
      f32.assign(v, v + n * dim);
      EXPECT_EQ(0, std::memcmp(buf.data(), f32.data(), buf.size()));
    } else {
      EXPECT_EQ(std::vector<float>(v, v + n * dim), f32) << c.name;
    }
    if (std::string(c.name) == "ubinary") {  // bit 7 - k of byte 0 is dimension k's sign
      for (size_t k = 0; k < 8 && k < dim; ++k) {
        EXPECT_EQ((buf[0] >> (7 - k)) & 1, f32[k] > 0 ? 1 : 0) << k;
      }
    }
    inbedder_result_free(r);
  }
  // int8 needs more than one text (its ranges are the call's); an unknown precision is named.
  ASSERT_EQ(inbedder_options_set_string(o, "precision", "int8"), INBEDDER_OK);
  EXPECT_EQ(inbedder_encode(mm.m, kTexts, nullptr, 1, &kInstr, 1, o, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_NE(last().find("give more than one"), std::string::npos) << last();
  ASSERT_EQ(inbedder_options_set_string(o, "precision", "int4"), INBEDDER_OK);
  EXPECT_EQ(inbedder_encode(mm.m, kTexts, nullptr, 2, &kInstr, 1, o, &r),
            INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_NE(last().find("got 'int4'"), std::string::npos) << last();
  EXPECT_EQ(r, nullptr);
  inbedder_options_destroy(o);
}

TEST(CApi, DeviceErrors) {
  NEED_BUNDLE(path, "INBEDDER_TEST_BUNDLE");
  inbedder_options* o = nullptr;
  ASSERT_EQ(inbedder_options_create(&o), INBEDDER_OK);
  inbedder_options_set_string(o, "device", "gpu");
  inbedder_model* m = nullptr;
  EXPECT_EQ(inbedder_model_open(path.c_str(), o, &m), INBEDDER_ERR_INVALID_ARGUMENT);
  inbedder_options_set_string(o, "device", "auto");
  ASSERT_EQ(inbedder_model_open(path.c_str(), o, &m), INBEDDER_OK) << last();
  const char* dev = nullptr;
  inbedder_model_info(m, "device", &dev);
  std::string auto_device = dev;
  inbedder_model_close(m);
  inbedder_options_set_string(o, "device", "cuda");
  inbedder_status s = inbedder_model_open(path.c_str(), o, &m);
  if (auto_device == "cpu") {
    // No usable CUDA provider (the CPU wheel): an error with ONNX Runtime's reason, no CPU run.
    EXPECT_EQ(s, INBEDDER_ERR_DEVICE);
    EXPECT_EQ(m, nullptr);
    EXPECT_NE(last().find("CUDAExecutionProvider"), std::string::npos) << last();
    EXPECT_NE(last().find("available: "), std::string::npos) << last();
  } else {
    EXPECT_EQ(s, INBEDDER_OK);
    inbedder_model_close(m);
  }
  inbedder_options_destroy(o);
}

// "spinning": 0 / 1 open (the same vectors: the pool's waiting changes, not the arithmetic);
// other values and a string are refused, and it is an open option, not an encode one.
TEST(CApi, SpinningOption) {
  NEED_BUNDLE(path, "INBEDDER_TEST_BUNDLE");
  inbedder_options* o = nullptr;
  ASSERT_EQ(inbedder_options_create(&o), INBEDDER_OK);
  inbedder_options_set_int(o, "threads", 1);
  std::vector<std::vector<float>> got;
  for (long spin : {0L, 1L}) {
    ASSERT_EQ(inbedder_options_set_int(o, "spinning", spin), INBEDDER_OK);
    Model m(path, o);
    ASSERT_NE(m.m, nullptr);
    got.push_back(embed_first(m, 2));
  }
  EXPECT_EQ(got[0], got[1]);
  for (long bad : {2L, -1L}) {
    inbedder_options_set_int(o, "spinning", bad);
    inbedder_model* m = nullptr;
    EXPECT_EQ(inbedder_model_open(path.c_str(), o, &m), INBEDDER_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(m, nullptr);
    EXPECT_EQ(last(),
              "spinning must be 0 (the default: idle pool threads sleep) or 1 (they "
              "busy-wait), got " +
                  std::to_string(bad));
  }
  EXPECT_EQ(inbedder_options_set_string(o, "spinning", "yes"), INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(last(), "option 'spinning' takes an int (inbedder_options_set_int)");
  inbedder_options_destroy(o);
  ASSERT_EQ(inbedder_options_create(&o), INBEDDER_OK);
  inbedder_options_set_int(o, "spinning", 1);
  Model m(path);
  inbedder_result* r = nullptr;
  EXPECT_EQ(inbedder_encode(m.m, kTexts, nullptr, 2, &kInstr, 1, o, &r),
            INBEDDER_ERR_UNKNOWN_OPTION);
  EXPECT_EQ(last(), "option 'spinning' is an open option, not an encode option");
  inbedder_options_destroy(o);
}

// One handle, 8 threads at once: the vectors of sequential calls, bit for bit.
static void threads_match(const std::string& path, bool answers) {
  inbedder::Model m(path);
  inbedder::Options o;
  o.set("batch_size", 2);
  if (answers) o.set("answers", 1);
  std::vector<std::vector<std::string>> inputs;
  for (int t = 0; t < 8; ++t) {
    std::vector<std::string> texts;
    for (int i = 0; i < 5; ++i)
      texts.push_back(std::string(kTexts[(t + i) % 5]) + " #" + std::to_string(t));
    inputs.push_back(texts);
  }
  std::vector<std::vector<float>> seq, par(8);
  std::vector<std::vector<std::string>> seq_a, par_a(8);
  for (int t = 0; t < 8; ++t) {
    auto r = m.encode(inputs[t], {kInstr}, o);
    seq.push_back(r.all());
    std::vector<std::string> a;
    if (answers)
      for (std::size_t i = 0; i < r.size(); ++i) a.push_back(r.answer(i));
    seq_a.push_back(a);
  }
  std::vector<std::thread> pool;
  std::vector<std::string> errors(8);
  for (int t = 0; t < 8; ++t) {
    pool.emplace_back([&, t] {
      try {
        for (int rep = 0; rep < 3; ++rep) {
          auto r = m.encode(inputs[t], {kInstr}, o);
          par[t] = r.all();
          par_a[t].clear();
          if (answers)
            for (std::size_t i = 0; i < r.size(); ++i) par_a[t].push_back(r.answer(i));
          if (par[t] != seq[t]) break;
        }
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  }
  for (auto& th : pool) th.join();
  for (int t = 0; t < 8; ++t) {
    EXPECT_EQ(errors[t], "");
    EXPECT_EQ(par[t], seq[t]) << "thread " << t;
    EXPECT_EQ(par_a[t], seq_a[t]) << "thread " << t;
  }
}

TEST(CApi, EightThreadsOneHandleMasked) {
  NEED_BUNDLE(path, "INBEDDER_TEST_BUNDLE");
  threads_match(path, true);
}

TEST(CApi, EightThreadsOneHandleCausal) {
  NEED_BUNDLE(path, "INBEDDER_TEST_CAUSAL_BUNDLE");
  threads_match(path, true);
}

TEST(CApi, CppWrapperThrowsWithStatus) {
  try {
    inbedder::Model m("/nonexistent");
    FAIL() << "no exception";
  } catch (const inbedder::Error& e) {
    EXPECT_EQ(e.status(), INBEDDER_ERR_BUNDLE);
    EXPECT_NE(std::string(e.what()).find("no such bundle directory"), std::string::npos);
  }
}

// The open option "verify": "stamp" (default, int 1), "full", "none" (int 0); the stamp written
// once every file matched, a garbage stamp only costs a full hash, a file changed after stamping
// is caught (its ctime moved), bad values are named.
TEST(CApi, VerifyModesAndStamp) {
  NEED_BUNDLE(src, "INBEDDER_TEST_BUNDLE");
  fs::path tmp = fs::temp_directory_path() / ("inbedder-verify-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::copy(src, tmp);
  fs::remove(tmp / ".inbedder-verified");
  ::sleep(4);  // past the stamp's 3 s racy window for the files just copied
  auto open_with = [&](const char* mode, long as_int) {
    inbedder_options* o = nullptr;
    EXPECT_EQ(inbedder_options_create(&o), INBEDDER_OK);
    inbedder_status s = mode ? inbedder_options_set_string(o, "verify", mode)
                             : inbedder_options_set_int(o, "verify", as_int);
    EXPECT_EQ(s, INBEDDER_OK) << last();
    inbedder_model* m = nullptr;
    s = inbedder_model_open(tmp.c_str(), o, &m);
    inbedder_model_close(m);
    inbedder_options_destroy(o);
    return s;
  };
  EXPECT_EQ(open_with("stamp", 0), INBEDDER_OK) << last();
  EXPECT_TRUE(fs::is_regular_file(tmp / ".inbedder-verified"));
  for (const char* mode : {"full", "none", "stamp"}) EXPECT_EQ(open_with(mode, 0), INBEDDER_OK);
  for (long v : {0L, 1L}) EXPECT_EQ(open_with(nullptr, v), INBEDDER_OK) << last();
  EXPECT_EQ(open_with(nullptr, 2), INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_NE(last().find("verify must be one of"), std::string::npos) << last();
  EXPECT_EQ(open_with("fast", 0), INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_NE(last().find("'fast'"), std::string::npos) << last();
  { std::ofstream(tmp / ".inbedder-verified") << "{not json"; }
  EXPECT_EQ(open_with("stamp", 0), INBEDDER_OK) << last();
  // A byte of the weights changed, mtime restored: caught under "stamp", skipped under "none".
  fs::path data = tmp / "model.onnx.data";
  auto when = fs::last_write_time(data);
  flip_byte(data, 64);  // the stream is closed before the mtime is restored
  fs::last_write_time(data, when);
  EXPECT_EQ(open_with("stamp", 0), INBEDDER_ERR_BUNDLE);
  EXPECT_NE(last().find("sha256 differs"), std::string::npos) << last();
  EXPECT_EQ(open_with(nullptr, 0), INBEDDER_OK) << last();
  fs::remove_all(tmp);
}

// The "session_cache" open option: the first open writes one entry, the next opens it and gives
// the same vectors bit for bit; a damaged entry is rebuilt; a path that is a file is refused.
TEST(CApi, RowOps) {
  // A per-token int8 bundle with its row-ops graph: the same vectors from both graphs (and the
  // row operators' kernels under ASan/UBSan).
  NEED_BUNDLE(path, "INBEDDER_TEST_ROW_OPS_BUNDLE");
  auto embed = [&](long row_ops) {
    inbedder_options* o = nullptr;
    EXPECT_EQ(inbedder_options_create(&o), INBEDDER_OK);
    EXPECT_EQ(inbedder_options_set_int(o, "row_ops", row_ops), INBEDDER_OK);
    Model m(path, o);
    inbedder_options_destroy(o);
    return embed_first(m, 3);
  };
  const std::vector<float> stock = embed(0);
  EXPECT_EQ(embed(1), stock);
  inbedder_options* o = nullptr;
  ASSERT_EQ(inbedder_options_create(&o), INBEDDER_OK);
  EXPECT_EQ(inbedder_options_set_int(o, "row_ops", -1), INBEDDER_OK);  // checked at open
  inbedder_model* m = nullptr;
  EXPECT_EQ(inbedder_model_open(path.c_str(), o, &m), INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(m, nullptr);
  EXPECT_EQ(last(),
            "row_ops must be 1 (the default: a graph's row-ops form when the bundle has one) or 0 "
            "(the stock graph), got -1");
  inbedder_options_destroy(o);
}

TEST(CApi, SessionCache) {
  NEED_BUNDLE(path, "INBEDDER_TEST_BUNDLE");
  fs::path cache = fs::temp_directory_path() / ("inbedder-cache-" + std::to_string(::getpid()));
  fs::remove_all(cache);
  auto embed = [&](const std::string& dir) {
    inbedder_options* o = nullptr;
    EXPECT_EQ(inbedder_options_create(&o), INBEDDER_OK);
    if (!dir.empty()) {
      EXPECT_EQ(inbedder_options_set_string(o, "session_cache", dir.c_str()), INBEDDER_OK);
    }
    Model m(path, o);
    inbedder_options_destroy(o);
    return embed_first(m, 3);
  };
  auto entries = [&] {
    std::vector<fs::path> out;
    for (const auto& e : fs::directory_iterator(cache)) out.push_back(e.path());
    return out;
  };
  const std::vector<float> want = embed("");
  EXPECT_EQ(embed(cache.string()), want);
  auto made = entries();
  ASSERT_EQ(made.size(), 1u);  // the entry, and no staging directory left
  const fs::path entry = made[0];
  for (const char* f : {"entry.json", "graph.onnx", "graph.onnx.data"})
    EXPECT_TRUE(fs::is_regular_file(entry / f)) << f;
  const auto written = fs::last_write_time(entry / "graph.onnx.data");
  EXPECT_EQ(embed(cache.string()), want);  // opened from the entry, which is left as it was
  EXPECT_EQ(fs::last_write_time(entry / "graph.onnx.data"), written);
  EXPECT_EQ(entries(), made);
  { std::ofstream(entry / "graph.onnx.data", std::ios::app) << 'x'; }  // damaged: rebuilt
  EXPECT_EQ(embed(cache.string()), want);
  EXPECT_EQ(entries(), made);
  EXPECT_EQ(embed(cache.string()), want);
  fs::remove(entry / "entry.json");  // a directory no commit made would block the rename: rebuilt
  EXPECT_EQ(embed(cache.string()), want);
  EXPECT_EQ(entries(), made);
  EXPECT_TRUE(fs::is_regular_file(entry / "entry.json"));
  fs::remove_all(cache);
  { std::ofstream(cache) << "a file"; }
  inbedder_options* o = nullptr;
  ASSERT_EQ(inbedder_options_create(&o), INBEDDER_OK);
  inbedder_options_set_string(o, "session_cache", cache.c_str());
  inbedder_model* m = nullptr;
  EXPECT_EQ(inbedder_model_open(path.c_str(), o, &m), INBEDDER_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(m, nullptr);
  EXPECT_EQ(last(), "session_cache '" + cache.string() + "' is not a directory");
  EXPECT_EQ(inbedder_options_set_int(o, "session_cache", 1), INBEDDER_ERR_INVALID_ARGUMENT);
  inbedder_options_destroy(o);
  fs::remove_all(cache);
}
