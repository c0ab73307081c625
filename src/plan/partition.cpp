// Partition factories (even, explicit counts), their validation and printing; spellings are parsed
// in partition_spec.cpp.
#include "conveyor/partition.hpp"

#include <algorithm>
#include <charconv>
#include <iterator>

#include <fmt/ranges.h>

#include "core/check.hpp"

namespace conveyor {

namespace {

void check_shape(int64_t n_layers, int64_t n_stages) {
  if (n_stages < 1) {
    fail(ErrorCode::kInvalidArgument,
         "a partition needs at least 1 stage but got n_stages = {}; use n_stages >= 1", n_stages);
  }
  if (n_layers < 1) {
    fail(ErrorCode::kInvalidArgument,
         "a partition needs at least 1 layer but got n_layers = {}; check the model config",
         n_layers);
  }
  if (n_stages > n_layers) {
    fail(ErrorCode::kInvalidArgument,
         "{} stages for {} layers would leave a stage without layers; use at most {} stages",
         n_stages, n_layers, n_layers);
  }
}

}  // namespace

Partition Partition::even(int64_t n_layers, int n_stages) {
  check_shape(n_layers, n_stages);
  const int64_t base = n_layers / n_stages;
  const int64_t extra = n_layers % n_stages;  // < n_stages: the last stage never gets one
  std::vector<int64_t> counts(static_cast<size_t>(n_stages), base);
  for (int64_t s = 0; s < extra; ++s)
    ++counts[static_cast<size_t>(s)];
  return from_counts(n_layers, counts);
}

Partition Partition::from_counts(int64_t n_layers, const std::vector<int64_t>& counts) {
  check_shape(n_layers, static_cast<int64_t>(counts.size()));
  std::vector<LayerRange> ranges;
  ranges.reserve(counts.size());
  int64_t first = 0;
  for (size_t s = 0; s < counts.size(); ++s) {
    if (counts[s] < 1) {
      fail(ErrorCode::kInvalidArgument,
           "stage {} of partition '{}' has {} layers; every stage needs at least 1 layer", s,
           fmt::join(counts, ","), counts[s]);
    }
    ranges.push_back(LayerRange{first, first + counts[s]});
    first += counts[s];
  }
  if (first != n_layers) {
    fail(ErrorCode::kInvalidArgument,
         "partition '{}' sums to {} layers but the model has n_layers = {}; make the counts sum "
         "to {}",
         fmt::join(counts, ","), first, n_layers, n_layers);
  }
  return Partition(n_layers, std::move(ranges));
}

const LayerRange& Partition::range(int stage) const {
  if (stage < 0 || stage >= n_stages()) {
    fail(ErrorCode::kInvalidArgument, "stage {} is outside the partition's stages [0, {})", stage,
         n_stages());
  }
  return ranges_[static_cast<size_t>(stage)];
}

int Partition::stage_of(int64_t layer) const {
  if (layer < 0 || layer >= n_layers_) {
    fail(ErrorCode::kInvalidArgument, "layer {} is outside the model's layers [0, {})", layer,
         n_layers_);
  }
  // The first range whose end lies past `layer` owns it.
  const auto it = std::upper_bound(ranges_.begin(), ranges_.end(), layer,
                                   [](int64_t l, const LayerRange& r) { return l < r.last; });
  return static_cast<int>(it - ranges_.begin());
}

std::vector<int64_t> Partition::counts() const {
  std::vector<int64_t> counts;
  counts.reserve(ranges_.size());
  for (const LayerRange& r : ranges_)
    counts.push_back(r.size());
  return counts;
}

std::string Partition::to_string() const {
  return fmt::format("{}", fmt::join(counts(), ","));
}

std::string Partition::describe() const {
  std::string out;
  for (int s = 0; s < n_stages(); ++s) {
    const LayerRange& r = ranges_[static_cast<size_t>(s)];
    fmt::format_to(std::back_inserter(out), "stage {}: layers [{},{}) ({}){}{}\n", s, r.first,
                   r.last, r.size(), has_embedding(s) ? " + embedding" : "",
                   has_head(s) ? " + final norm, lm_head" : "");
  }
  return out;
}

}  // namespace conveyor
