// libFuzzer entry point for the config.json reader: any input must either give a config that
// passes its own validate() and survives a to_json round trip, or throw conveyor::Error.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "conveyor/error.hpp"
#include "conveyor/model_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const conveyor::ModelConfig config = conveyor::ModelConfig::from_json(text, "fuzz-input");
    config.validate();
    const conveyor::ModelConfig again = conveyor::ModelConfig::from_json(config.to_json(), "again");
    if (again.n_params() != config.n_params() || again.head_dim != config.head_dim) {
      __builtin_trap();
    }
  } catch (const conveyor::Error&) {
    // Rejected input: the expected outcome for most of them.
  }
  return 0;
}
