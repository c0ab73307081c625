// The text binaries as a user runs them: conveyor-tokenize, conveyor-generate --prompt/--chat
// and conveyor-chat on the SmolLM2 GGUF (when fetched), and the bad input of the real-models
// issue — each must exit 1 (2 for usage) with a message naming the value, the limit and the fix.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>

#include "common/test_util.hpp"

namespace conveyor {
namespace {

constexpr const char* kSmolLm2 = "SmolLM2-135M-Instruct.Q4_1.gguf";

std::string bin(const char* name) {
  return test::binary_path(name).string();
}

class TextCli : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto path = test::asset_path(kSmolLm2);
    if (!path) GTEST_SKIP() << test::missing_asset_reason(kSmolLm2, "smollm2");
    model_ = path->string();
  }
  int run(const std::string& command, std::string* out) const {
    return test::run_command(command, out);
  }
  void expect_refused(const std::string& args, const std::string& needle) const {
    std::string out;
    EXPECT_EQ(run(bin("conveyor-generate") + " --model " + model_ + " " + args, &out), 1)
        << args << "\n"
        << out;
    EXPECT_NE(out.find(needle), std::string::npos) << args << "\n" << out;
  }
  std::string model_;
};

TEST_F(TextCli, TokenizePrintsIdsAndDecodes) {
  std::string out;
  ASSERT_EQ(run(bin("conveyor-tokenize") + " --model " + model_ +
                    " --text 'What is the capital of France?'",
                &out),
            0)
      << out;
  EXPECT_EQ(out, "1780 314 260 3575 282 4649 47\n");
  out.clear();  // run_command appends
  ASSERT_EQ(run(bin("conveyor-tokenize") + " --model " + model_ + " --decode 19556,905", &out), 0);
  EXPECT_EQ(out, "Hello world\n");
  out.clear();
  ASSERT_EQ(run(bin("conveyor-tokenize") + " --model " + model_ +
                    " --parse-special --text '<|im_start|>user'",
                &out),
            0);
  EXPECT_EQ(out, "1 4093\n");
  out.clear();
  EXPECT_EQ(run(bin("conveyor-tokenize") + " --model " + model_, &out), 2) << out;
  EXPECT_NE(out.find("--text"), std::string::npos);
}

TEST_F(TextCli, ChatAnswersParisOnTwoStages) {
  std::string out;
  ASSERT_EQ(run(bin("conveyor-generate") + " --model " + model_ +
                    " --prompt 'What is the capital of France?' --chat --stages 2 --quiet",
                &out),
            0)
      << out;
  EXPECT_NE(out.find("prompt 0: 37 tokens (chat, chatml"), std::string::npos) << out;
  EXPECT_NE(out.find("The capital of France is Paris.\n"), std::string::npos) << out;
  EXPECT_NE(out.find("[stop token]"), std::string::npos) << out;
  EXPECT_NE(out.find("GGUF v3, 272 tensors"), std::string::npos) << out;
}

TEST_F(TextCli, RawPromptsAndBatchesOfText) {
  std::string out;
  ASSERT_EQ(run(bin("conveyor-generate") + " --model " + model_ +
                    " --prompt 'The capital of France is' --prompt 'One, two, three,'"
                    " --max-new-tokens 4 --stages 3 --quiet",
                &out),
            0)
      << out;
  EXPECT_NE(out.find("prompt 0: 5 tokens (raw text)"), std::string::npos) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex("--- answer 0 \\(4 tokens\\) ---\n Paris"))) << out;
  EXPECT_NE(out.find("--- answer 1 (4 tokens) ---"), std::string::npos) << out;
}

TEST_F(TextCli, ChatKeepsHistoryAndReusesTheCache) {
  std::string out;
  ASSERT_EQ(run("printf 'What is the capital of France?\\nAnd of Germany?\\n/exit\\n' | " +
                    bin("conveyor-chat") + " --model " + model_ + " --stages 2 --max-new-tokens 48",
                &out),
            0)
      << out;
  EXPECT_NE(out.find("Paris"), std::string::npos) << out;
  EXPECT_NE(out.find("Berlin"), std::string::npos) << out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      out, m,
      std::regex("\\[(\\d+) prompt tokens, (\\d+) reused[^\\]]*\\]\n[^\\[]*\\[(\\d+) prompt "
                 "tokens, (\\d+) reused")))
      << out;
  EXPECT_EQ(m[2].str(), "0");
  EXPECT_GT(std::stoi(m[4].str()), std::stoi(m[1].str()));  // turn 2 reuses all of turn 1's prompt
}

TEST_F(TextCli, BadTextInputIsRefusedWithTheFix) {
  expect_refused("--prompt \"$(printf 'caf\\377')\"", "not valid UTF-8");
  expect_refused("--prompt hi --chat --chat-template vicuna", "\"vicuna\" is not known");
  expect_refused("--prompt hi --max-new-tokens 100 --max-context 64", "exceeds max_context 64");
  expect_refused("--prompt ''", "prompt is empty");
  expect_refused("--prompt hi --prompt-ids 1,2", "not both");
  expect_refused("--prompt-ids 1,49152", "outside the vocabulary [0, 49152)");
  std::string out;
  EXPECT_EQ(run(bin("conveyor-generate") + " --model " + model_ + " --chat --prompt-ids 1", &out),
            1);
  EXPECT_NE(out.find("--chat and --system apply to text prompts"), std::string::npos) << out;
}

TEST_F(TextCli, CorruptGgufFilesNameTheProblem) {
  test::TempDir dir;
  const auto cut = dir.path() / "cut.gguf";
  std::filesystem::copy_file(model_, cut);
  std::filesystem::resize_file(cut, 50'000'000);
  std::string out;
  EXPECT_EQ(run(bin("conveyor-generate") + " --model " + cut.string() + " --prompt hi", &out), 1);
  EXPECT_NE(out.find("cut.gguf"), std::string::npos) << out;
  EXPECT_NE(out.find("truncated"), std::string::npos) << out;
}

// Without the asset: a Hugging Face directory that has no tokenizer cannot take text.
TEST(TextCliWithoutTokenizer, AModelWithoutTokenizerJsonSaysSo) {
  test::TempDir dir;
  test::make_tiny_model(dir.path(), 2);
  std::string out;
  EXPECT_EQ(
      test::run_command(
          bin("conveyor-generate") + " --model " + dir.path().string() + " --prompt hello", &out),
      1);
  EXPECT_NE(out.find("has no tokenizer.json"), std::string::npos) << out;
  EXPECT_NE(out.find("--prompt-ids"), std::string::npos) << out;
}

}  // namespace
}  // namespace conveyor
