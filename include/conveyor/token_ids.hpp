// Parsing of token-id lists as users type them ("1,2,3" or "1 2 3") and files of them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string_view>
#include <vector>

namespace conveyor {

// Parses integers separated by commas and/or whitespace. `what` names the source in errors
// ("--prompt-ids"). Throws conveyor::Error(kInvalidArgument) naming the offending item and its
// index for anything that is not a decimal integer in int32 range.
std::vector<int32_t> parse_token_ids(std::string_view text, std::string_view what);

// One prompt per non-empty line; lines starting with '#' are comments.
std::vector<std::vector<int32_t>> read_token_ids_file(const std::filesystem::path& path);

}  // namespace conveyor
