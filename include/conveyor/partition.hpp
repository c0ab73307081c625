// Partition: which contiguous decoder layers each pipeline stage owns. The embedding lives on
// stage 0, the final norm + lm_head on the last stage.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace conveyor {

// Decoder layers [first, last).
struct LayerRange {
  int64_t first = 0;
  int64_t last = 0;

  int64_t size() const { return last - first; }
  bool contains(int64_t layer) const { return layer >= first && layer < last; }
  bool operator==(const LayerRange&) const = default;
};

// An immutable assignment of n_layers decoder layers to n_stages stages: stage s owns
// range(s), the ranges are contiguous, in order, non-empty and cover [0, n_layers).
// Invariant checked by every factory: 1 <= n_stages <= n_layers.
//
// Factories: even(), from_counts()/parse() (explicit counts), parse_layout() and
// parse_partition_spec() below, and balanced_partition() (conveyor/partitioner.hpp: the
// contiguous min-max split over per-layer costs under memory limits). Consumers only read
// ranges.
class Partition {
 public:
  // Splits n_layers as evenly as possible. When n_layers % n_stages != 0 the extra layers go to
  // the FIRST stages, never to the last: the last stage also carries the final norm and the
  // lm_head, often the heaviest unit of the model. E.g. 10 layers over 4 stages -> 3,3,2,2.
  static Partition even(int64_t n_layers, int n_stages);

  // Explicit layer counts per stage, in stage order; they must be >= 1 each and sum to n_layers.
  static Partition from_counts(int64_t n_layers, const std::vector<int64_t>& counts);

  // Parses counts written as "5,6,6,7" (spaces around numbers are allowed), then from_counts.
  static Partition parse(std::string_view text, int64_t n_layers);

  int n_stages() const { return static_cast<int>(ranges_.size()); }
  int64_t n_layers() const { return n_layers_; }

  // Throws kInvalidArgument when stage is outside [0, n_stages).
  const LayerRange& range(int stage) const;
  const std::vector<LayerRange>& ranges() const { return ranges_; }
  // The stage owning `layer`; throws kInvalidArgument when layer is outside [0, n_layers).
  int stage_of(int64_t layer) const;

  bool has_embedding(int stage) const { return stage == 0; }
  bool has_head(int stage) const { return stage == n_stages() - 1; }

  std::vector<int64_t> counts() const;
  // The counts in the format parse() reads, e.g. "3,3,2,2".
  std::string to_string() const;
  // One line per stage: "stage 0: layers [0,3) (3) + embedding".
  std::string describe() const;

  bool operator==(const Partition&) const = default;

 private:
  Partition(int64_t n_layers, std::vector<LayerRange> ranges)
      : n_layers_(n_layers), ranges_(std::move(ranges)) {}

  int64_t n_layers_ = 0;
  std::vector<LayerRange> ranges_;
};

// Layout strings: stages separated by '|', each a comma list of decoder layer ranges "a-b"
// (inclusive) or single layers "a", plus the markers "emb" and "head":
//   "emb,0-7|8-15|16-23|24-31,head"
// The markers are optional, but where given they must be where the runtime runs those units
// (embedding first on stage 0, head last on the last stage); layers must be contiguous, in
// order, cover [0, n_layers), and every stage needs at least one. Throws kInvalidArgument
// naming the stage and the fix.
Partition parse_layout(std::string_view text, int64_t n_layers);
std::string to_layout(const Partition& partition);
// "even" (needs n_stages), counts "5,6,6,7", or a layout string; n_stages 0 means "any".
Partition parse_partition_spec(std::string_view text, int64_t n_layers, int n_stages);

}  // namespace conveyor
