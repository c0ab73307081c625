// Tests of the GGUF parser (every malformed case of docs/gguf.md on hand-built images), the
// dequantizers (bit-exact against gguf-py's, tests/data/gguf_dequant_blocks.json), the f16
// conversion, the quantizers and GgufWriter round trips.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "common/test_util.hpp"
#include "conveyor/error.hpp"
#include "conveyor/gguf.hpp"
#include "core/dtype_convert.hpp"
#include "model/ggml_quants.hpp"
#include "model/gguf_writer.hpp"

namespace conveyor {
namespace {

using ::testing::HasSubstr;

// Little-endian image builder for hand-made (often broken) GGUF files.
class Image {
 public:
  template <typename T>
  Image& put(T value) {
    const auto* p = reinterpret_cast<const std::byte*>(&value);
    bytes.insert(bytes.end(), p, p + sizeof(T));
    return *this;
  }
  Image& raw(std::string_view s) {
    const auto* p = reinterpret_cast<const std::byte*>(s.data());
    bytes.insert(bytes.end(), p, p + s.size());
    return *this;
  }
  Image& str(std::string_view s) { return put<uint64_t>(s.size()).raw(s); }
  Image& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    return raw("GGUF").put<uint32_t>(version).put<uint64_t>(n_tensors).put<uint64_t>(n_kv);
  }
  Image& kv_u32(std::string_view key, uint32_t v) {
    return str(key).put<uint32_t>(4).put<uint32_t>(v);
  }
  Image& kv_str(std::string_view key, std::string_view v) {
    return str(key).put<uint32_t>(8).str(v);
  }
  // A tensor info: name, dims, type, offset.
  Image& tensor(std::string_view name, std::vector<int64_t> ne, uint32_t type, uint64_t offset) {
    str(name).put<uint32_t>(static_cast<uint32_t>(ne.size()));
    for (int64_t d : ne)
      put<int64_t>(d);
    return put<uint32_t>(type).put<uint64_t>(offset);
  }
  Image& pad_to(uint64_t alignment) {
    while (bytes.size() % alignment != 0)
      bytes.push_back(std::byte{0});
    return *this;
  }
  Image& zeros(size_t n) {
    bytes.insert(bytes.end(), n, std::byte{0});
    return *this;
  }

  std::vector<std::byte> bytes;
};

void expect_rejected(const Image& image, std::initializer_list<std::string> parts) {
  try {
    parse_gguf(image.bytes, "bad.gguf");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kModelFormat) << e.what();
    EXPECT_THAT(e.what(), HasSubstr("bad.gguf"));
    for (const std::string& part : parts)
      EXPECT_THAT(e.what(), HasSubstr(part));
  }
}

constexpr uint32_t kF32 = 0;
constexpr uint32_t kQ4K = 12;

// ---- header, counts, keys, values ------------------------------------------------------------

TEST(GgufParse, TruncatedHeadersAndBadMagic) {
  expect_rejected(Image{}, {"0 bytes", "24-byte"});
  expect_rejected(Image{}.raw("GGU"), {"3 bytes"});
  Image h23 = Image{}.header(0, 0);
  h23.bytes.pop_back();
  expect_rejected(h23, {"23 bytes"});
  // 27 bytes: a header that claims one metadata entry but holds 3 bytes of it.
  expect_rejected(Image{}.header(0, 1).raw("abc"), {"1 metadata entries", "3 bytes left"});
  expect_rejected(Image{}.raw("GGUG").put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(0),
                  {"not the GGUF magic", "GGUG"});
}

TEST(GgufParse, VersionsOtherThanTwoAndThreeAreRefused) {
  expect_rejected(Image{}.header(0, 0, 0x03000000u), {"big-endian"});
  for (uint32_t v : {0u, 1u, 4u, 0xFFFFFFFFu}) {
    expect_rejected(Image{}.header(0, 0, v), {fmt::format("version {}", v), "2 and 3"});
  }
  EXPECT_EQ(parse_gguf(Image{}.header(0, 0, 2).bytes, "v2.gguf").version, 2u);
  EXPECT_EQ(parse_gguf(Image{}.header(0, 0, 3).bytes, "v3.gguf").version, 3u);
}

