// libFuzzer entry point for the safetensors header parser: any input must either parse or throw
// conveyor::Error, never crash, read out of bounds or leak.
#include <cstddef>
#include <cstdint>
#include <span>

#include "conveyor/error.hpp"
#include "conveyor/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  try {
    const auto tensors = conveyor::parse_safetensors(file, "fuzz-input");
    // What the parser accepted must describe byte ranges inside the data section.
    for (const conveyor::TensorInfo& info : tensors) {
      if (info.data_begin > info.data_end || info.data_end > size) __builtin_trap();
      if (static_cast<uint64_t>(info.numel()) * conveyor::dtype_size(info.dtype) !=
          info.data_end - info.data_begin) {
        __builtin_trap();
      }
    }
  } catch (const conveyor::Error&) {
    // Rejected input: the expected outcome for most of them.
  }
  return 0;
}
