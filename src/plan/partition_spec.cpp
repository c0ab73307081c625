// The partition spellings users write: counts "5,6,6,7", layout strings
// "emb,0-4|5-10|11-16|17-23,head", and the spec that picks between them and "even".
#include <fmt/format.h>

#include <charconv>

#include "conveyor/partition.hpp"
#include "core/check.hpp"
#include "core/strings.hpp"

namespace conveyor {
namespace {

int64_t parse_int(std::string_view text, std::string_view what, std::string_view whole) {
  int64_t value = 0;
  const auto* begin = text.data();
  const auto* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(begin, end, value);
  if (ec != std::errc() || ptr != end || text.empty()) {
    fail(ErrorCode::kInvalidArgument,
         "layout \"{}\": \"{}\" is not a {}; write stages like \"emb,0-7|8-15|16-23|24-31,head\"",
         whole, text, what);
  }
  return value;
}

}  // namespace

Partition Partition::parse(std::string_view text, int64_t n_layers) {
  std::vector<int64_t> counts;
  size_t index = 0;
  std::string_view rest = text;
  for (;;) {
    const size_t comma = rest.find(',');
    const std::string_view token = trim(rest.substr(0, comma));
    int64_t value = 0;
    const char* end = token.data() + token.size();
    const auto [ptr, ec] = std::from_chars(token.data(), end, value);
    if (token.empty() || ec != std::errc() || ptr != end) {
      fail(ErrorCode::kInvalidArgument,
           "partition '{}': token {} ('{}') is not a layer count; write one integer per stage "
           "separated by commas, e.g. \"5,6,6,7\"",
           text, index, token);
    }
    counts.push_back(value);
    ++index;
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return from_counts(n_layers, counts);
}

Partition parse_layout(std::string_view text, int64_t n_layers) {
  const std::vector<std::string_view> stage_texts = split(text, '|');
  const int n_stages = static_cast<int>(stage_texts.size());
  std::vector<int64_t> counts;
  int64_t next = 0;
  for (int s = 0; s < n_stages; ++s) {
    int64_t count = 0;
    const std::vector<std::string_view> items = split(stage_texts[static_cast<size_t>(s)], ',');
    for (size_t k = 0; k < items.size(); ++k) {
      const std::string_view item = trim(items[k]);
      if (item == "emb" || item == "embedding") {
        if (s != 0 || k != 0) {
          fail(ErrorCode::kInvalidArgument,
               "layout \"{}\" puts the embedding on stage {} (item {}), but the runtime embeds "
               "the tokens on stage 0 before its first layer; write \"emb\" first in the first "
               "stage or leave it out",
               text, s, k);
        }
        continue;
      }
      if (item == "head" || item == "lm_head") {
        if (s != n_stages - 1 || k != items.size() - 1) {
          fail(ErrorCode::kInvalidArgument,
               "layout \"{}\" puts the lm_head on stage {} of {}, but the runtime runs the final "
               "norm + lm_head after the last layer on the last stage; write \"head\" last in "
               "the last stage or leave it out",
               text, s, n_stages);
        }
        continue;
      }
      if (item.empty()) {
        fail(ErrorCode::kInvalidArgument,
             "layout \"{}\": stage {} has an empty item; write stages like "
             "\"emb,0-7|8-15|16-23|24-31,head\"",
             text, s);
      }
      const size_t dash = item.find('-');
      const int64_t first = parse_int(trim(item.substr(0, dash)), "layer number", text);
      const int64_t last = dash == std::string_view::npos
                               ? first
                               : parse_int(trim(item.substr(dash + 1)), "layer number", text);
      if (last < first) {
        fail(ErrorCode::kInvalidArgument,
             "layout \"{}\": range {}-{} on stage {} runs backwards; write the lower layer first",
             text, first, last, s);
      }
      if (first != next) {
        fail(ErrorCode::kInvalidArgument,
             "layout \"{}\": stage {} continues at layer {} but the next layer is {}; stages must "
             "hold contiguous layers in order with none skipped or repeated",
             text, s, first, next);
      }
      if (last >= n_layers) {
        fail(ErrorCode::kInvalidArgument,
             "layout \"{}\": layer {} on stage {} does not exist; the model has layers 0-{}", text,
             last, s, n_layers - 1);
      }
      count += last - first + 1;
      next = last + 1;
    }
    if (count == 0) {
      fail(ErrorCode::kInvalidArgument,
           "layout \"{}\": stage {} has no decoder layer; every stage needs at least one (the "
           "embedding and lm_head ride along with the first and last stage's layers)",
           text, s);
    }
    counts.push_back(count);
  }
  if (next != n_layers) {
    fail(ErrorCode::kInvalidArgument,
         "layout \"{}\" covers layers 0-{} but the model has {} layers; assign layers {}-{} too",
         text, next - 1, n_layers, next, n_layers - 1);
  }
  return Partition::from_counts(n_layers, counts);
}

std::string to_layout(const Partition& partition) {
  std::string out;
  for (int s = 0; s < partition.n_stages(); ++s) {
    const LayerRange& r = partition.range(s);
    if (s > 0) out += "|";
    if (s == 0) out += "emb,";
    out += r.size() == 1 ? fmt::format("{}", r.first) : fmt::format("{}-{}", r.first, r.last - 1);
    if (s == partition.n_stages() - 1) out += ",head";
  }
  return out;
}

Partition parse_partition_spec(std::string_view text, int64_t n_layers, int n_stages) {
  text = trim(text);
  Partition p = Partition::even(1, 1);
  if (text == "even") {
    if (n_stages < 1) {
      fail(ErrorCode::kInvalidArgument, "\"even\" needs the number of stages; pass --stages");
    }
    p = Partition::even(n_layers, n_stages);
  } else if (text.find('|') != std::string_view::npos ||
             text.find("emb") != std::string_view::npos ||
             text.find("head") != std::string_view::npos ||
             text.find('-') != std::string_view::npos) {
    p = parse_layout(text, n_layers);
  } else {
    p = Partition::parse(text, n_layers);
  }
  if (n_stages > 0 && p.n_stages() != n_stages) {
    fail(ErrorCode::kInvalidArgument,
         "partition \"{}\" has {} stages but {} were asked for; give one entry per stage", text,
         p.n_stages(), n_stages);
  }
  return p;
}

}  // namespace conveyor
