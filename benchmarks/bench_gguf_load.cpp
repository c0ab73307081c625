// GGUF load throughput: seconds and GB/s of dequantized fp32 output for the SmolLM2 Q4_1 file
// (when fetched) and for an 8B-shaped (Llama-3-8B) file of random Q4_K_M-style blocks written by
// GgufWriter (Q4_K matrices, Q6_K for attn_v, ffn_down and the output head). Every tensor of the
// model is loaded through the Checkpoint's TensorSource — what each pipeline stage does for its
// own layers — with the file in the page cache (it was just written or read). Engine::open of
// SmolLM2 on 1 and 2 stages is timed as well. Prints a table and writes JSON.
//   bench_gguf_load [--smollm2 FILE] [--eight-b FILE] [--json OUT] [--keep]
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "conveyor/checkpoint.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/error.hpp"
#include "core/dtype_convert.hpp"
#include "core/random_bits.hpp"
#include "model/ggml_quants.hpp"
#include "model/gguf_model.hpp"
#include "model/gguf_writer.hpp"
#include "model/weights.hpp"

namespace {

using namespace conveyor;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct LoadFigures {
  double open_s = 0;
  double load_s = 0;
  uint64_t file_bytes = 0;
  uint64_t read_bytes = 0;
  uint64_t out_bytes = 0;
  std::string description;
};

// Opens `path` and loads every tensor of the model once (the tied head is the embedding).
LoadFigures load_all(const std::filesystem::path& path) {
  LoadFigures f;
  auto t0 = Clock::now();
  const Checkpoint checkpoint = Checkpoint::open(path);
  f.open_s = since(t0);
  f.file_bytes = checkpoint.file_bytes;
  f.description = checkpoint.description;
  const ModelConfig& c = checkpoint.config;
  const StageWeightsSpec whole{
      .first_layer = 0, .last_layer = c.n_layers, .embedding = true, .head = true};
  t0 = Clock::now();
  for (const std::string& name : required_tensor_names(c, whole)) {
    const std::vector<float> values = checkpoint.tensors->load_f32(name, tensor_shape(c, name));
    f.out_bytes += values.size() * sizeof(float);
  }
  f.load_s = since(t0);
  f.read_bytes = checkpoint.tensors->bytes_read();
  return f;
}

// Random blocks of a quantized type whose scales are small finite halves (as a real file's).
std::vector<std::byte> random_blocks(uint32_t type, int64_t numel, uint64_t key) {
  const GgmlTypeTraits* t = ggml_type_traits(type);
  const int64_t blocks = numel / t->block_elems;
  std::vector<std::byte> out(static_cast<size_t>(blocks * t->block_bytes));
  for (size_t i = 0; i + 8 <= out.size(); i += 8) {
    const uint64_t bits = splitmix64(key + i);
    std::memcpy(out.data() + i, &bits, 8);
  }
  const uint16_t d = f32_to_f16(0.002f);
  for (int64_t b = 0; b < blocks; ++b) {
    std::byte* block = out.data() + b * t->block_bytes;
    if (type == static_cast<uint32_t>(GgmlType::kQ6_K)) {
      std::memcpy(block + 208, &d, 2);
    } else {  // Q4_K/Q5_K: d and dmin; Q4_0/Q8_0: d first
      std::memcpy(block, &d, 2);
      if (type == static_cast<uint32_t>(GgmlType::kQ4_K)) std::memcpy(block + 2, &d, 2);
    }
  }
  return out;
}

class Zeros final : public TensorSource {
 public:
  bool contains(std::string_view) const override { return true; }
  std::vector<float> load_f32(std::string_view, std::span<const int64_t> shape) const override {
    int64_t n = 1;
    for (int64_t d : shape)
      n *= d;
    return std::vector<float>(static_cast<size_t>(n));
  }
  std::optional<StoredTensor> stored(std::string_view, std::span<const int64_t>,
                                     DType) const override {
    return std::nullopt;  // nothing is stored anywhere
  }
  uint64_t bytes_read() const override { return 0; }
};

// Writes the Llama-3-8B shape as a GGUF of random Q4_K_M-style blocks.
uint64_t write_eight_b(const std::filesystem::path& path) {
  const ModelConfig config =
      ModelConfig::load(std::filesystem::path(CONVEYOR_SOURCE_DIR) / "configs" / "llama-3-8b.json");
  const Zeros zeros;
  GgufWriter w = gguf_model_writer(config, zeros, {.name = "random 8B-shaped test file"});
  const StageWeightsSpec whole{
      .first_layer = 0, .last_layer = config.n_layers, .embedding = true, .head = true};
  uint64_t key = 1;
  for (const std::string& hf : required_tensor_names(config, whole)) {
    const std::vector<int64_t> shape = tensor_shape(config, hf);
    if (shape.size() != 2) continue;  // norms stay F32 zeros
    const std::string gguf = *gguf_tensor_name(hf);
    const bool six = hf.find("v_proj") != std::string::npos ||
                     hf.find("down_proj") != std::string::npos || hf == "lm_head.weight";
    const uint32_t type = static_cast<uint32_t>(six ? GgmlType::kQ6_K : GgmlType::kQ4_K);
    w.erase_tensor(gguf);
    const int64_t numel = shape[0] * shape[1];
    const uint64_t k = key++;
    w.add_tensor(gguf, type, {shape[1], shape[0]}, [type, numel, k] {
      return random_blocks(type, numel, k * 0x9e3779b97f4a7c15ull);
    });
  }
  return w.write(path);
}

}  // namespace

