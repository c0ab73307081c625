// Shared test helpers.
#include "common/test_util.hpp"

#include "model/make_model.hpp"

#include <fmt/format.h>

#include <sys/wait.h>
#include <unistd.h>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>

namespace conveyor::test {

TempDir::TempDir(const std::string& prefix) {
  static std::atomic<int> counter{0};
  path_ = std::filesystem::temp_directory_path() /
          (prefix + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
           std::to_string(std::random_device{}()));
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

double relative_error(std::span<const float> a, std::span<const float> b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double diff = 0.0, ref = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return std::numeric_limits<double>::infinity();
    diff += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    ref += static_cast<double>(b[i]) * b[i];
  }
  return ref == 0.0 ? std::sqrt(diff) : std::sqrt(diff / ref);
}

double max_relative_error(std::span<const float> a, std::span<const float> b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double diff = 0.0, ref = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    ref = std::max(ref, std::abs(static_cast<double>(b[i])));
  }
  return ref == 0.0 ? diff : diff / ref;
}

std::filesystem::path binary_path(const std::string& name) {
  return std::filesystem::path(CONVEYOR_BINARY_DIR) / "examples" / name;
}

void make_tiny_model(const std::filesystem::path& dir, int64_t n_layers, uint64_t seed) {
  MakeModelOptions options;
  options.config = preset_config("tiny");
  apply_overrides(options.config, ConfigOverrides{.n_layers = n_layers});
  options.seed = seed;
  options.out_dir = dir;
  make_model(options);
}

std::vector<Request> mixed_requests(int64_t max_new_tokens) {
  std::vector<Request> reqs(3);
  for (int i = 0; i < 5; ++i)
    reqs[0].prompt.push_back(3 + 7 * i);
  for (int i = 0; i < 17; ++i)
    reqs[1].prompt.push_back((11 * i + 5) % 500);
  for (int i = 0; i < 9; ++i)
    reqs[2].prompt.push_back(400 - 13 * i);
  for (Request& r : reqs) {
    r.max_new_tokens = max_new_tokens;
    r.stop_at_eos = false;
  }
  return reqs;
}

std::optional<std::filesystem::path> asset_path(const std::string& relative) {
  std::filesystem::path root;
  if (const char* cache = std::getenv("CONVEYOR_CACHE"); cache != nullptr && *cache != '\0') {
    root = cache;
  } else if (const char* home = std::getenv("HOME"); home != nullptr) {
    root = std::filesystem::path(home) / ".cache" / "conveyor";
  } else {
    return std::nullopt;
  }
  std::filesystem::path path = root / relative;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  return path;
}

std::string missing_asset_reason(const std::string& relative, const std::string& fetch_name) {
  return fmt::format(
      "{} is not in the asset cache ($CONVEYOR_CACHE or ~/.cache/conveyor); run "
      "scripts/fetch-assets.sh {} (needs PyPI)",
      relative, fetch_name);
}

int run_command(const std::string& command, std::string* output) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return -1;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) {
    if (output) output->append(buffer.data(), n);
  }
  const int status = ::pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace conveyor::test
