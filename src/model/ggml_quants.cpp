// ggml type table and fp32 dequantizers written from the block layouts of ggml-common.h; each
// follows the order of operations of ggml's reference dequantizer, so results are bit-identical
// (checked against gguf-py's dequantize in tests/data/gguf_dequant_blocks.json).
#include "model/ggml_quants.hpp"

#include <fmt/format.h>
#include <algorithm>

#include <array>
#include <cstring>

#include "core/check.hpp"
#include "core/dtype_convert.hpp"

namespace conveyor {
namespace {

// Every id of the format (ggml.h, GGML_TYPE_COUNT = 40); removed ids have no entry.
constexpr std::array<GgmlTypeTraits, 40> kTraits = {{
    {"F32", 1, 4, true},          // 0
    {"F16", 1, 2, true},          // 1
    {"Q4_0", 32, 18, true},       // 2
    {"Q4_1", 32, 20, true},       // 3
    {},                           // 4: Q4_2, removed
    {},                           // 5: Q4_3, removed
    {"Q5_0", 32, 22, true},       // 6
    {"Q5_1", 32, 24, true},       // 7
    {"Q8_0", 32, 34, true},       // 8
    {"Q8_1", 32, 36, false},      // 9
    {"Q2_K", 256, 84, false},     // 10
    {"Q3_K", 256, 110, false},    // 11
    {"Q4_K", 256, 144, true},     // 12
    {"Q5_K", 256, 176, true},     // 13
    {"Q6_K", 256, 210, true},     // 14
    {"Q8_K", 256, 292, false},    // 15
    {"IQ2_XXS", 256, 66, false},  // 16
    {"IQ2_XS", 256, 74, false},   // 17
    {"IQ3_XXS", 256, 98, false},  // 18
    {"IQ1_S", 256, 50, false},    // 19
    {"IQ4_NL", 32, 18, false},    // 20
    {"IQ3_S", 256, 110, false},   // 21
    {"IQ2_S", 256, 82, false},    // 22
    {"IQ4_XS", 256, 136, false},  // 23
    {"I8", 1, 1, false},          // 24
    {"I16", 1, 2, false},         // 25
    {"I32", 1, 4, false},         // 26
    {"I64", 1, 8, false},         // 27
    {"F64", 1, 8, false},         // 28
    {"IQ1_M", 256, 56, false},    // 29
    {"BF16", 1, 2, true},         // 30
    {},                           // 31: Q4_0_4_4, removed
    {},                           // 32: Q4_0_4_8, removed
    {},                           // 33: Q4_0_8_8, removed
    {"TQ1_0", 256, 54, false},    // 34
    {"TQ2_0", 256, 66, false},    // 35
    {},                           // 36: IQ4_NL_4_4, removed
    {},                           // 37: IQ4_NL_4_8, removed
    {},                           // 38: IQ4_NL_8_8, removed
    {"MXFP4", 32, 17, false},     // 39
}};

const uint8_t* as_u8(const std::byte* p) {
  return reinterpret_cast<const uint8_t*>(p);
}

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

float load_f16(const uint8_t* p) {
  return f16_to_f32(load_u16(p));
}

// Q4_K/Q5_K: the 6-bit scale and min of sub-block j from the 12 packed bytes.
void scale_min_k4(int j, const uint8_t* q, uint8_t& scale, uint8_t& min) {
  if (j < 4) {
    scale = q[j] & 63;
    min = q[j + 4] & 63;
  } else {
    scale = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    min = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Block layouts (byte offsets within a block) as in ggml-common.h.
void q4_0(const uint8_t* b, float* y) {  // d[0:2] qs[2:18]
  const float d = load_f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
    y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

void q4_1(const uint8_t* b, float* y) {  // d[0:2] m[2:4] qs[4:20]
  const float d = load_f16(b);
  const float m = load_f16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
    y[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

void q5_0(const uint8_t* b, float* y) {  // d[0:2] qh[2:6] qs[6:22]
  const float d = load_f16(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, sizeof qh);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const uint32_t h0 = ((qh >> j) << 4) & 0x10;
    const uint32_t h1 = (qh >> (j + 12)) & 0x10;
    y[j] = static_cast<float>(static_cast<int32_t>((qs[j] & 0x0F) | h0) - 16) * d;
    y[j + 16] = static_cast<float>(static_cast<int32_t>((qs[j] >> 4) | h1) - 16) * d;
  }
}

void q5_1(const uint8_t* b, float* y) {  // d[0:2] m[2:4] qh[4:8] qs[8:24]
  const float d = load_f16(b);
  const float m = load_f16(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, sizeof qh);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const uint32_t h0 = ((qh >> j) << 4) & 0x10;
    const uint32_t h1 = (qh >> (j + 12)) & 0x10;
    y[j] = static_cast<float>((qs[j] & 0x0F) | h0) * d + m;
    y[j + 16] = static_cast<float>((qs[j] >> 4) | h1) * d + m;
  }
}

void q8_0(const uint8_t* b, float* y) {  // d[0:2] qs[2:34] (int8)
  const float d = load_f16(b);
  for (int j = 0; j < 32; ++j)
    y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

void q4_k(const uint8_t* b, float* y) {  // d[0:2] dmin[2:4] scales[4:16] qs[16:144]
  const float d = load_f16(b);
  const float dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (int g = 0; g < 4; ++g) {
    uint8_t sc, m;
    scale_min_k4(2 * g, scales, sc, m);
    const float d1 = d * sc;
    const float m1 = dmin * m;
    scale_min_k4(2 * g + 1, scales, sc, m);
    const float d2 = d * sc;
    const float m2 = dmin * m;
    for (int l = 0; l < 32; ++l)
      y[l] = d1 * static_cast<float>(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l)
      y[32 + l] = d2 * static_cast<float>(q[l] >> 4) - m2;
    q += 32;
    y += 64;
  }
}

void q5_k(const uint8_t* b, float* y) {  // d[0:2] dmin[2:4] scales[4:16] qh[16:48] qs[48:176]
  const float d = load_f16(b);
  const float dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  uint8_t u1 = 1;
  uint8_t u2 = 2;
  for (int g = 0; g < 4; ++g) {
    uint8_t sc, m;
    scale_min_k4(2 * g, scales, sc, m);
    const float d1 = d * sc;
    const float m1 = dmin * m;
    scale_min_k4(2 * g + 1, scales, sc, m);
    const float d2 = d * sc;
    const float m2 = dmin * m;
    for (int l = 0; l < 32; ++l)
      y[l] = d1 * static_cast<float>((ql[l] & 0xF) + ((qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l)
      y[32 + l] = d2 * static_cast<float>((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
    ql += 32;
    y += 64;
    u1 = static_cast<uint8_t>(u1 << 2);
    u2 = static_cast<uint8_t>(u2 << 2);
  }
}

void q6_k(const uint8_t* b, float* y) {  // ql[0:128] qh[128:192] scales[192:208] d[208:210]
  const float d = load_f16(b + 208);
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  for (int half = 0; half < 2; ++half) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

using BlockDequantizer = void (*)(const uint8_t* block, float* out);

// The block dequantizer of each quantized type conveyor reads (plain floats are handled apart).
BlockDequantizer block_dequantizer(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kQ4_0:
      return q4_0;
    case GgmlType::kQ4_1:
      return q4_1;
    case GgmlType::kQ5_0:
      return q5_0;
    case GgmlType::kQ5_1:
      return q5_1;
    case GgmlType::kQ8_0:
      return q8_0;
    case GgmlType::kQ4_K:
      return q4_k;
    case GgmlType::kQ5_K:
      return q5_k;
    case GgmlType::kQ6_K:
      return q6_k;
    default:
      return nullptr;
  }
}

}  // namespace

const GgmlTypeTraits* ggml_type_traits(uint32_t type) noexcept {
  if (type >= kTraits.size() || kTraits[type].block_elems == 0) return nullptr;
  return &kTraits[type];
}

std::string ggml_type_name(uint32_t type) {
  if (const GgmlTypeTraits* traits = ggml_type_traits(type)) return std::string(traits->name);
  if (type < kTraits.size()) return fmt::format("type {} (removed from the format)", type);
  return fmt::format("unknown type {}", type);
}

bool ggml_type_supported(uint32_t type) noexcept {
  const GgmlTypeTraits* traits = ggml_type_traits(type);
  return traits != nullptr && traits->supported;
}

std::string_view supported_ggml_types() noexcept {
  return "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K";
}

void dequantize_row(uint32_t type, std::span<const std::byte> src, std::span<float> dst) {
  const GgmlTypeTraits* traits = ggml_type_traits(type);
  if (traits == nullptr || !traits->supported) {
    fail(ErrorCode::kInvalidArgument, "cannot dequantize ggml {}; conveyor reads {}",
         ggml_type_name(type), supported_ggml_types());
  }
  const auto n = static_cast<int64_t>(dst.size());
  if (n % traits->block_elems != 0 ||
      static_cast<int64_t>(src.size()) != n / traits->block_elems * traits->block_bytes) {
    fail(ErrorCode::kInvalidArgument,
         "dequantize_row: {} elements of {} need whole blocks of {} and {} bytes, got {} bytes", n,
         traits->name, traits->block_elems, n / traits->block_elems * traits->block_bytes,
         src.size());
  }
  const uint8_t* in = as_u8(src.data());
  float* out = dst.data();
  const auto n_blocks = static_cast<size_t>(n / traits->block_elems);
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32:
      std::copy_n(src.data(), src.size(), reinterpret_cast<std::byte*>(out));
      return;
    case GgmlType::kF16:
      for (size_t i = 0; i < dst.size(); ++i)
        out[i] = load_f16(in + 2 * i);
      return;
    case GgmlType::kBF16:
      for (size_t i = 0; i < dst.size(); ++i)
        out[i] = bf16_to_f32(load_u16(in + 2 * i));
      return;
    default:
      break;
  }
  const BlockDequantizer block = block_dequantizer(type);
  CONVEYOR_ASSERT(block != nullptr);
  for (size_t i = 0; i < n_blocks; ++i) {
    block(in + i * static_cast<size_t>(traits->block_bytes),
          out + i * static_cast<size_t>(traits->block_elems));
  }
}

}  // namespace conveyor
