// DType names and the IEEE half <-> fp32 conversions.
#include <cmath>

#include "conveyor/dtype.hpp"
#include "core/dtype_convert.hpp"

namespace conveyor {

std::size_t dtype_size(DType dtype) noexcept {
  return dtype == DType::kF32 ? 4 : 2;
}

std::string_view dtype_name(DType dtype) noexcept {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
  }
  return "?";
}

std::string_view dtype_flag(DType dtype) noexcept {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      break;
  }
  return "bf16";
}

bool parse_dtype(std::string_view text, DType& out) noexcept {
  if (text == "F32" || text == "f32" || text == "float32") {
    out = DType::kF32;
  } else if (text == "F16" || text == "f16" || text == "float16") {
    out = DType::kF16;
  } else if (text == "BF16" || text == "bf16" || text == "bfloat16") {
    out = DType::kBF16;
  } else {
    return false;
  }
  return true;
}

float f16_to_f32(uint16_t h) noexcept {
  // Bit manipulation, exact for every input: normals rebias the exponent, subnormals are
  // mantissa * 2^-24 (exact in float), inf and NaN keep their payload (as numpy and ggml do).
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t magnitude = h & 0x7fffu;
  uint32_t bits;
  if (magnitude >= 0x7c00u) {
    bits = sign | 0x7f800000u | ((magnitude & 0x3ffu) << 13);
  } else if (magnitude >= 0x0400u) {
    bits = sign | ((magnitude + 0x1c000u) << 13);  // exponent bias 15 -> 127
  } else {
    const float value = static_cast<float>(magnitude) * 0x1.0p-24f;
    std::memcpy(&bits, &value, sizeof bits);
    bits |= sign;
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t f32_to_f16(float f) noexcept {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or nan
    return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {  // result is subnormal in half: round |f| * 2^24 to nearest even
    float scaled;
    uint32_t abs_bits = abs;
    std::memcpy(&scaled, &abs_bits, sizeof scaled);
    scaled = std::nearbyint(scaled * 16777216.0f);  // default rounding mode is to-nearest-even
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(scaled));
  }
  // Normal: rebias exponent, round mantissa 23 -> 10 bits to nearest even.
  uint32_t value = abs - 0x38000000u;  // exponent bias 127 -> 15
  uint32_t rounding = 0xfffu + ((value >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((value + rounding) >> 13));
}

}  // namespace conveyor
