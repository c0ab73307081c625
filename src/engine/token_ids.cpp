// Token-id list parsing for the binaries.
#include "conveyor/token_ids.hpp"

#include <charconv>
#include <fstream>
#include <string>

#include "core/check.hpp"

namespace conveyor {

std::vector<int32_t> parse_token_ids(std::string_view text, std::string_view what) {
  std::vector<int32_t> ids;
  size_t i = 0;
  auto is_separator = [](char c) { return c == ',' || c == ' ' || c == '\t' || c == '\r'; };
  while (i < text.size()) {
    while (i < text.size() && is_separator(text[i]))
      ++i;
    if (i == text.size()) break;
    size_t j = i;
    while (j < text.size() && !is_separator(text[j]))
      ++j;
    const std::string_view item = text.substr(i, j - i);
    int64_t value = 0;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
    if (ec != std::errc() || end != item.data() + item.size() || value < INT32_MIN ||
        value > INT32_MAX) {
      fail(ErrorCode::kInvalidArgument,
           "{}: '{}' (item {}) is not a token id; expected integers separated by commas, like "
           "1,2,3",
           what, item, ids.size());
    }
    ids.push_back(static_cast<int32_t>(value));
    i = j;
  }
  return ids;
}

std::vector<std::vector<int32_t>> read_token_ids_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) {
    fail(ErrorCode::kInvalidArgument, "cannot read prompt file {}: check the path", path.string());
  }
  std::vector<std::vector<int32_t>> prompts;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    const size_t first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    prompts.push_back(parse_token_ids(line, fmt::format("{} line {}", path.string(), line_no)));
  }
  if (prompts.empty()) {
    fail(ErrorCode::kInvalidArgument, "prompt file {} holds no prompts (one per line)",
         path.string());
  }
  return prompts;
}

}  // namespace conveyor
