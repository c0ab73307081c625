// StopStrings: ends generated text at the first of the client's stop strings while it streams.
// Text that could be the start of a stop string is held back until the next piece decides.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace conveyor::serve {

class StopStrings {
 public:
  explicit StopStrings(std::vector<std::string> stops);

  // Appends newly decoded text (whole UTF-8 characters) and returns what may be shown now: all
  // of it except a tail that a stop string might begin with; on a match, the text before the
  // stop string (the stop string and everything after it are dropped) and stopped() is true.
  std::string push(std::string_view text);
  // The held-back tail, at the end of generation (empty after a match).
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace conveyor::serve
