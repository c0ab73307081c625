// libFuzzer entry point for the GGUF parser: any input must either parse or throw
// conveyor::Error, never crash, read out of bounds or over-allocate; what it accepts must
// describe tensors inside the file whose byte sizes match their shapes and types, and metadata
// every typed getter can read back.
#include <cstddef>
#include <cstdint>
#include <span>

#include "conveyor/error.hpp"
#include "conveyor/gguf.hpp"
#include "model/ggml_quants.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  try {
    const conveyor::GgufContents contents = conveyor::parse_gguf(file, "fuzz-input");
    for (const conveyor::GgufTensorInfo& info : contents.tensors) {
      const conveyor::GgmlTypeTraits* traits = conveyor::ggml_type_traits(info.type);
      if (traits == nullptr) __builtin_trap();
      const uint64_t begin = contents.data_offset + info.offset;
      if (begin > size || info.n_bytes > size - begin) __builtin_trap();
      if (static_cast<uint64_t>(info.numel()) / static_cast<uint64_t>(traits->block_elems) *
              static_cast<uint64_t>(traits->block_bytes) !=
          info.n_bytes) {
        __builtin_trap();
      }
    }
    for (const auto& [key, value] : contents.metadata) {
      try {
        if (value.type == conveyor::GgufType::kArray) {
          switch (value.array.element_type) {
            case conveyor::GgufType::kString:
              (void)contents.get_strings(key);
              break;
            case conveyor::GgufType::kF32:
            case conveyor::GgufType::kF64:
              (void)contents.get_floats(key);
              break;
            case conveyor::GgufType::kBool:
              break;
            default:
              (void)contents.get_ints(key);
          }
        }
      } catch (const conveyor::Error&) {
        // An unsigned value past int64_t: reported, not a crash.
      }
    }
  } catch (const conveyor::Error&) {
    // Rejected input: the expected outcome for most of them.
  }
  return 0;
}
