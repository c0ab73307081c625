// The binaries' shared ending: run the body, turn any error into one line on stderr, exit 1.
#pragma once

#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <memory>
#include <string>

#include "conveyor/error.hpp"
#include "conveyor/process_group.hpp"

namespace conveyor {

// The MPI world of a binary started by mpirun (set by cli::engine_options).
inline std::shared_ptr<ProcessGroup>& cli_process_group() {
  static std::shared_ptr<ProcessGroup> group;
  return group;
}

inline void report_error(const std::string& line) {
  const std::shared_ptr<ProcessGroup>& group = cli_process_group();
  if (group && group->size() > 1) {
    fmt::print(stderr, "rank {} ({}): {}\n", group->rank(), group->host(), line);
    std::fflush(stderr);
    group->abort(1);
  }
  fmt::print(stderr, "{}\n", line);
}

// Across MPI ranks an error ends the whole job (MPI_Abort): the other ranks could otherwise wait
// for this one for ever.
template <typename Body>
int run_reporting_errors(Body&& body) {
  try {
    return body();
  } catch (const Error& e) {
    report_error(fmt::format("error ({}): {}", to_string(e.code()), e.what()));
  } catch (const std::exception& e) {
    report_error(fmt::format("error: {}", e.what()));
  }
  return 1;
}

}  // namespace conveyor
