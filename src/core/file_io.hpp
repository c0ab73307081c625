// Writing whole files with errors that name the path and the likely fix.
#pragma once

#include <filesystem>
#include <functional>
#include <ostream>
#include <string_view>

namespace conveyor {

// Writes `bytes` to `path` (truncating). `what` names the content in errors ("Chrome trace").
// Throws conveyor::Error(kInvalidArgument) when the file cannot be opened or fully written.
void write_file(const std::filesystem::path& path, std::string_view bytes, std::string_view what);

// Writes a file through `<path>.tmp` and a rename, so readers never see half a file: `body`
// streams the content. Throws conveyor::Error(kInvalidArgument) naming the path when it cannot
// be created, written (disk full) or renamed.
void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(std::ostream&)>& body);

}  // namespace conveyor
