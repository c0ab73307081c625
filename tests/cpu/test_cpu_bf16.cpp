// bf16 weights on the CPU backend (--dtype bf16): with weights that bf16 holds exactly, the same
// results as fp32 (only the storage changes); with fp32 weights, within the rounding bound below;
// half the weight memory; dtypes the CPU does not compute with are refused.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "common/test_util.hpp"
#include "conveyor/engine.hpp"
#include "model/make_model.hpp"

namespace conveyor {
namespace {

std::vector<Request> requests() {
  std::vector<Request> reqs = test::mixed_requests(5);
  reqs[1].sampling = {.temperature = 0.7, .top_k = 30, .seed = 4};
  return reqs;
}

GenerateResult run(const std::filesystem::path& dir, std::optional<DType> dtype, int stages) {
  EngineOptions options{.n_stages = stages};
  options.device.dtype = dtype;
  Engine engine = Engine::open(dir, options);
  return engine.generate(requests(), {.return_logits = true, .all_logits = true});
}

// The model's weights are bf16 on disk, so bf16 storage loses nothing: fp32 and bf16 runs differ
// only in how the kernels widen the same values — not at all where they share a kernel.
TEST(CpuBf16, WeightsBf16HoldsExactlyGiveTheFp32Results) {
  test::TempDir dir("conveyor-bf16");
  MakeModelOptions options;
  options.config = preset_config("tiny");
  options.dtype = DType::kBF16;
  options.seed = 12;
  options.out_dir = dir.path();
  make_model(options);
  const GenerateResult fp32 = run(dir.path(), std::nullopt, 1);
  for (int stages : {1, 2}) {
    const GenerateResult bf16 = run(dir.path(), DType::kBF16, stages);
    for (size_t r = 0; r < fp32.requests.size(); ++r) {
      SCOPED_TRACE(fmt::format("S={} request {}", stages, r));
      EXPECT_EQ(bf16.requests[r].tokens, fp32.requests[r].tokens);
      EXPECT_LE(test::max_relative_error(bf16.requests[r].logits, fp32.requests[r].logits), 1e-5);
    }
  }
}

// fp32 weights rounded to bf16 (8 significant bits, relative error <= 2^-9 per weight): the
// logits move by a few parts per thousand of their range on this model. The bound used: max
// |bf16 - fp32| / max |fp32| <= 2e-2 per request.
TEST(CpuBf16, Fp32WeightsStayWithinTheRoundingBoundAndTakeHalfTheMemory) {
  test::TempDir dir("conveyor-bf16-f32");
  test::make_tiny_model(dir.path(), 4, 19);
  const GenerateResult fp32 = run(dir.path(), std::nullopt, 1);
  const GenerateResult bf16 = run(dir.path(), DType::kBF16, 1);
  for (size_t r = 0; r < fp32.requests.size(); ++r) {
    const double err = test::max_relative_error(bf16.requests[r].logits, fp32.requests[r].logits);
    EXPECT_LE(err, 2e-2) << "request " << r;
    EXPECT_GT(err, 0.0) << "request " << r << ": bf16 rounding changed nothing";
  }
  Engine f = Engine::open(dir.path(), {});
  EngineOptions half;
  half.device.dtype = DType::kBF16;
  Engine b = Engine::open(dir.path(), half);
  auto mib = [](const std::string& report) {
    const size_t at = report.find("weights ");
    return std::stod(report.substr(at + 8));
  };
  const double f_mib = mib(f.stage_reports()[0]);
  const double b_mib = mib(b.stage_reports()[0]);
  EXPECT_NE(b.stage_reports()[0].find("bf16"), std::string::npos) << b.stage_reports()[0];
  // Norms stay fp32: a little over half.
  EXPECT_LT(b_mib, 0.52 * f_mib) << f.stage_reports()[0] << "\n" << b.stage_reports()[0];
  EXPECT_GT(b_mib, 0.49 * f_mib);
}

TEST(CpuBf16, DtypesTheCpuDoesNotComputeWithAreRefused) {
  test::TempDir dir("conveyor-bf16-refuse");
  test::make_tiny_model(dir.path(), 2);
  EngineOptions options;
  options.device.dtype = DType::kF16;
  test::expect_invalid([&] { Engine::open(dir.path(), options); },
                       {"dtype f16", "cpu backend", "f32 or bf16"});
}

}  // namespace
}  // namespace conveyor