TEST(GgufParse, CountsBeyondTheFileAreRefusedBeforeAllocating) {
  for (uint64_t n : {uint64_t{1} << 63, ~uint64_t{0}}) {
    expect_rejected(Image{}.header(0, n), {"more than the", "bytes left"});
  }
  expect_rejected(Image{}.header(~uint64_t{0}, 0), {"tensors", "more than the"});
  // 3 entries claimed, room for one.
  expect_rejected(Image{}.header(0, 3).kv_u32("a.b", 1), {"3 metadata entries"});
}

TEST(GgufParse, KeysMustBeNonEmptyPrintableUniqueAndInsideTheFile) {
  expect_rejected(Image{}.header(0, 1).put<uint64_t>(~uint64_t{0}).raw("abcdef"),
                  {"length 18446744073709551615", "bytes are left"});
  expect_rejected(Image{}.header(0, 1).put<uint64_t>(100).raw("general.name").put<uint32_t>(4),
                  {"length 100"});
  expect_rejected(Image{}.header(0, 1).str("").put<uint32_t>(4).put<uint32_t>(1), {"empty"});
  expect_rejected(Image{}.header(0, 1).str("caf\xc3\xa9").put<uint32_t>(4).put<uint32_t>(1),
                  {"printable ASCII", "0xc3"});
  expect_rejected(Image{}.header(0, 2).kv_u32("a.b", 1).kv_u32("a.b", 2),
                  {"\"a.b\" appears twice"});
}

TEST(GgufParse, ValueTypesAreCheckedAndBoundedByTheFile) {
  expect_rejected(Image{}.header(0, 1).str("k").put<uint32_t>(13).put<uint32_t>(0),
                  {"value type 13"});
  expect_rejected(Image{}.header(0, 1).str("k").put<uint32_t>(0xFFFFFFFFu).put<uint32_t>(0),
                  {"value type -1"});
  // ARRAY of ARRAY.
  expect_rejected(Image{}.header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(9).put<uint64_t>(0),
                  {"array of arrays"});
  expect_rejected(Image{}.header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(13).put<uint64_t>(0),
                  {"array element value type 13"});
  // 2^62 u32 elements: count * 4 would overflow; the division-based check refuses it.
  expect_rejected(Image{}
                      .header(0, 1)
                      .str("k")
                      .put<uint32_t>(9)
                      .put<uint32_t>(4)
                      .put<uint64_t>(uint64_t{1} << 62)
                      .put<uint32_t>(7),
                  {"claims 4611686018427387904 elements of u32"});
  // A string array whose second element runs past the end.
  expect_rejected(Image{}
                      .header(0, 1)
                      .str("tokenizer.ggml.tokens")
                      .put<uint32_t>(9)
                      .put<uint32_t>(8)
                      .put<uint64_t>(2)
                      .str("a")
                      .put<uint64_t>(1000)
                      .raw("bc"),
                  {"element 1 of tokenizer.ggml.tokens", "length 1000"});
  // Truncation inside a u64 value.
  expect_rejected(Image{}.header(0, 1).str("k").put<uint32_t>(10).raw("abcd"),
                  {"ends at byte", "inside k"});
  expect_rejected(Image{}.header(0, 1).str("flag").put<uint32_t>(7).put<uint8_t>(2),
                  {"bool stored as 2"});
}

TEST(GgufParse, AlignmentMustBeAU32PowerOfTwo) {
  expect_rejected(Image{}.header(0, 1).kv_str("general.alignment", "32"),
                  {"general.alignment must be a u32 but is a string"});
  expect_rejected(Image{}.header(0, 1).str("general.alignment").put<uint32_t>(10).put<uint64_t>(32),
                  {"must be a u32 but is a u64"});
  for (uint32_t a : {0u, 3u, 48u}) {
    expect_rejected(Image{}.header(0, 1).kv_u32("general.alignment", a),
                    {fmt::format("general.alignment is {}", a), "power of two"});
  }
  // 2^31 is a power of two, but the data section would start past the end of the file.
  expect_rejected(Image{}
                      .header(1, 1)
                      .kv_u32("general.alignment", 1u << 31)
                      .tensor("t", {32}, kF32, 0)
                      .zeros(128),
                  {"data section would start at byte 2147483648"});
  // Alignment 64 with an offset aligned only to 32.
  Image misaligned;
  misaligned.header(2, 1)
      .kv_u32("general.alignment", 64)
      .tensor("a", {8}, kF32, 0)
      .tensor("b", {8}, kF32, 32)
      .pad_to(64)
      .zeros(128);
  expect_rejected(misaligned, {"\"b\" starts at data offset 32", "alignment 64"});
}

