// Tests of the tokenizer: every case of tests/data/tokenizers/*.json (ids from Hugging Face
// tokenizers and llama.cpp references, tests/reference/tokenizer_reference.py) encoded and
// decoded for GGUF and tokenizer.json sources, llama.cpp's own .inp/.out vocab tests, streaming
// decode of split UTF-8, and the errors for bad input and bad files.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "common/test_util.hpp"
#include "conveyor/error.hpp"
#include "conveyor/gguf.hpp"
#include "conveyor/tokenizer.hpp"
#include "model/gguf_writer.hpp"
#include "text/unicode.hpp"

namespace conveyor {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(
           std::filesystem::path(CONVEYOR_TEST_DATA_DIR) / "tokenizers")) {
    if (entry.path().extension() == ".json") names.push_back(entry.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

json read_fixture(const std::string& name) {
  json j;
  std::ifstream(std::filesystem::path(CONVEYOR_TEST_DATA_DIR) / "tokenizers" / (name + ".json")) >>
      j;
  return j;
}

Tokenizer load(const json& source, const std::filesystem::path& path) {
  if (source["kind"] == "gguf") return Tokenizer::from_gguf(GgufFile::open(path));
  return Tokenizer::from_tokenizer_json(path);
}

class TokenizerFixture : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    fixture_ = read_fixture(GetParam());
    const auto asset = fixture_["tokenizer"]["asset"].get<std::string>();
    path_ = test::asset_path(asset);
    if (!path_) GTEST_SKIP() << test::missing_asset_reason(asset, "");
  }
  json fixture_;
  std::optional<std::filesystem::path> path_;
};

TEST_P(TokenizerFixture, EncodesAndDecodesEveryCaseAsTheReference) {
  const Tokenizer tokenizer = load(fixture_["tokenizer"], *path_);
  int cases = 0;
  for (const json& c : fixture_["cases"]) {
    const auto text = c["text"].get<std::string>();
    const EncodeOptions options{.add_special = c["add_special"].get<bool>(),
                                .parse_special = c["parse_special"].get<bool>()};
    const auto want = c["ids"].get<std::vector<int32_t>>();
    const std::vector<int32_t> got = tokenizer.encode(text, options);
    EXPECT_EQ(got, want) << "text: \"" << text << "\" add_special " << options.add_special
                         << " parse_special " << options.parse_special
                         << "\n got:  " << fmt::format("{}", fmt::join(got, ","))
                         << "\n want: " << fmt::format("{}", fmt::join(want, ","));
    EXPECT_EQ(tokenizer.decode(want), c["decoded"].get<std::string>())
        << "text: \"" << text << "\"";
    // Streaming gives the same text, one token at a time.
    StreamDecoder stream(tokenizer);
    std::string streamed;
    for (int32_t id : want)
      streamed += stream.push(id);
    streamed += stream.finish();
    EXPECT_EQ(streamed, text::replace_invalid_utf8(tokenizer.decode(want))) << text;
    ++cases;
  }
  EXPECT_GE(cases, 40);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerFixture, ::testing::ValuesIn(fixture_names()),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace_if(
                               name.begin(), name.end(), [](char c) { return !std::isalnum(c); },
                               '_');
                           return name;
                         });

// llama.cpp's own vocabulary tests: inputs separated by __ggml_vocab_test__, one line of ids per
// input (add_special false, parse_special false as llama.cpp's test-tokenizer-0 runs them).
class LlamaCppVocabTest : public ::testing::TestWithParam<std::string> {};

