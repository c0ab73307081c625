// conveyor::Error — the one exception type the library throws, with a machine-readable ErrorCode.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace conveyor {

enum class ErrorCode {
  kInvalidArgument,  // the caller passed a value outside what is allowed
  kModelFormat,      // a model file (config.json, safetensors) is malformed or unsupported
  kOutOfMemory,      // an allocation (host or device) could not be satisfied
  kDevice,           // a device runtime call failed
  kCommunication,    // a transport link failed or was cancelled
  kTimeout,          // a wait exceeded its deadline
  kAborted,          // the step was aborted because another stage failed
  kOverloaded,       // the engine's waiting queue is full: retry later
  kCancelled,        // the request was cancelled (by its client, or at shutdown)
  kInternal,         // a broken invariant inside conveyor (a bug)
};

std::string_view to_string(ErrorCode code) noexcept;

// Messages say what was wrong, the value, the limit and the fix.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message);
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace conveyor
