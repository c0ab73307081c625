// Element types of model tensors on disk and on devices.
#pragma once

#include <cstddef>
#include <string_view>

namespace conveyor {

enum class DType { kF32, kF16, kBF16 };

std::size_t dtype_size(DType dtype) noexcept;
// Safetensors spelling: "F32", "F16", "BF16".
std::string_view dtype_name(DType dtype) noexcept;
// The command line's spelling: "f32", "f16", "bf16".
std::string_view dtype_flag(DType dtype) noexcept;
// Accepts the safetensors spelling and the config.json / CLI spelling ("float32", "f32",
// "bfloat16", "bf16", "float16", "f16"); returns false for anything else.
bool parse_dtype(std::string_view text, DType& out) noexcept;

}  // namespace conveyor
