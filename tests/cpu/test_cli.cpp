// The binaries as a user runs them: conveyor-make-model and conveyor-generate on good input, and
// every kind of bad input the issue lists — each must exit 1 with a message naming the value,
// the limit and the fix (never a crash, a hang or a silently wrong answer).
#include <gtest/gtest.h>

#include <fstream>
#include <regex>

#include "common/test_util.hpp"
#include "observe/npy.hpp"

namespace conveyor {
namespace {

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir("conveyor-cli");
    std::string out;
    ASSERT_EQ(run(make_model() + " --preset tiny --seed 3 --out " + model(), &out), 0) << out;
  }
  static void TearDownTestSuite() { delete dir_; }

  static std::string make_model() { return test::binary_path("conveyor-make-model").string(); }
  static std::string generate() { return test::binary_path("conveyor-generate").string(); }
  static std::string model() { return (dir_->path() / "model").string(); }
  static int run(const std::string& command, std::string* out) {
    return test::run_command(command, out);
  }
  // Runs conveyor-generate with `args`; expects exit status 1 and `needle` in the output.
  static void expect_refused(const std::string& args, const std::string& needle) {
    std::string out;
    EXPECT_EQ(run(generate() + " " + args, &out), 1) << args << "\n" << out;
    EXPECT_NE(out.find(needle), std::string::npos) << args << "\n" << out;
  }
  // A copy of the model whose files the test may damage.
  static std::filesystem::path copy_model(const std::string& name) {
    const auto target = dir_->path() / name;
    std::filesystem::copy(model(), target, std::filesystem::copy_options::recursive);
    return target;
  }

  static test::TempDir* dir_;
};

test::TempDir* CliTest::dir_ = nullptr;

TEST_F(CliTest, GeneratesAndWritesLogits) {
  std::string out;
  const auto logits = dir_->path() / "logits.npy";
  ASSERT_EQ(run(generate() + " --model " + model() +
                    " --batch '1,2,3;4,5' --max-new-tokens 5 --stages 2 --ignore-eos"
                    " --all-logits --logits-out " +
                    logits.string(),
                &out),
            0)
      << out;
  EXPECT_TRUE(std::regex_search(out, std::regex("request 0:( \\d+){5}\n"))) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex("request 1:( \\d+){5}\n"))) << out;
  EXPECT_NE(out.find("prefill 5 tok"), std::string::npos) << out;
  EXPECT_NE(out.find("tok/s"), std::string::npos) << out;
  EXPECT_NE(out.find("imbalance"), std::string::npos) << out;
  // all_logits: (3 + 4) + (2 + 4) rows, vocab 512.
  NpyMatrix m = read_npy_f32(logits);
  EXPECT_EQ(m.rows, 13);
  EXPECT_EQ(m.cols, 512);
  // Without --all-logits: one row per generated token.
  ASSERT_EQ(
      run(generate() + " --model " + model() +
              " --prompt-ids 1,2,3 --max-new-tokens 4 --ignore-eos --logits-out " + logits.string(),
          &out),
      0)
      << out;
  EXPECT_EQ(read_npy_f32(logits).rows, 4);
}

TEST_F(CliTest, PromptFileAndTraceOutputs) {
  const auto prompts = dir_->path() / "prompts.txt";
  std::ofstream(prompts) << "1 2 3\n# comment\n9,8\n";
  const auto trace = dir_->path() / "trace.json";
  const auto svg = dir_->path() / "timeline.svg";
  std::string out;
  ASSERT_EQ(run(generate() + " --model " + model() + " --prompt-ids-file " + prompts.string() +
                    " --max-new-tokens 3 --stages 3 --microbatches 2 --chunking 2 --trace " +
                    trace.string() + " --timeline " + svg.string(),
                &out),
            0)
      << out;
  EXPECT_NE(out.find("request 1:"), std::string::npos);
  EXPECT_GT(std::filesystem::file_size(trace), 100u);
  std::ifstream in(svg);
  std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(text.rfind("<svg", 0), 0u);
}