TEST_P(LlamaCppVocabTest, MatchesLlamaCppsExpectedIds) {
  const std::string base = "tokenizers/ggml-vocab/ggml-vocab-" + GetParam() + ".gguf";
  const auto gguf = test::asset_path(base);
  const auto inp = test::asset_path(base + ".inp");
  const auto out = test::asset_path(base + ".out");
  if (!gguf || !inp || !out) GTEST_SKIP() << test::missing_asset_reason(base, "ggml-vocabs");
  const Tokenizer tokenizer = Tokenizer::from_gguf(GgufFile::open(*gguf));
  std::ifstream in_file(*inp, std::ios::binary);
  std::stringstream in_text;
  in_text << in_file.rdbuf();
  const std::string all = in_text.str();
  std::vector<std::string> inputs;
  const std::string separator = "\n__ggml_vocab_test__\n";
  for (size_t pos = 0;;) {
    const size_t end = all.find(separator, pos);
    if (end == std::string::npos) break;
    inputs.push_back(all.substr(pos, end - pos));
    pos = end + separator.size();
  }
  std::ifstream out_file(*out);
  std::string line;
  size_t i = 0;
  for (; std::getline(out_file, line) && i < inputs.size(); ++i) {
    std::vector<int32_t> want;
    std::istringstream ids(line);
    for (int32_t id; ids >> id;)
      want.push_back(id);
    EXPECT_EQ(tokenizer.encode(inputs[i], {.add_special = false, .parse_special = false}), want)
        << "input " << i << ": \"" << inputs[i] << "\"";
  }
  EXPECT_EQ(i, inputs.size());
  EXPECT_GE(inputs.size(), 40u);
}

INSTANTIATE_TEST_SUITE_P(Vocabs, LlamaCppVocabTest,
                         ::testing::Values("llama-spm", "llama-bpe", "qwen2", "deepseek-llm"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// ---- a tiny byte-level vocabulary written as a vocab-only GGUF ------------------------------

class TinyVocab : public ::testing::Test {
 protected:
  void SetUp() override { path_ = write({}); }

  // The 256 byte-level characters, a few merges, two control tokens and one user-defined one.
  std::filesystem::path write(const std::function<void(GgufWriter&)>& edit) {
    std::vector<std::string> tokens;
    for (int b = 0; b < 256; ++b)
      tokens.push_back(text::byte_level_alphabet().encode(static_cast<uint8_t>(b)));
    const std::vector<std::string> merges = {"h e", "l l",   "he ll",  "hell o",  "Ġ w",
                                             "o r", "Ġw or", "Ġwor l", "Ġworl d", "Ġ 1"};
    for (const std::string& m : merges) {
      const size_t space = m.find(' ');
      tokens.push_back(m.substr(0, space) + m.substr(space + 1));
    }
    tokens.insert(tokens.end(), {"<|start|>", "<|end|>", "<tool>"});
    std::vector<int32_t> types(tokens.size(), 1);
    types[types.size() - 3] = 3;
    types[types.size() - 2] = 3;
    types[types.size() - 1] = 4;
    GgufWriter w;
    w.add_string("tokenizer.ggml.model", "gpt2");
    w.add_string("tokenizer.ggml.pre", "gpt-2");
    w.add_strings("tokenizer.ggml.tokens", tokens);
    w.add_i32s("tokenizer.ggml.token_type", types);
    w.add_strings("tokenizer.ggml.merges", merges);
    w.add_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(tokens.size() - 3));
    w.add_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(tokens.size() - 2));
    w.add_bool("tokenizer.ggml.add_bos_token", true);
    if (edit) edit(w);
    const auto path = dir_.path() / fmt::format("vocab{}.gguf", n_++);
    w.write(path);
    return path;
  }

  test::TempDir dir_;
  std::filesystem::path path_;
  int n_ = 0;
};

TEST_F(TinyVocab, AVocabOnlyGgufTokenizesWithMergesSpecialsAndBos) {
  const Tokenizer t = Tokenizer::from_gguf(GgufFile::open(path_));
  const int32_t hello = *t.token_id("hello");
  const int32_t world = *t.token_id("Ġworld");
  const int32_t start = *t.token_id("<|start|>");
  const int32_t end = *t.token_id("<|end|>");
  const int32_t tool = *t.token_id("<tool>");
  EXPECT_EQ(t.encode("hello world", {.add_special = false}), (std::vector<int32_t>{hello, world}));
  EXPECT_EQ(t.encode("hello world"), (std::vector<int32_t>{start, hello, world}));
  EXPECT_TRUE(t.adds_bos());
  // Control tokens only with parse_special; user-defined ones always.
  const std::vector<int32_t> plain = t.encode("<|end|>", {.add_special = false});
  EXPECT_GT(plain.size(), 1u);
  EXPECT_EQ(t.encode("<|end|>", {.add_special = false, .parse_special = true}),
            (std::vector<int32_t>{end}));
  EXPECT_EQ(t.encode("a<tool>", {.add_special = false}),
            (std::vector<int32_t>{*t.token_id("a"), tool}));
  EXPECT_EQ(t.decode(std::vector<int32_t>{start, hello, world, end}),
            "<|start|>hello world<|end|>");
  EXPECT_EQ(t.decode(std::vector<int32_t>{start, hello, end}, {.skip_special = true}), "hello");
  EXPECT_TRUE(t.is_end_of_generation(end));
  EXPECT_FALSE(t.is_end_of_generation(hello));
  EXPECT_THAT(t.description(), HasSubstr("byte-level BPE"));
}

