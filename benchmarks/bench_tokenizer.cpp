// Tokenizer encoding throughput: conveyor's tokenizer on a text file (the ~1 MB mix that
// benchmarks/tokenizer_bench_hf.py writes), one thread, median of --runs after a warm-up; with
// --expect-ids it also checks every id against Hugging Face tokenizers' encoding of the same
// text. benchmarks/tokenizer_vs_hf.sh runs both and prints the ratio. Prints one JSON object.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "conveyor/error.hpp"
#include "conveyor/tokenizer.hpp"

int main(int argc, char** argv) {
  std::string model, text_path, ids_path;
  int runs = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--model") model = argv[i + 1];
    if (flag == "--text") text_path = argv[i + 1];
    if (flag == "--expect-ids") ids_path = argv[i + 1];
    if (flag == "--runs") runs = std::stoi(argv[i + 1]);
  }
  if (model.empty() || text_path.empty()) {
    fmt::print(stderr,
               "usage: bench_tokenizer --model GGUF|DIR --text FILE [--expect-ids FILE.json] "
               "[--runs N]\n");
    return 2;
  }
  try {
    const conveyor::Tokenizer tokenizer = conveyor::Tokenizer::open(model);
    std::ifstream in(text_path, std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    const std::string text = buffer.str();
    using Clock = std::chrono::steady_clock;
    std::vector<int32_t> ids = tokenizer.encode(text, {.add_special = false});  // warm-up
    std::vector<double> times;
    for (int r = 0; r < runs; ++r) {
      const auto t0 = Clock::now();
      ids = tokenizer.encode(text, {.add_special = false});
      times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::sort(times.begin(), times.end());
    const double median = times[times.size() / 2];
    nlohmann::json out = {{"benchmark", "tokenizer_encode_conveyor"},
                          {"tokenizer", tokenizer.description()},
                          {"threads", 1},
                          {"bytes", text.size()},
                          {"tokens", ids.size()},
                          {"runs_s", times},
                          {"median_s", median},
                          {"mb_per_s", static_cast<double>(text.size()) / 1e6 / median}};
    if (!ids_path.empty()) {
      nlohmann::json expected;
      std::ifstream(ids_path) >> expected;
      const auto want = expected.get<std::vector<int32_t>>();
      size_t first_difference = 0;
      while (first_difference < std::min(want.size(), ids.size()) &&
             want[first_difference] == ids[first_difference]) {
        ++first_difference;
      }
      out["ids_equal_to_reference"] = want == ids;
      if (want != ids) out["first_difference_at"] = first_difference;
    }
    std::cout << out.dump() << "\n";
    return out.value("ids_equal_to_reference", true) ? 0 : 1;
  } catch (const conveyor::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}
