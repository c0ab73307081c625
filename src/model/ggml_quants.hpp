// ggml block geometry of every tensor type a GGUF file may hold, and dequantization to fp32 of
// the ones conveyor reads (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "conveyor/gguf.hpp"

namespace conveyor {

struct GgmlTypeTraits {
  std::string_view name;
  int64_t block_elems = 0;  // elements per block (1 for plain floats and ints)
  int64_t block_bytes = 0;  // bytes per block
  bool supported = false;   // dequantize_row can read it
};

// nullptr for ids that are not a type of the format (removed ones such as Q4_2, or unknown).
const GgmlTypeTraits* ggml_type_traits(uint32_t type) noexcept;

// Dequantizes `dst.size()` elements of a supported type from `src`, which must hold exactly
// dst.size() / block_elems blocks (dst.size() a multiple of block_elems). The arithmetic follows
// ggml's reference dequantizers operation for operation, so the floats are bit-identical.
// Throws conveyor::Error(kInvalidArgument) for an unsupported type or mismatched sizes.
void dequantize_row(uint32_t type, std::span<const std::byte> src, std::span<float> dst);

}  // namespace conveyor