TEST_F(TinyVocab, StreamingHoldsSplitCharactersUntilComplete) {
  const Tokenizer t = Tokenizer::from_gguf(GgufFile::open(path_));
  // "é" is two bytes, each its own byte-level token here; "🤖" is four.
  const std::vector<int32_t> ids = t.encode("é🤖!", {.add_special = false});
  ASSERT_EQ(ids.size(), 7u);
  StreamDecoder stream(t);
  EXPECT_EQ(stream.push(ids[0]), "");
  EXPECT_EQ(stream.push(ids[1]), "é");
  EXPECT_EQ(stream.push(ids[2]), "");
  EXPECT_EQ(stream.push(ids[3]), "");
  EXPECT_EQ(stream.push(ids[4]), "");
  EXPECT_EQ(stream.push(ids[5]), "🤖");
  EXPECT_EQ(stream.push(ids[6]), "!");
  EXPECT_EQ(stream.finish(), "");
  // A character cut short at the end comes out as U+FFFD on finish.
  EXPECT_EQ(stream.push(ids[2]), "");
  EXPECT_EQ(stream.finish(), "\xEF\xBF\xBD");
  // A byte that can never start a character is not held back.
  EXPECT_EQ(stream.push(*t.token_id(text::byte_level_alphabet().encode(0xFF))), "\xEF\xBF\xBD");
}

TEST_F(TinyVocab, AMissingOrDefaultPreTokenizerFallsBackToLlamaCppsDefault) {
  for (const bool missing : {true, false}) {
    const auto path = write([&](GgufWriter& w) {
      w.erase_kv("tokenizer.ggml.pre");
      if (!missing) w.add_string("tokenizer.ggml.pre", "default");
    });
    const Tokenizer t = Tokenizer::from_gguf(GgufFile::open(path));
    // The default list splits digit runs away from the space before them, so " 1" cannot
    // merge into "Ġ1" as it does under the GPT-2 regex alone.
    const std::vector<int32_t> ids = t.encode("hello 1234", {.add_special = false});
    EXPECT_EQ(ids, (std::vector<int32_t>{*t.token_id("hello"), *t.token_id("Ġ"), *t.token_id("1"),
                                         *t.token_id("2"), *t.token_id("3"), *t.token_id("4")}));
    EXPECT_EQ(t.decode(ids), "hello 1234");
  }
  const Tokenizer gpt2 = Tokenizer::from_gguf(GgufFile::open(path_));
  EXPECT_EQ(gpt2.encode("hello 1234", {.add_special = false})[1], *gpt2.token_id("Ġ1"));
}

TEST_F(TinyVocab, InvalidInputAndIdsAreErrorsThatNameTheProblem) {
  const Tokenizer t = Tokenizer::from_gguf(GgufFile::open(path_));
  test::expect_invalid([&] { t.encode("ok \xff then"); }, {"not valid UTF-8", "0xff", "offset 3"});
  test::expect_invalid([&] { t.encode("cut \xe2\x82"); }, {"offset 4"});
  test::expect_invalid([&] { t.encode("\xed\xa0\x80"); }, {"offset 0"});  // a surrogate
  test::expect_invalid(
      [&] {
        t.decode(std::vector<int32_t>{5, t.vocab_size()});
      },
      {"token id 269", "[0, 269)"});
  test::expect_invalid([&] { t.decode(std::vector<int32_t>{-1}); }, {"token id -1"});
  EXPECT_TRUE(t.encode("", {.add_special = false}).empty());
}

