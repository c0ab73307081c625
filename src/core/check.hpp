// Internal helpers to raise conveyor::Error with fmt-formatted messages.
#pragma once

#include <fmt/format.h>

#include <utility>

#include "conveyor/error.hpp"

namespace conveyor {

template <typename... Args>
[[noreturn]] void fail(ErrorCode code, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(code, fmt::format(format, std::forward<Args>(args)...));
}

// A broken internal invariant; names the file and line so a bug report can point at it.
#define CONVEYOR_ASSERT(cond)                                                                     \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      ::conveyor::fail(::conveyor::ErrorCode::kInternal, "internal invariant failed: {} ({}:{})", \
                       #cond, __FILE__, __LINE__);                                                \
    }                                                                                             \
  } while (0)

}  // namespace conveyor
