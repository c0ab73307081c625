// Shared test helpers: temporary directories, relative error norms, models made on the fly.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "conveyor/engine.hpp"
#include "conveyor/error.hpp"

namespace conveyor::test {

// A fresh directory under the system temp dir, removed at destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "conveyor-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// ||a - b|| / ||b|| (L2); infinity when sizes differ or any value is NaN.
double relative_error(std::span<const float> a, std::span<const float> b);
// max |a - b| / max |b|.
double max_relative_error(std::span<const float> a, std::span<const float> b);

// Path of a binary built in this build tree, e.g. binary_path("conveyor-make-model").
std::filesystem::path binary_path(const std::string& name);

// Writes the `tiny` preset with `n_layers` layers (and the given seed) into `dir`.
void make_tiny_model(const std::filesystem::path& dir, int64_t n_layers, uint64_t seed = 5);

// The message of the conveyor::Error that `fn` throws, or "<no error>".
std::string error_of(const std::function<void()>& fn);

// Runs f and expects a conveyor::Error with `code` whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, ErrorCode code, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    const std::string message = e.what();
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos)
          << "message lacks '" << part << "': " << message;
    }
    return;
  }
  ADD_FAILURE() << "no conveyor::Error thrown";
}

template <typename F>
void expect_invalid(F&& f, const std::vector<std::string>& parts) {
  expect_error(std::forward<F>(f), ErrorCode::kInvalidArgument, parts);
}

// Three greedy requests with prompts of 5, 17 and 9 tokens (mixed lengths on purpose), each
// generating `max_new_tokens` without stopping at EOS.
std::vector<Request> mixed_requests(int64_t max_new_tokens = 6);

// A file fetched by scripts/fetch-assets.sh into $CONVEYOR_CACHE (default ~/.cache/conveyor),
// e.g. asset_path("SmolLM2-135M-Instruct.Q4_1.gguf"); nullopt when it is not there.
std::optional<std::filesystem::path> asset_path(const std::string& relative);
// The reason a test skips when asset_path(relative) is missing: which fetch command to run.
std::string missing_asset_reason(const std::string& relative, const std::string& fetch_name);

// Runs a shell command, returns its exit status and captures stdout+stderr into `output`.
int run_command(const std::string& command, std::string* output = nullptr);

}  // namespace conveyor::test
