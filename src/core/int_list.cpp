// parse_int_list, parse_token_ids, read_token_ids_file.
#include "core/int_list.hpp"

#include <charconv>
#include <fstream>
#include <string>

#include "core/check.hpp"
#include "core/strings.hpp"

namespace conveyor {

std::vector<int64_t> parse_int_list(std::string_view text, std::string_view what,
                                    std::string_view noun, int64_t min, int64_t max) {
  std::vector<int64_t> values;
  if (trim(text).empty()) return values;
  const std::vector<std::string_view> parts = split(text, ',');
  for (size_t p = 0; p < parts.size(); ++p) {
    std::string_view rest = trim(parts[p]);
    if (rest.empty()) {
      fail(ErrorCode::kInvalidArgument,
           "{}: item {} is empty (\"{}\"); write {}s separated by commas, like 1,2,3", what,
           values.size(), text, noun);
    }
    while (!rest.empty()) {
      size_t end = 0;
      while (end < rest.size() && rest[end] != ' ' && rest[end] != '\t')
        ++end;
      const std::string_view item = rest.substr(0, end);
      int64_t value = 0;
      const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
      if (ec != std::errc() || ptr != item.data() + item.size() || value < min || value > max) {
        fail(ErrorCode::kInvalidArgument,
             "{}: '{}' (item {}) is not a {}; expected integers{} separated by commas, like 1,2,3",
             what, item, values.size(), noun,
             min > INT64_MIN || max < INT64_MAX ? fmt::format(" in [{}, {}]", min, max) : "");
      }
      values.push_back(value);
      rest = trim(rest.substr(end));
    }
  }
  return values;
}

std::vector<int32_t> parse_token_ids(std::string_view text, std::string_view what) {
  const std::vector<int64_t> values = parse_int_list(text, what, "token id", INT32_MIN, INT32_MAX);
  return {values.begin(), values.end()};
}

std::vector<std::vector<int32_t>> read_token_ids_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) {
    fail(ErrorCode::kInvalidArgument, "cannot read prompt file {}: check the path", path.string());
  }
  std::vector<std::vector<int32_t>> prompts;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    const std::string_view text = trim(line);
    if (text.empty() || text.front() == '#') continue;
    prompts.push_back(parse_token_ids(text, fmt::format("{} line {}", path.string(), line_no)));
  }
  if (prompts.empty()) {
    fail(ErrorCode::kInvalidArgument, "prompt file {} holds no prompts (one per line)",
         path.string());
  }
  return prompts;
}

}  // namespace conveyor
