// conveyor against an independent implementation: logits and greedy tokens stored from Hugging
// Face transformers (tests/reference/hf_reference.py) for models conveyor-make-model rebuilds
// byte for byte. Every prefill position and decode step must agree to 1e-4 (max |diff| / max
// |ref| per row), and the greedy tokens exactly — on 1, 2 and 4 pipeline stages.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <fstream>

#include "common/test_util.hpp"
#include "conveyor/engine.hpp"
#include "model/make_model.hpp"
#include "observe/npy.hpp"

namespace conveyor {
namespace {

std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(CONVEYOR_TEST_DATA_DIR)) {
    const std::string file = entry.path().filename().string();
    // Hugging Face fixtures are the made tiny models (other fixtures live beside them).
    if (file.starts_with("tiny_") && file.ends_with(".json")) {
      names.push_back(file.substr(0, file.size() - 5));
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

class HfReference : public ::testing::TestWithParam<std::string> {};

TEST_P(HfReference, LogitsAndGreedyTokensMatch) {
  const std::filesystem::path data = CONVEYOR_TEST_DATA_DIR;
  nlohmann::json fixture;
  std::ifstream(data / (GetParam() + ".json")) >> fixture;
  const NpyMatrix reference = read_npy_f32(data / (GetParam() + ".logits.npy"));

  // Rebuild the model exactly as the fixture was made.
  test::TempDir dir("conveyor-hf");
  std::string command =
      test::binary_path("conveyor-make-model").string() + " --out " + dir.path().string();
  for (const auto& arg : fixture["make_model_args"])
    command += fmt::format(" {}", arg.get<std::string>());
  std::string output;
  ASSERT_EQ(test::run_command(command, &output), 0) << output;
  std::ifstream weights(dir.path() / "model.safetensors", std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(weights)), {});
  ASSERT_EQ(fmt::format("{:016x}", fnv1a_64(bytes)),
            fixture["safetensors_fnv1a64"].get<std::string>())
      << "conveyor-make-model no longer writes the weights the fixture was made from; "
         "regenerate tests/data with tests/reference/hf_reference.py";

  Request request;
  request.prompt = fixture["prompt"].get<std::vector<int32_t>>();
  const auto expected_tokens = fixture["greedy_tokens"].get<std::vector<int32_t>>();
  request.max_new_tokens = static_cast<int64_t>(expected_tokens.size());
  request.stop_at_eos = false;

  for (int stages : {1, 2, 4}) {
    SCOPED_TRACE(fmt::format("{} stages", stages));
    Engine engine = Engine::open(
        dir.path(),
        {.n_stages = stages,
         .schedule = {.prefill_micro_batches = 2,
                      .chunking = stages == 4 ? Chunking::fixed(3) : Chunking::never()}});
    ASSERT_EQ(architecture_name(engine.config().architecture),
              fixture["architecture"].get<std::string>());
    GenerateResult result = engine.generate({request}, {.return_logits = true, .all_logits = true});
    const RequestResult& got = result.requests[0];
    EXPECT_EQ(got.tokens, expected_tokens);
    ASSERT_EQ(got.logits_rows, reference.rows);
    ASSERT_EQ(engine.config().vocab_size, reference.cols);
    double worst = 0.0;
    for (int64_t row = 0; row < reference.rows; ++row) {
      const size_t offset = static_cast<size_t>(row * reference.cols);
      const double error = test::max_relative_error(
          std::span<const float>(got.logits).subspan(offset, static_cast<size_t>(reference.cols)),
          std::span<const float>(reference.data)
              .subspan(offset, static_cast<size_t>(reference.cols)));
      EXPECT_LE(error, 1e-4) << "row " << row;
      worst = std::max(worst, error);
    }
    RecordProperty(fmt::format("worst_row_error_s{}", stages), fmt::format("{:.3g}", worst));
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, HfReference, ::testing::ValuesIn(fixture_names()),
                         [](const auto& info) { return info.param; });

TEST(HfReferenceFixtures, AllThreeArePresent) {
  const auto names = fixture_names();
  for (const char* name : {"tiny_llama_gqa", "tiny_llama_tied_llama3", "tiny_qwen2_bias"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), name), names.end()) << name;
  }
}

}  // namespace
}  // namespace conveyor