TEST_F(TinyVocab, BadTokenizerMetadataIsRefusedByName) {
  auto refused = [&](const std::function<void(GgufWriter&)>& edit,
                     const std::vector<std::string>& parts) {
    const auto path = write(edit);
    test::expect_error([&] { Tokenizer::from_gguf(GgufFile::open(path)); }, ErrorCode::kModelFormat,
                       parts);
  };
  refused([](GgufWriter& w) { w.erase_kv("tokenizer.ggml.model"); }, {"no tokenizer"});
  refused(
      [](GgufWriter& w) {
        w.erase_kv("tokenizer.ggml.model");
        w.add_string("tokenizer.ggml.model", "bert");
      },
      {"\"bert\" is not supported", "gpt2", "llama"});
  refused(
      [](GgufWriter& w) {
        w.erase_kv("tokenizer.ggml.pre");
        w.add_string("tokenizer.ggml.pre", "my-own");
      },
      {"\"my-own\"", "known"});
  refused(
      [](GgufWriter& w) {
        w.erase_kv("tokenizer.ggml.merges");
        w.add_strings("tokenizer.ggml.merges", {"h e", "lonely"});
      },
      {"merges entry 1", "\"lonely\"", "no space"});
  refused(
      [](GgufWriter& w) {
        w.erase_kv("tokenizer.ggml.token_type");
        w.add_i32s("tokenizer.ggml.token_type", {1, 1, 1});
      },
      {"token_type has 3 entries", "269"});
  refused(
      [](GgufWriter& w) {
        w.erase_kv("tokenizer.ggml.bos_token_id");
        w.add_u32("tokenizer.ggml.bos_token_id", 9999);
      },
      {"bos token id 9999", "[0, 269)"});
  refused(
      [](GgufWriter& w) {
        w.erase_kv("tokenizer.ggml.model");
        w.add_string("tokenizer.ggml.model", "llama");
      },
      {"needs tokenizer.ggml.scores"});
}

TEST(TokenizerJson, ModelTypesOtherThanBpeAreRefused) {
  test::TempDir dir;
  std::ofstream(dir.path() / "tokenizer.json")
      << R"({"model": {"type": "Unigram", "vocab": []}, "added_tokens": []})";
  test::expect_error([&] { Tokenizer::from_tokenizer_json(dir.path() / "tokenizer.json"); },
                     ErrorCode::kModelFormat,
                     {"tokenizer.json", "\"Unigram\"", "not supported", "BPE"});
  std::ofstream(dir.path() / "tokenizer.json")
      << R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
            "normalizer": {"type": "Lowercase"}})";
  test::expect_error([&] { Tokenizer::from_tokenizer_json(dir.path() / "tokenizer.json"); },
                     ErrorCode::kModelFormat, {"normalizer \"Lowercase\"", "NFC"});
  test::expect_error([&] { Tokenizer::open(dir.path() / "nothing-here"); },
                     ErrorCode::kInvalidArgument, {"does not exist"});
}

TEST(Utf8, CompletePrefixHoldsOnlySequencesThatCanStillComplete) {
  EXPECT_EQ(text::complete_utf8_prefix("abc"), 3u);
  EXPECT_EQ(text::complete_utf8_prefix("ab\xC3"), 2u);         // é cut after 1 byte
  EXPECT_EQ(text::complete_utf8_prefix("a\xF0\x9F\xA4"), 1u);  // 🤖 cut after 3 bytes
  EXPECT_EQ(text::complete_utf8_prefix("a\xE0\x80"), 3u);      // overlong: never valid
  EXPECT_EQ(text::complete_utf8_prefix("a\xED\xA0"), 3u);      // surrogate: never valid
  EXPECT_EQ(text::complete_utf8_prefix("a\xC0"), 2u);          // C0 never starts one
  EXPECT_EQ(text::replace_invalid_utf8("a\xFF"
                                       "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(text::first_invalid_utf8("héllo"), std::nullopt);
  EXPECT_EQ(text::first_invalid_utf8("h\xC3"), 1u);
}

}  // namespace
}  // namespace conveyor
