// Small string helpers shared by the parsers of user-written lists and specs.
#pragma once

#include <string_view>
#include <vector>

namespace conveyor {

// `s` without leading and trailing ASCII whitespace (space, tab, CR, LF, VT, FF).
std::string_view trim(std::string_view s) noexcept;

// The parts of `s` between `separator`s, empty parts included ("a,,b" -> "a", "", "b").
std::vector<std::string_view> split(std::string_view s, char separator);

}  // namespace conveyor