// ---- tensor infos --------------------------------------------------------------------------

Image one_tensor(std::string_view name, std::vector<int64_t> ne, uint32_t type, uint64_t offset,
                 size_t data_bytes) {
  Image image;
  image.header(1, 0).tensor(name, std::move(ne), type, offset).pad_to(32).zeros(data_bytes);
  return image;
}

TEST(GgufParse, TensorNamesDimsAndTypesAreChecked) {
  expect_rejected(one_tensor(std::string(64, 'x'), {4}, kF32, 0, 16), {"name of 64 bytes"});
  expect_rejected(one_tensor("", {4}, kF32, 0, 16), {"name of 0 bytes"});
  EXPECT_NO_THROW(parse_gguf(one_tensor(std::string(63, 'x'), {4}, kF32, 0, 16).bytes, "ok"));
  Image twice;
  twice.header(2, 0).tensor("w", {4}, kF32, 0).tensor("w", {4}, kF32, 32).pad_to(32).zeros(64);
  expect_rejected(twice, {"\"w\" appears twice"});

  expect_rejected(one_tensor("w", {1, 1, 1, 1, 1}, kF32, 0, 16), {"5 dimensions", "1 to 4"});
  Image many_dims;
  many_dims.header(1, 0).str("w").put<uint32_t>(0xFFFFFFFFu).zeros(64);
  expect_rejected(many_dims, {"4294967295 dimensions"});
  expect_rejected(one_tensor("w", {-1}, kF32, 0, 16), {"ne[0] = -1"});
  expect_rejected(one_tensor("w", {int64_t{1} << 40, int64_t{1} << 40}, kF32, 0, 16),
                  {"overflows 64 bits"});
  // ne = 0 is a valid (empty) tensor for the format.
  EXPECT_EQ(parse_gguf(one_tensor("w", {0}, kF32, 0, 0).bytes, "ok").tensors[0].n_bytes, 0u);

  for (uint32_t bad : {0xFFFFFFFFu, 4u, 31u, 1000u}) {
    expect_rejected(one_tensor("w", {32}, bad, 0, 256), {"not a tensor type of the GGUF format"});
  }
  expect_rejected(one_tensor("w", {576, 2}, kQ4K, 0, 4096), {"Q4_K", "576", "blocks of 256"});
  // Known but not dequantizable types parse (the model-level check names them).
  const GgufContents iq = parse_gguf(one_tensor("w", {256}, 16, 0, 66).bytes, "iq.gguf");
  EXPECT_EQ(ggml_type_name(iq.tensors[0].type), "IQ2_XXS");
  EXPECT_FALSE(ggml_type_supported(iq.tensors[0].type));
  EXPECT_EQ(ggml_type_name(39), "MXFP4");
}

TEST(GgufParse, TensorDataMustBeAlignedInsideTheFileAndNotOverlapping) {
  expect_rejected(one_tensor("w", {4}, kF32, 8, 64), {"data offset 8", "alignment 32"});
  expect_rejected(one_tensor("w", {64}, kF32, 0, 100), {"256 bytes at data offset 0", "truncated"});
  expect_rejected(one_tensor("w", {64}, kF32, ~uint64_t{0} - 31, 100), {"ends past"});
  Image overlap;
  overlap.header(2, 0).tensor("a", {16}, kF32, 0).tensor("b", {16}, kF32, 32).pad_to(32).zeros(128);
  expect_rejected(overlap, {"\"a\" [0, 64)", "\"b\" [32, 96)", "overlap"});
  // The tensor table ends at EOF while a tensor is declared.
  Image no_data;
  no_data.header(1, 0).tensor("w", {4}, kF32, 0);
  expect_rejected(no_data, {"data section would start", "truncated"});
  // The file is cut inside the last tensor.
  Image cut = one_tensor("w", {16}, kF32, 0, 64);
  cut.bytes.resize(cut.bytes.size() - 1);
  expect_rejected(cut, {"64 bytes at data offset 0"});
}

