// The binaries' shared ending: run the body, turn any error into one line on stderr, exit 1.
#pragma once

#include <fmt/format.h>

#include <cstdio>
#include <exception>

#include "conveyor/error.hpp"

namespace conveyor {

template <typename Body>
int run_reporting_errors(Body&& body) {
  try {
    return body();
  } catch (const Error& e) {
    fmt::print(stderr, "error ({}): {}\n", to_string(e.code()), e.what());
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
  }
  return 1;
}

}  // namespace conveyor
