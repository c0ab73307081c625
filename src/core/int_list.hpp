// Integer lists as users type them on command lines and in files: "1,2,3" or "1 2 3".
#pragma once

#include <cstdint>
#include <filesystem>
#include <string_view>
#include <vector>

namespace conveyor {

// Parses integers separated by commas and/or whitespace. `what` names the source in errors
// ("--devices") and `noun` an item ("device id"). An empty item ("1,,2", a trailing comma) or
// anything that is not a decimal integer in [min, max] is a conveyor::Error(kInvalidArgument)
// naming the item and its position. Empty or blank text gives an empty list.
std::vector<int64_t> parse_int_list(std::string_view text, std::string_view what,
                                    std::string_view noun, int64_t min = INT64_MIN,
                                    int64_t max = INT64_MAX);

// parse_int_list of token ids (int32 range; whether they are in the vocabulary is the engine's
// check).
std::vector<int32_t> parse_token_ids(std::string_view text, std::string_view what);

// One prompt of token ids per non-empty line; lines starting with '#' are comments.
std::vector<std::vector<int32_t>> read_token_ids_file(const std::filesystem::path& path);

}  // namespace conveyor