TEST_F(CliTest, BadTokenIds) {
  expect_refused("--model " + model() + " --prompt-ids 1,x,3", "'x' (item 1) is not a token id");
  expect_refused("--model " + model() + " --prompt-ids 1,512",
                 "token id 512 at prompt position 1 is outside the vocabulary [0, 512)");
  expect_refused("--model " + model() + " --prompt-ids=-1", "token id -1");
  expect_refused("--model " + model() + " --prompt-ids ''", "empty prompt");
  expect_refused("--model " + model(), "no prompt given");
}

TEST_F(CliTest, LimitsOfContextAndBatch) {
  expect_refused("--model " + model() + " --prompt-ids 1,2,3 --max-new-tokens 30 --max-context 32",
                 "prompt of 3 tokens + max_new_tokens 30 = 33 exceeds max_context 32");
  expect_refused("--model " + model() + " --batch '1;2;3' --max-batch 2",
                 "3 prompts but --max-batch is 2");
  expect_refused("--model " + model() + " --prompt-ids 1 --stages 5", "only 4 layers");
  expect_refused("--model " + model() + " --prompt-ids 1 --stages 2 --layers-per-stage 1,2", "sum");
  expect_refused("--model " + model() + " --prompt-ids 1 --top-p 0", "top_p is 0");
}

TEST_F(CliTest, MissingFiles) {
  expect_refused("--model " + (dir_->path() / "absent").string() + " --prompt-ids 1",
                 "does not exist");
  const auto no_config = copy_model("no-config");
  std::filesystem::remove(no_config / "config.json");
  expect_refused("--model " + no_config.string() + " --prompt-ids 1", "config.json");
  const auto no_weights = copy_model("no-weights");
  std::filesystem::remove(no_weights / "model.safetensors");
  expect_refused("--model " + no_weights.string() + " --prompt-ids 1", "model.safetensors");
}

TEST_F(CliTest, MissingShard) {
  const auto sharded = dir_->path() / "sharded";
  std::string out;
  ASSERT_EQ(
      run(make_model() + " --preset tiny --seed 3 --shard-mb 1 --out " + sharded.string(), &out), 0)
      << out;
  std::filesystem::path shard;
  for (const auto& entry : std::filesystem::directory_iterator(sharded)) {
    if (entry.path().filename().string().starts_with("model-0000")) shard = entry.path();
  }
  ASSERT_FALSE(shard.empty()) << out;
  std::filesystem::remove(shard);
  expect_refused("--model " + sharded.string() + " --prompt-ids 1", shard.filename().string());
}

TEST_F(CliTest, CorruptWeights) {
  // Truncated file.
  const auto truncated = copy_model("truncated");
  const auto file = truncated / "model.safetensors";
  std::filesystem::resize_file(file, std::filesystem::file_size(file) / 2);
  expect_refused("--model " + truncated.string() + " --prompt-ids 1", "model.safetensors");

  // A dtype conveyor does not read (F32 -> I32 keeps every size consistent).
  const auto wrong_dtype = copy_model("wrong-dtype");
  {
    std::fstream f(wrong_dtype / "model.safetensors",
                   std::ios::in | std::ios::out | std::ios::binary);
    std::string head(4096, '\0');
    f.read(head.data(), static_cast<std::streamsize>(head.size()));
    const size_t at = head.find("\"F32\"");
    ASSERT_NE(at, std::string::npos);
    f.seekp(static_cast<std::streamoff>(at + 1));
    f.write("I", 1);
  }
  expect_refused("--model " + wrong_dtype.string() + " --prompt-ids 1", "I32");

  // Tensor shapes that do not match the config.
  const auto wrong_shape = copy_model("wrong-shape");
  {
    std::ifstream in(wrong_shape / "config.json");
    std::string config((std::istreambuf_iterator<char>(in)), {});
    config = std::regex_replace(config, std::regex("\"intermediate_size\": *352"),
                                "\"intermediate_size\": 360");
    std::ofstream(wrong_shape / "config.json") << config;
  }
  expect_refused("--model " + wrong_shape.string() + " --prompt-ids 1", "mlp");
}