int main(int argc, char** argv) {
  std::filesystem::path smollm2 =
      std::filesystem::path(std::getenv("HOME") ? std::getenv("HOME") : "/tmp") / ".cache" /
      "conveyor" / "SmolLM2-135M-Instruct.Q4_1.gguf";
  std::filesystem::path eight_b = std::filesystem::temp_directory_path() / "conveyor-bench-8b.gguf";
  std::string json_out = "bench_gguf_load.json";
  bool keep = false;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--keep") keep = true;
    if (i + 1 < argc && flag == "--smollm2")
      smollm2 = argv[++i];
    else if (i + 1 < argc && flag == "--eight-b")
      eight_b = argv[++i];
    else if (i + 1 < argc && flag == "--json")
      json_out = argv[++i];
  }
  try {
    nlohmann::json out = nlohmann::json::array();
    fmt::print(
        "| file | tensors | file GB | fp32 out GB | open s | load s | out GB/s | in GB/s |\n"
        "|---|---|---|---|---|---|---|---|\n");
    auto report = [&](const std::string& name, const LoadFigures& f) {
      const double out_gbs = static_cast<double>(f.out_bytes) / 1e9 / f.load_s;
      const double in_gbs = static_cast<double>(f.read_bytes) / 1e9 / f.load_s;
      fmt::print("| {} | {} | {:.3f} | {:.3f} | {:.3f} | {:.2f} | {:.2f} | {:.2f} |\n", name,
                 f.description, static_cast<double>(f.file_bytes) / 1e9,
                 static_cast<double>(f.out_bytes) / 1e9, f.open_s, f.load_s, out_gbs, in_gbs);
      out.push_back({{"file", name},
                     {"description", f.description},
                     {"file_bytes", f.file_bytes},
                     {"read_bytes", f.read_bytes},
                     {"fp32_bytes", f.out_bytes},
                     {"open_s", f.open_s},
                     {"load_s", f.load_s},
                     {"out_gb_per_s", out_gbs},
                     {"in_gb_per_s", in_gbs}});
    };
    if (std::filesystem::exists(smollm2)) {
      load_all(smollm2);  // warm the page cache
      report("SmolLM2-135M Q4_1", load_all(smollm2));
      for (int stages : {1, 2}) {
        const auto t0 = Clock::now();
        Engine engine = Engine::open(smollm2, EngineOptions{.n_stages = stages});
        const double s = since(t0);
        fmt::print("Engine::open SmolLM2, {} stage(s): {:.3f} s ({:.2f} GB/s of fp32 weights)\n",
                   stages, s, static_cast<double>(engine.load_stats().weight_bytes) / 1e9 / s);
        out.push_back({{"engine_open_stages", stages},
                       {"seconds", s},
                       {"weight_bytes", engine.load_stats().weight_bytes}});
      }
    } else {
      fmt::print("(SmolLM2 not fetched: scripts/fetch-assets.sh smollm2)\n");
    }
    if (!std::filesystem::exists(eight_b)) {
      const auto t0 = Clock::now();
      const uint64_t bytes = write_eight_b(eight_b);
      fmt::print("wrote {} ({:.2f} GB) in {:.1f} s\n", eight_b.string(),
                 static_cast<double>(bytes) / 1e9, since(t0));
    }
    report("Llama-3-8B shape, random Q4_K_M-style", load_all(eight_b));
    if (!keep) std::filesystem::remove(eight_b);
    std::ofstream(json_out) << out.dump(2) << "\n";
    fmt::print("wrote {}\n", json_out);
  } catch (const Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