TEST(GgufParse, AcceptedEdgeCases) {
  // No trailing padding after the last tensor, unknown keys, empty arrays, alignment 64.
  Image image;
  image.header(2, 3)
      .kv_u32("general.alignment", 64)
      .kv_str("some.unknown.key", "value")
      .str("empty.array")
      .put<uint32_t>(9)
      .put<uint32_t>(8)
      .put<uint64_t>(0)
      .tensor("a", {3}, kF32, 0)
      .tensor("b", {5}, kF32, 64)
      .pad_to(64)
      .zeros(64 + 20);
  const GgufContents c = parse_gguf(image.bytes, "edge.gguf");
  EXPECT_EQ(c.alignment, 64u);
  EXPECT_EQ(c.tensors.size(), 2u);
  EXPECT_EQ(c.gap_bytes, 0u);
  EXPECT_EQ(c.get_strings("empty.array")->size(), 0u);
  EXPECT_EQ(c.get_string("some.unknown.key"), "value");
  EXPECT_EQ(c.data_offset % 64, 0u);
  // No tensors at all.
  EXPECT_TRUE(parse_gguf(Image{}.header(0, 0).bytes, "empty.gguf").tensors.empty());
  // A gap between tensors is allowed and counted.
  Image gap;
  gap.header(2, 0).tensor("a", {8}, kF32, 0).tensor("b", {8}, kF32, 64).pad_to(32).zeros(96);
  EXPECT_EQ(parse_gguf(gap.bytes, "gap.gguf").gap_bytes, 32u);
}

TEST(GgufParse, TypedGettersNameTheKeyOnAWrongType) {
  Image image;
  image.header(0, 5)
      .kv_u32("llama.block_count", 30)
      .kv_str("general.architecture", "llama")
      .str("big")
      .put<uint32_t>(10)
      .put<uint64_t>(~uint64_t{0})
      .str("eps")
      .put<uint32_t>(6)
      .put<float>(1e-5f)
      .str("ids")
      .put<uint32_t>(9)
      .put<uint32_t>(5)
      .put<uint64_t>(3)
      .put<int32_t>(-1)
      .put<int32_t>(0)
      .put<int32_t>(7);
  const GgufContents c = parse_gguf(image.bytes, "typed.gguf");
  EXPECT_EQ(c.get_int("llama.block_count"), 30);
  EXPECT_EQ(c.get_int("missing"), std::nullopt);
  EXPECT_FLOAT_EQ(static_cast<float>(*c.get_float("eps")), 1e-5f);
  EXPECT_EQ(*c.get_ints("ids"), (std::vector<int64_t>{-1, 0, 7}));
  test::expect_error([&] { c.get_int("general.architecture"); }, ErrorCode::kModelFormat,
                     {"typed.gguf", "general.architecture", "must be an integer but is a string"});
  test::expect_error([&] { c.get_int("big"); }, ErrorCode::kModelFormat,
                     {"18446744073709551615", "does not fit"});
  test::expect_error([&] { c.get_strings("ids"); }, ErrorCode::kModelFormat,
                     {"must be an array of strings but is an array of i32"});
}

// ---- dequantization ------------------------------------------------------------------------

