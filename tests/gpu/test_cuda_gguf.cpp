// The real model on the CUDA backend: SmolLM2-135M-Instruct Q4_1 (GGUF, dequantized at load and
// uploaded as bf16/f16) answers the chat prompt like the fp32 reference: top-1 of the first
// step within the reference's top-5 (its margin is only 0.08, so bf16 may flip it), logits
// within a 16-bit tolerance, and the greedy answer naming Paris. Skips without a device or the
// asset.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/test_util.hpp"
#include "conveyor/chat_template.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/tokenizer.hpp"
#include "gpu_test_util.hpp"
#include "observe/npy.hpp"

namespace conveyor {
namespace {

constexpr const char* kSmolLm2 = "SmolLM2-135M-Instruct.Q4_1.gguf";

TEST(CudaGguf, SmolLm2AnswersLikeTheFp32Reference) {
  CONVEYOR_REQUIRE_CUDA_DEVICE();
  const auto path = test::asset_path(kSmolLm2);
  if (!path) GTEST_SKIP() << test::missing_asset_reason(kSmolLm2, "smollm2");
  nlohmann::json fixture;
  std::ifstream(std::filesystem::path(CONVEYOR_TEST_DATA_DIR) / "smollm2_q4_1.json") >> fixture;
  const NpyMatrix reference =
      read_npy_f32(std::filesystem::path(CONVEYOR_TEST_DATA_DIR) / "smollm2_q4_1.logits.npy");
  const std::vector<float> first(reference.data.begin(), reference.data.begin() + reference.cols);
  std::vector<int32_t> top5(static_cast<size_t>(reference.cols));
  for (int32_t i = 0; i < reference.cols; ++i)
    top5[static_cast<size_t>(i)] = i;
  std::partial_sort(top5.begin(), top5.begin() + 5, top5.end(), [&](int32_t a, int32_t b) {
    return first[static_cast<size_t>(a)] > first[static_cast<size_t>(b)];
  });
  top5.resize(5);

  const Tokenizer tokenizer = Tokenizer::open(*path);
  const std::vector<int32_t> prompt = fixture["prompt_ids"].get<std::vector<int32_t>>();
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    for (int stages : {1, 2}) {
      SCOPED_TRACE(fmt::format("{} stages, {}", stages, dtype_name(dtype)));
      EngineOptions options{
          .n_stages = stages,
          .device = {.backend = BackendKind::kCuda,
                     .cuda_devices = std::vector<int>(static_cast<size_t>(stages), 0),
                     .dtype = dtype},
          .capacity = {.max_context = 256}};
      Engine engine = Engine::open(*path, options);
      Request request{.prompt = prompt,
                      .max_new_tokens = 24,
                      .stop_token_ids = tokenizer.end_of_generation_ids()};
      const GenerateResult result = engine.generate({request}, {.return_logits = true});
      const RequestResult& out = result.requests[0];
      ASSERT_GE(out.logits_rows, 1);
      const std::span<const float> got(out.logits.data(), static_cast<size_t>(reference.cols));
      EXPECT_LE(test::max_relative_error(got, first), 3e-2);
      EXPECT_NE(std::find(top5.begin(), top5.end(), out.tokens.front()), top5.end())
          << "first token " << out.tokens.front();
      const std::string answer = tokenizer.decode(out.tokens, {.skip_special = true});
      EXPECT_NE(answer.find("Paris"), std::string::npos) << answer;
    }
  }
}

}  // namespace
}  // namespace conveyor
