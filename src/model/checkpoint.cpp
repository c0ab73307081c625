// Checkpoint: resolving a --model path and opening it as a config plus fp32 tensors by Hugging
// Face name, from safetensors or GGUF.
#include "conveyor/checkpoint.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <map>
#include <system_error>
#include <vector>

#include "conveyor/gguf.hpp"
#include "conveyor/safetensors.hpp"
#include "core/check.hpp"
#include "model/gguf_model.hpp"

namespace conveyor {
namespace {

bool is_gguf_name(const std::filesystem::path& path) {
  return path.extension() == ".gguf";
}

}  // namespace

ModelLocation locate_model(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec)) {
    if (is_gguf_name(path)) return {CheckpointFormat::kGguf, path};
    fail(ErrorCode::kInvalidArgument,
         "model {} is a file but not a .gguf file; pass a .gguf file or a model directory with "
         "config.json and *.safetensors (a bare config.json needs --random-weights)",
         path.string());
  }
  if (!std::filesystem::is_directory(path, ec)) {
    fail(ErrorCode::kInvalidArgument,
         "model {} does not exist; pass a .gguf file or a directory with config.json and "
         "*.safetensors (scripts/fetch-assets.sh smollm2 fetches a small real model)",
         path.string());
  }
  if (std::filesystem::exists(path / "config.json", ec)) {
    return {CheckpointFormat::kSafetensors, path};
  }
  std::vector<std::filesystem::path> ggufs;
  for (const auto& entry : std::filesystem::directory_iterator(path, ec)) {
    if (entry.is_regular_file() && is_gguf_name(entry.path())) ggufs.push_back(entry.path());
  }
  std::sort(ggufs.begin(), ggufs.end());
  if (ggufs.size() == 1) return {CheckpointFormat::kGguf, ggufs.front()};
  if (ggufs.empty()) {
    fail(ErrorCode::kInvalidArgument,
         "model directory {} holds neither config.json (a Hugging Face model) nor a .gguf file; "
         "check --model",
         path.string());
  }
  std::vector<std::string> names;
  for (const auto& p : ggufs)
    names.push_back(p.filename().string());
  fail(ErrorCode::kInvalidArgument,
       "model directory {} holds {} .gguf files ({}); pass the one to run as --model",
       path.string(), ggufs.size(), fmt::join(names, ", "));
}

Checkpoint Checkpoint::open(const std::filesystem::path& path) {
  Checkpoint checkpoint;
  checkpoint.location = locate_model(path);
  const std::filesystem::path& where = checkpoint.location.path;
  if (checkpoint.location.format == CheckpointFormat::kGguf) {
    auto file = std::make_shared<GgufFile>(GgufFile::open(where));
    checkpoint.config = ModelConfig::from_gguf(*file);
    check_gguf_tensors(*file, checkpoint.config);
    checkpoint.description = describe_gguf(*file);
    checkpoint.file_bytes = file->file_size();
    checkpoint.tensors = make_gguf_tensors(std::move(file), checkpoint.config);
    return checkpoint;
  }
  checkpoint.config = ModelConfig::load(where);
  auto tensors = std::make_unique<SafeTensors>(SafeTensors::open(where));
  std::error_code ec;
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(where, ec)) {
    if (entry.is_regular_file() && entry.path().extension() == ".safetensors") {
      checkpoint.file_bytes += entry.file_size(ec);
      ++files;
    }
  }
  checkpoint.description = fmt::format("safetensors, {} file{}, {}", files, files == 1 ? "" : "s",
                                       dtype_name(checkpoint.config.torch_dtype));
  checkpoint.tensors = std::move(tensors);
  return checkpoint;
}

}  // namespace conveyor