std::vector<std::byte> from_hex(const std::string& hex) {
  std::vector<std::byte> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<std::byte>(std::stoul(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

TEST(GgmlDequantize, EveryTypeMatchesGgufPyBitForBit) {
  nlohmann::json fixture;
  std::ifstream(std::filesystem::path(CONVEYOR_TEST_DATA_DIR) / "gguf_dequant_blocks.json") >>
      fixture;
  ASSERT_FALSE(fixture.is_null());
  int types = 0;
  for (const auto& [name, entry] : fixture["types"].items()) {
    ++types;
    const auto type = entry["type_id"].get<uint32_t>();
    ASSERT_TRUE(ggml_type_supported(type)) << name;
    const GgmlTypeTraits* traits = ggml_type_traits(type);
    EXPECT_EQ(traits->block_elems, entry["block_elems"].get<int64_t>()) << name;
    EXPECT_EQ(traits->block_bytes, entry["block_bytes"].get<int64_t>()) << name;
    for (const auto& c : entry["cases"]) {
      const std::vector<std::byte> raw = from_hex(c["raw_hex"].get<std::string>());
      const auto& expected = c["expected_f32_bits"];
      std::vector<float> out(expected.size(), std::nanf(""));
      dequantize_row(type, raw, out);
      for (size_t i = 0; i < out.size(); ++i) {
        const auto want =
            static_cast<uint32_t>(std::stoul(expected[i].get<std::string>(), nullptr, 16));
        ASSERT_EQ(std::bit_cast<uint32_t>(out[i]), want)
            << name << " " << c["description"] << " element " << i;
      }
    }
  }
  EXPECT_EQ(types, 10);
}

TEST(GgmlDequantize, HandBuiltBlocksFollowTheFormulas) {
  // Q4_1: d = 0.5, m = -1, nibbles j (low) and 15 - j (high): y[j] = j*0.5 - 1.
  std::vector<std::byte> q41(20);
  const uint16_t d = f32_to_f16(0.5f), m = f32_to_f16(-1.0f);
  std::memcpy(q41.data(), &d, 2);
  std::memcpy(q41.data() + 2, &m, 2);
  for (int j = 0; j < 16; ++j)
    q41[4 + j] = static_cast<std::byte>(j | ((15 - j) << 4));
  std::vector<float> y(32);
  dequantize_row(3, q41, y);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], j * 0.5f - 1.0f);
    EXPECT_EQ(y[j + 16], (15 - j) * 0.5f - 1.0f);
  }
  // Q6_K keeps d in its last two bytes and signed scales: one block with q = 63 everywhere
  // (ql = 0xF.., qh = 0xFF) and scale -2, d = 0.25: y = 0.25 * -2 * (63 - 32).
  std::vector<std::byte> q6(210, std::byte{0xFF});
  for (int i = 0; i < 16; ++i)
    q6[192 + i] = static_cast<std::byte>(static_cast<int8_t>(-2));
  const uint16_t d6 = f32_to_f16(0.25f);
  std::memcpy(q6.data() + 208, &d6, 2);
  std::vector<float> y6(256);
  dequantize_row(14, q6, y6);
  for (float v : y6)
    EXPECT_EQ(v, 0.25f * -2.0f * 31.0f);
}

TEST(GgmlDequantize, SizeMismatchesAndUnsupportedTypesAreErrors) {
  std::vector<float> out(32);
  std::vector<std::byte> short_block(19);
  test::expect_invalid([&] { dequantize_row(3, short_block, out); }, {"Q4_1", "20 bytes"});
  test::expect_invalid([&] { dequantize_row(16, std::vector<std::byte>(66), out); },
                       {"IQ2_XXS", "Q4_K"});
  EXPECT_EQ(supported_ggml_types(),
            "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K");
}

// The exact reference: sign * mantissa * 2^(exponent - 25), by ldexp.
float f16_reference(uint16_t h) {
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  float v;
  if (exponent == 0) {
    v = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 31) {
    v = mantissa == 0 ? INFINITY : NAN;
  } else {
    v = std::ldexp(static_cast<float>(mantissa | 0x400), exponent - 25);
  }
  return (h & 0x8000) ? -v : v;
}

TEST(GgmlDequantize, HalfToFloatIsExactForAll65536Values) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = f16_to_f32(static_cast<uint16_t>(h));
    const float want = f16_reference(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << h;
      // The payload is kept (as numpy and ggml keep it).
      EXPECT_EQ((std::bit_cast<uint32_t>(got) >> 13) & 0x3ff, h & 0x3ff) << h;
    } else {
      ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want)) << h;
    }
  }
}

