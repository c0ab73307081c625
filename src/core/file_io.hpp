// Writing whole files with errors that name the path and the likely fix.
#pragma once

#include <filesystem>
#include <string_view>

namespace conveyor {

// Writes `bytes` to `path` (truncating). `what` names the content in errors ("Chrome trace").
// Throws conveyor::Error(kInvalidArgument) when the file cannot be opened or fully written.
void write_file(const std::filesystem::path& path, std::string_view bytes, std::string_view what);

}  // namespace conveyor
