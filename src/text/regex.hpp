// Regex: a PCRE2 pattern compiled in UTF + UCP mode (\p{L}, \p{N}, look-around, (?i:...)) with
// JIT where available, for the tokenizers' pre-tokenizer splits.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace conveyor::text {

// Immutable after construction; thread-safe (each match uses its own match data).
class Regex {
 public:
  // Throws conveyor::Error(kModelFormat) naming the pattern, PCRE2's message and the offset.
  explicit Regex(std::string_view pattern);
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  ~Regex();

  const std::string& pattern() const { return pattern_; }

  // Byte ranges [begin, end) of the non-empty, non-overlapping matches in `text` (valid UTF-8),
  // left to right, appended to `out`. An empty match advances the search by one character.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  struct Code;
  std::string pattern_;
  std::unique_ptr<Code> code_;
};

}  // namespace conveyor::text