TEST(GgmlQuantize, RoundTripsWithinTheStepOfEachType) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(1024);
  for (float& v : values)
    v = normal(rng);
  for (auto [type, tolerance] :
       {std::pair{0u, 0.0f}, {1u, 1e-3f}, {30u, 8e-3f}, {8u, 0.02f}, {2u, 0.3f}}) {
    const std::vector<std::byte> bytes = quantize_values(type, values);
    std::vector<float> back(values.size());
    dequantize_row(type, bytes, back);
    float worst = 0.0f;
    for (size_t i = 0; i < values.size(); ++i)
      worst =
          std::max(worst, std::fabs(back[i] - values[i]) / std::max(1.0f, std::fabs(values[i])));
    EXPECT_LE(worst, tolerance) << ggml_type_name(type);
  }
  test::expect_invalid([&] { quantize_values(12, values); }, {"Q4_K"});
}

// ---- GgufWriter <-> GgufFile -----------------------------------------------------------------

TEST(GgufWriterTest, WrittenFilesParseBackWithEveryValue) {
  test::TempDir dir;
  GgufWriter w;
  w.set_alignment(64);
  w.add_string("general.architecture", "llama");
  w.add_u32("u", 7);
  w.add_i32("i", -7);
  w.add_u64("big", uint64_t{1} << 40);
  w.add_f32("f", 0.25f);
  w.add_bool("b", true);
  w.add_strings("s", {"a", "", "\xc4\xa0x"});
  w.add_i32s("is", {1, -2});
  w.add_f32s("fs", {0.5f, 2.0f});
  const std::vector<float> values = {1, 2, 3, 4, 5, 6, 7, 8};
  w.add_tensor("t.f32", 0, {8}, quantize_values(0, values));
  w.add_tensor("t.q8", 8, {32, 2}, quantize_values(8, std::vector<float>(64, 127.0f / 128.0f)));
  const auto path = dir.path() / "w.gguf";
  const uint64_t bytes = w.write(path);
  EXPECT_EQ(bytes, std::filesystem::file_size(path));
  EXPECT_EQ(w.serialize().size(), bytes);

  const GgufFile file = GgufFile::open(path);
  const GgufContents& c = file.contents();
  EXPECT_EQ(c.alignment, 64u);
  EXPECT_EQ(c.get_string("general.architecture"), "llama");
  EXPECT_EQ(c.get_int("u"), 7);
  EXPECT_EQ(c.get_int("i"), -7);
  EXPECT_EQ(c.get_int("big"), int64_t{1} << 40);
  EXPECT_EQ(c.get_float("f"), 0.25);
  EXPECT_EQ(c.get_bool("b"), true);
  EXPECT_EQ(*c.get_strings("s"), (std::vector<std::string>{"a", "", "\xc4\xa0x"}));
  EXPECT_EQ(*c.get_ints("is"), (std::vector<int64_t>{1, -2}));
  EXPECT_EQ(*c.get_floats("fs"), (std::vector<float>{0.5f, 2.0f}));
  const GgufTensorInfo* t = c.find_tensor("t.q8");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape(), (std::vector<int64_t>{2, 32}));
  EXPECT_EQ(t->n_bytes, 68u);
  std::vector<float> back(64);
  dequantize_row(t->type, file.bytes(*t), back);
  EXPECT_EQ(back, std::vector<float>(64, 127.0f / 128.0f));  // d = 1/128 is exact
  file.release_pages(*t);  // pages come back from the file when touched again
  dequantize_row(t->type, file.bytes(*t), back);
  EXPECT_EQ(back, std::vector<float>(64, 127.0f / 128.0f));  // d = 1/128 is exact
}

TEST(GgufWriterTest, OpenNamesTheFileOnErrors) {
  test::TempDir dir;
  test::expect_error([&] { GgufFile::open(dir.path() / "none.gguf"); }, ErrorCode::kModelFormat,
                     {"none.gguf", "cannot open"});
  std::ofstream(dir.path() / "junk.gguf") << "this is not gguf at all, not even close....";
  test::expect_error([&] { GgufFile::open(dir.path() / "junk.gguf"); }, ErrorCode::kModelFormat,
                     {"junk.gguf", "not the GGUF magic"});
}

}  // namespace
}  // namespace conveyor