TEST_F(CliTest, PlanSizesAnEightBillionDeploymentWithoutWeights) {
  const std::string plan = test::binary_path("conveyor-plan").string();
  const std::string config = std::string(CONVEYOR_SOURCE_DIR) + "/configs/llama-3-8b.json";
  std::string out;
  ASSERT_EQ(
      run(plan + " --config " + config + " --devices h100 --link nvlink --max-stages 8", &out), 0)
      << out;
  // The lm_head makes the last stage the heaviest: balancing gives it fewer layers.
  EXPECT_NE(out.find("partition 8,8,8,8"), std::string::npos) << out;
  EXPECT_NE(out.find("partition 8,9,9,6"), std::string::npos) << out;
  EXPECT_EQ(run(plan + " --config " + config + " --devices tpu", &out), 1) << out;
  EXPECT_NE(out.find("h100"), std::string::npos) << out;  // the error lists the presets
}

TEST_F(CliTest, PlanPlacesSeventyBOnTwoNodes) {
  const std::string plan = test::binary_path("conveyor-plan").string() + " --config " +
                           std::string(CONVEYOR_SOURCE_DIR) + "/configs/llama-3-70b.json";
  std::string out;
  ASSERT_EQ(run(plan + " --nodes 2x8 --inter-node-link ethernet-10g --max-stages 2", &out), 0)
      << out;
  EXPECT_NE(out.find("nodes 2 x 8 | links nvlink inside a node, ethernet-10g between nodes"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("balanced partition (decode), S = 16"), std::string::npos) << out;
  EXPECT_NE(out.find("node 1: stages 8-15"), std::string::npos) << out;
  EXPECT_NE(out.find("ethernet-10g (inter-node)"), std::string::npos) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex("decode strict : [0-9.]+ tok/s"))) << out;
  EXPECT_TRUE(std::regex_search(out, std::regex("decode cohorts: [0-9.]+ tok/s"))) << out;

  // More stages than GPUs, an unused node, a malformed layout, a network without nodes.
  EXPECT_EQ(run(plan + " --nodes 2x8 --stages 20", &out), 1) << out;
  EXPECT_NE(out.find("raise --nodes or lower --stages"), std::string::npos) << out;
  EXPECT_EQ(run(plan + " --nodes 2x8 --stages 8", &out), 1) << out;
  EXPECT_NE(out.find("use --nodes 1x8"), std::string::npos) << out;
  EXPECT_EQ(run(plan + " --nodes 2-8", &out), 1) << out;
  EXPECT_NE(out.find("2x8"), std::string::npos) << out;
  EXPECT_EQ(run(plan + " --inter-node-link ib-hdr", &out), 1) << out;
  EXPECT_NE(out.find("needs --nodes"), std::string::npos) << out;
}

TEST_F(CliTest, BenchSweepsAndWritesJson) {
  const auto json_path = dir_->path() / "bench.json";
  std::string out;
  ASSERT_EQ(run(test::binary_path("conveyor-bench").string() + " --model " + model() +
                    " --prompt-tokens 64 --stages 1,2 --microbatches 1,2"
                    " --strategies even,balanced --repeats 1 --json " +
                    json_path.string(),
                &out),
            0)
      << out;
  std::ifstream in(json_path);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_NE(text.find("\"bubble"), std::string::npos) << text.substr(0, 400);
  EXPECT_NE(out.find("measured"), std::string::npos) << out;
}

TEST_F(CliTest, MakeModelRefusesBadOptions) {
  std::string out;
  EXPECT_NE(run(make_model() + " --preset huge --out " + (dir_->path() / "x").string(), &out), 0);
  EXPECT_NE(out.find("tiny"), std::string::npos) << out;
}

}  // namespace
}  // namespace conveyor
