// Tests of the safetensors reader (every header validation branch, mmap'd files, lazy shards,
// dtype conversion) and of SafeTensorsWriter (layout and write -> read round trips).
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/test_util.hpp"
#include "conveyor/error.hpp"
#include "conveyor/safetensors.hpp"
#include "core/dtype_convert.hpp"
#include "model/safetensors_writer.hpp"

namespace {

using conveyor::DType;
using conveyor::ErrorCode;
using conveyor::parse_safetensors;
using conveyor::SafeTensors;
using conveyor::SafeTensorsFile;
using conveyor::SafeTensorsWriter;
using conveyor::TensorInfo;
using conveyor::test::error_of;
using json = nlohmann::json;
using ::testing::HasSubstr;

// A file image: 8-byte little-endian length, the header text, then `data_bytes` bytes.
std::vector<std::byte> image(const std::string& header, std::size_t data_bytes,
                             uint64_t declared_length) {
  std::vector<std::byte> out(8 + header.size() + data_bytes, std::byte{0});
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<std::byte>((declared_length >> (8 * i)) & 0xff);
  std::memcpy(out.data() + 8, header.data(), header.size());
  for (std::size_t i = 0; i < data_bytes; ++i) {
    out[8 + header.size() + i] = static_cast<std::byte>(i & 0xff);
  }
  return out;
}
std::vector<std::byte> image(const std::string& header, std::size_t data_bytes) {
  return image(header, data_bytes, header.size());
}

// Expects parse_safetensors to fail with kModelFormat and every one of `parts` in the message.
void expect_rejected(std::span<const std::byte> file, std::initializer_list<std::string> parts) {
  try {
    parse_safetensors(file, "bad.safetensors");
    ADD_FAILURE() << "expected an error";
  } catch (const conveyor::Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kModelFormat) << e.what();
    EXPECT_THAT(e.what(), HasSubstr("bad.safetensors"));
    for (const std::string& part : parts)
      EXPECT_THAT(e.what(), HasSubstr(part));
  }
}
void expect_rejected(const json& header, std::size_t data_bytes,
                     std::initializer_list<std::string> parts) {
  const std::vector<std::byte> file = image(header.dump(), data_bytes);
  expect_rejected(file, parts);
}

json entry(const char* dtype, std::vector<int64_t> shape, uint64_t begin, uint64_t end) {
  return {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, end}}};
}

void write_file(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

TEST(ParseSafetensors, ValidHeaderSortedByName) {
  json header = {{"__metadata__", {{"format", "pt"}}},
                 {"zeta", entry("F32", {2, 3}, 0, 24)},
                 {"alpha", entry("BF16", {4}, 24, 32)},
                 {"empty", entry("F16", {0, 5}, 32, 32)}};
  const std::vector<std::byte> file = image(header.dump(), 32);
  const std::vector<TensorInfo> tensors = parse_safetensors(file, "ok.safetensors");
  ASSERT_EQ(tensors.size(), 3u);
  EXPECT_EQ(tensors[0].name, "alpha");
  EXPECT_EQ(tensors[0].dtype, DType::kBF16);
  EXPECT_EQ(tensors[0].shape, std::vector<int64_t>{4});
  EXPECT_EQ(tensors[0].data_begin, 24u);
  EXPECT_EQ(tensors[0].data_end, 32u);
  EXPECT_EQ(tensors[1].name, "empty");
  EXPECT_EQ(tensors[1].numel(), 0);
  EXPECT_EQ(tensors[2].name, "zeta");
  EXPECT_EQ(tensors[2].numel(), 6);
  EXPECT_EQ(tensors[2].dtype, DType::kF32);

  // A scalar (shape []) holds one element; trailing spaces pad the header.
  json scalar = {{"s", entry("F32", {}, 0, 4)}};
  const std::vector<std::byte> padded = image(scalar.dump() + "      ", 4);
  EXPECT_EQ(parse_safetensors(padded, "x").at(0).numel(), 1);
}

TEST(ParseSafetensors, RejectsTruncatedAndOversizedHeaders) {
  const std::vector<std::byte> tiny(5, std::byte{0});
  expect_rejected(tiny, {"5 bytes", "8-byte"});
  expect_rejected(std::span<const std::byte>(), {"0 bytes"});
  // Header length larger than what follows it.
  expect_rejected(image("{}", 0, 3), {"header length 3", "2 bytes"});
  expect_rejected(image("{}", 10, 1000), {"header length 1000", "12 bytes"});
  // Over the 100 MB limit, even before looking at the file size.
  expect_rejected(image("{}", 0, 200'000'000), {"200000000", "100000000"});
  expect_rejected(image("{}", 0, ~uint64_t{0}), {"18446744073709551615"});
}

TEST(ParseSafetensors, RejectsHeadersThatAreNotObjects) {
  expect_rejected(image("{\"a\": ", 0), {"not valid JSON"});
  expect_rejected(image("\xff\xfe", 0), {"not valid JSON"});
  expect_rejected(image("[1, 2]", 0), {"JSON object", "array"});
  expect_rejected(image("42", 0), {"JSON object", "number"});
  expect_rejected(image("", 0), {"not valid JSON"});
  // A number too large for a double: nlohmann throws out_of_range, not parse_error.
  expect_rejected(image("{\"s\": 4e444}", 0), {"not valid JSON"});
}

TEST(ParseSafetensors, RejectsBadMetadata) {
  expect_rejected(json{{"__metadata__", json::array()}}, 0, {"__metadata__", "array"});
  expect_rejected(json{{"__metadata__", {{"format", 1}}}}, 0,
                  {"__metadata__", "format", "string", "number"});
}

TEST(ParseSafetensors, RejectsBadDtypes) {
  expect_rejected(json{{"t", entry("I64", {2}, 0, 16)}}, 16,
                  {"\"t\"", "unsupported dtype I64", "F32/F16/BF16"});
  expect_rejected(json{{"t", entry("F64", {2}, 0, 16)}}, 16, {"unsupported dtype F64"});
  expect_rejected(json{{"t", entry("U8", {2}, 0, 2)}}, 2, {"unsupported dtype U8"});
  expect_rejected(json{{"t", entry("Q4_K", {2}, 0, 2)}}, 2, {"unknown dtype", "Q4_K"});
  json no_dtype = {{"t", {{"shape", {1}}, {"data_offsets", {0, 4}}}}};
  expect_rejected(no_dtype, 4, {"\"t\"", "dtype"});
  json number_dtype = {{"t", {{"dtype", 5}, {"shape", {1}}, {"data_offsets", {0, 4}}}}};
  expect_rejected(number_dtype, 4, {"\"t\"", "dtype", "5"});
  expect_rejected(json{{"t", "F32"}}, 0, {"\"t\"", "object", "string"});
}

TEST(ParseSafetensors, RejectsBadShapes) {
  json not_array = {{"t", {{"dtype", "F32"}, {"shape", 4}, {"data_offsets", {0, 16}}}}};
  expect_rejected(not_array, 16, {"\"t\"", "shape"});
  json missing = {{"t", {{"dtype", "F32"}, {"data_offsets", {0, 16}}}}};
  expect_rejected(missing, 16, {"\"t\"", "shape", "nothing"});
  expect_rejected(json{{"t", entry("F32", {2, -2}, 0, 16)}}, 16, {"\"t\"", "-2", "non-negative"});
  json fractional = {{"t", {{"dtype", "F32"}, {"shape", {1.5}}, {"data_offsets", {0, 4}}}}};
  expect_rejected(fractional, 4, {"\"t\"", "1.5"});
  json string_dim = {{"t", {{"dtype", "F32"}, {"shape", {"4"}}, {"data_offsets", {0, 16}}}}};
  expect_rejected(string_dim, 16, {"\"t\"", "\"4\""});
}

TEST(ParseSafetensors, RejectsElementCountOverflow) {
  // 2^32 * 2^32 overflows 64 bits; a wrapped product could otherwise match a small span.
  json overflow = {{"t", entry("F32", {int64_t{1} << 32, int64_t{1} << 32, 0}, 0, 0)}};
  expect_rejected(overflow, 0, {"\"t\"", "overflows"});
  // numel fits but numel * 4 bytes does not.
  json bytes_overflow = {{"t", entry("F32", {int64_t{1} << 62}, 0, 0)}};
  expect_rejected(bytes_overflow, 0, {"\"t\"", "overflows"});
}

TEST(ParseSafetensors, RejectsBadOffsets) {
  json missing = {{"t", {{"dtype", "F32"}, {"shape", {1}}}}};
  expect_rejected(missing, 4, {"\"t\"", "data_offsets"});
  json three = {{"t", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, 4, 8}}}}};
  expect_rejected(three, 8, {"\"t\"", "[begin, end]"});
  json negative = {{"t", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {-4, 0}}}}};
  expect_rejected(negative, 8, {"\"t\"", "non-negative"});
  expect_rejected(json{{"t", entry("F32", {1}, 8, 4)}}, 8, {"\"t\"", "begin 8 > end 4"});
  expect_rejected(json{{"t", entry("F32", {4}, 0, 16)}}, 12,
                  {"\"t\"", "end 16", "12 bytes", "truncated"});
  expect_rejected(json{{"t", entry("F32", {3}, 0, 16)}}, 16,
                  {"\"t\"", "spans 16 bytes", "needs 12 bytes"});
  expect_rejected(json{{"t", entry("BF16", {3}, 0, 12)}}, 12, {"spans 12 bytes", "needs 6"});
}

TEST(ParseSafetensors, RejectsOverlappingTensors) {
  json overlap = {{"a", entry("F32", {4}, 0, 16)}, {"b", entry("F32", {2}, 8, 16)}};
  expect_rejected(overlap, 16, {"\"a\"", "\"b\"", "overlap"});
  json same = {{"a", entry("F32", {2}, 0, 8)}, {"b", entry("F16", {4}, 0, 8)}};
  expect_rejected(same, 8, {"overlap"});
  // Adjacent ranges and empty tensors anywhere are fine.
  json adjacent = {{"a", entry("F32", {2}, 0, 8)},
                   {"b", entry("F32", {2}, 8, 16)},
                   {"c", entry("F32", {0}, 4, 4)}};
  EXPECT_EQ(parse_safetensors(image(adjacent.dump(), 16), "x").size(), 3u);
}

class SafeTensorsFiles : public ::testing::Test {
 protected:
  conveyor::test::TempDir dir_{"conveyor-safetensors"};
};

TEST_F(SafeTensorsFiles, WriterLayoutAndRoundTripForAllDtypes) {
  const std::vector<float> values = {1.0f, -2.5f, 0.333333f, 1e-3f, 65504.0f, -0.0f};
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(std::string(conveyor::dtype_name(dtype)));
    SafeTensorsWriter writer;
    writer.add("b.weight", dtype, {2, 3}, values);
    writer.add("a.bias", dtype, {3}, std::vector<float>{7.0f, 8.0f, 9.0f});
    writer.add("c", dtype, {0}, std::vector<float>{});
    EXPECT_EQ(writer.data_bytes(), 9 * conveyor::dtype_size(dtype));
    const std::vector<std::byte> bytes = writer.serialize();

    uint64_t header_size = 0;
    std::memcpy(&header_size, bytes.data(), 8);
    EXPECT_EQ((8 + header_size) % 8, 0u);
    EXPECT_EQ(bytes.size(), 8 + header_size + writer.data_bytes());
    const json header = json::parse(reinterpret_cast<const char*>(bytes.data()) + 8,
                                    reinterpret_cast<const char*>(bytes.data()) + 8 + header_size);
    EXPECT_EQ(header.at("__metadata__"), (json{{"format", "pt"}}));
    // Sorted by name, contiguous from 0.
    const uint64_t elem = conveyor::dtype_size(dtype);
    EXPECT_EQ(header.at("a.bias").at("data_offsets"), (json{0, 3 * elem}));
    EXPECT_EQ(header.at("b.weight").at("data_offsets"), (json{3 * elem, 9 * elem}));
    EXPECT_EQ(header.at("c").at("data_offsets"), (json{9 * elem, 9 * elem}));
    EXPECT_EQ(header.at("b.weight").at("dtype"), std::string(conveyor::dtype_name(dtype)));

    writer.write(dir_.path() / "model.safetensors");
    const SafeTensors tensors = SafeTensors::open(dir_.path());
    const std::vector<int64_t> shape = {2, 3};
    const std::vector<float> back = tensors.load_f32("b.weight", shape);
    ASSERT_EQ(back.size(), values.size());
    for (std::size_t i = 0; i < values.size(); ++i) {
      float expected = values[i];
      if (dtype == DType::kF16) expected = conveyor::f16_to_f32(conveyor::f32_to_f16(values[i]));
      if (dtype == DType::kBF16) expected = conveyor::bf16_to_f32(conveyor::f32_to_bf16(values[i]));
      EXPECT_EQ(back[i], expected) << i;
      EXPECT_NEAR(back[i], values[i], std::fabs(values[i]) * (dtype == DType::kBF16 ? 4e-3 : 1e-3));
    }
    EXPECT_EQ(tensors.info("a.bias").dtype, dtype);
    EXPECT_EQ(tensors.load_f32("a.bias", std::vector<int64_t>{3}),
              (std::vector<float>{7.0f, 8.0f, 9.0f}));
    EXPECT_EQ(std::signbit(back[5]), true);  // -0.0 keeps its sign
  }
}

// The values load_f32 returns, read from a stored tensor's bytes.
std::vector<float> stored_values(const conveyor::StoredTensor& t, DType dtype) {
  std::vector<float> out(t.bytes.size() / conveyor::dtype_size(dtype));
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (dtype == DType::kF32) {
      out[i] = reinterpret_cast<const float*>(t.bytes.data())[i];
    } else {
      out[i] = conveyor::bf16_to_f32(reinterpret_cast<const uint16_t*>(t.bytes.data())[i]);
    }
  }
  return out;
}

TEST_F(SafeTensorsFiles, StoredTensorsAreTheFileBytesInPlaceWhenTheDtypeMatches) {
  const std::vector<float> values = {1.0f, -2.5f, 0.333333f, 1e-3f, 65504.0f, -0.0f};
  const std::vector<int64_t> shape = {2, 3};
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(std::string(conveyor::dtype_name(dtype)));
    SafeTensorsWriter writer;
    writer.add("w", dtype, shape, values);
    writer.write(dir_.path() / "model.safetensors");
    std::optional<conveyor::StoredTensor> kept;
    {
      const SafeTensors tensors = SafeTensors::open(dir_.path());
      const std::vector<float> loaded = tensors.load_f32("w", shape);
      for (DType want : {DType::kF32, DType::kF16, DType::kBF16}) {
        std::optional<conveyor::StoredTensor> t = tensors.stored("w", shape, want);
        // In place only for what a backend computes with (f32, bf16), and only as stored.
        const bool expected = want == dtype && want != DType::kF16;
        ASSERT_EQ(t.has_value(), expected) << conveyor::dtype_name(want);
        if (!t) continue;
        EXPECT_EQ(t->bytes.size(), values.size() * conveyor::dtype_size(dtype));
        EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t->bytes.data()) % conveyor::dtype_size(dtype),
                  0u);
        EXPECT_EQ(stored_values(*t, dtype), loaded);
        kept = std::move(t);
      }
      // The shape is checked as load_f32 checks it.
      EXPECT_THAT(error_of([&] {
                    (void)tensors.stored("w", std::vector<int64_t>{3, 2}, dtype);
                  }),
                  HasSubstr("has shape [2, 3] but config.json implies [3, 2]"));
    }
    // The mapping outlives the SafeTensors that handed the tensor out.
    if (kept) {
      const std::vector<float> after = stored_values(*kept, dtype);
      EXPECT_EQ(after[1],
                dtype == DType::kF32 ? -2.5f : conveyor::bf16_to_f32(conveyor::f32_to_bf16(-2.5f)));
    }
  }
}

TEST_F(SafeTensorsFiles, AMisalignedTensorIsCopiedNotUsedInPlace) {
  // The data section starts at 8 + header length: pad the header so it is 2 mod 4.
  std::string header = json{{"w", entry("F32", {2}, 0, 8)}}.dump();
  while ((8 + header.size()) % 4 != 2)
    header += ' ';
  std::vector<std::byte> file = image(header, 8);
  const float values[2] = {1.5f, -4.0f};
  std::memcpy(file.data() + 8 + header.size(), values, sizeof values);
  write_file(dir_.path() / "model.safetensors", file);
  const SafeTensors tensors = SafeTensors::open(dir_.path());
  const std::vector<int64_t> shape = {2};
  EXPECT_FALSE(tensors.stored("w", shape, DType::kF32).has_value());
  EXPECT_EQ(tensors.load_f32("w", shape), (std::vector<float>{1.5f, -4.0f}));
}

TEST_F(SafeTensorsFiles, HalfFormatsDecodedFromRawBits) {
  // Bit patterns written by hand, independent of the writer's conversion.
  const uint16_t f16_bits[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x3555, 0xFC00};
  const float f16_expected[] = {1.0f, -2.0f, 65504.0f, 5.9604645e-08f, 0.33325195f, -INFINITY};
  const uint16_t bf16_bits[] = {0x3F80, 0xC040, 0x4049, 0x0001, 0x7F80, 0x8000};
  const float bf16_expected[] = {1.0f, -3.0f, 3.140625f, 9.18355e-41f, INFINITY, -0.0f};
  json header = {{"h", entry("F16", {6}, 0, 12)}, {"b", entry("BF16", {2, 3}, 12, 24)}};
  std::vector<std::byte> file = image(header.dump(), 24);
  const std::size_t data = 8 + header.dump().size();
  std::memcpy(file.data() + data, f16_bits, 12);
  std::memcpy(file.data() + data + 12, bf16_bits, 12);
  write_file(dir_.path() / "model.safetensors", file);

  const SafeTensors tensors = SafeTensors::open(dir_.path());
  const std::vector<float> h = tensors.load_f32("h", std::vector<int64_t>{6});
  const std::vector<float> b = tensors.load_f32("b", std::vector<int64_t>{2, 3});
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(h[i], f16_expected[i]) << i;
    EXPECT_EQ(b[i], bf16_expected[i]) << i;
  }
  EXPECT_TRUE(std::signbit(b[5]));
}

TEST_F(SafeTensorsFiles, UnalignedF32DataIsRead) {
  // A 3-byte header (no padding) puts the data at offset 11.
  const std::string header = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::vector<std::byte> file = image(header, 8);
  const float values[] = {3.5f, -1.25f};
  std::memcpy(file.data() + 8 + header.size(), values, 8);
  write_file(dir_.path() / "model.safetensors", file);
  const SafeTensors tensors = SafeTensors::open(dir_.path());
  EXPECT_EQ(tensors.load_f32("t", std::vector<int64_t>{2}), (std::vector<float>{3.5f, -1.25f}));
}

TEST_F(SafeTensorsFiles, FileOpenFindBytesAndMove) {
  SafeTensorsWriter writer;
  writer.add("x", DType::kF32, {2}, std::vector<float>{1.0f, 2.0f});
  writer.add("y", DType::kBF16, {1}, std::vector<float>{4.0f});
  writer.write(dir_.path() / "file.safetensors");

  SafeTensorsFile file = SafeTensorsFile::open(dir_.path() / "file.safetensors");
  ASSERT_EQ(file.tensors().size(), 2u);
  EXPECT_EQ(file.find("z"), nullptr);
  const TensorInfo* x = file.find("x");
  ASSERT_NE(x, nullptr);
  std::span<const std::byte> bytes = file.bytes(*x);
  ASSERT_EQ(bytes.size(), 8u);
  float first;
  std::memcpy(&first, bytes.data(), 4);
  EXPECT_EQ(first, 1.0f);

  SafeTensorsFile moved = std::move(file);
  EXPECT_EQ(moved.path(), dir_.path() / "file.safetensors");
  ASSERT_NE(moved.find("y"), nullptr);
  EXPECT_EQ(moved.bytes(*moved.find("y")).size(), 2u);
  SafeTensorsFile other = SafeTensorsFile::open(dir_.path() / "file.safetensors");
  other = std::move(moved);
  EXPECT_EQ(other.tensors().size(), 2u);

  TensorInfo foreign = *other.find("x");
  foreign.data_end = 1 << 20;
  EXPECT_THROW(other.bytes(foreign), conveyor::Error);
}

TEST_F(SafeTensorsFiles, OpenErrorsNameThePath) {
  const std::string missing =
      error_of([&] { SafeTensorsFile::open(dir_.path() / "nope.safetensors"); });
  EXPECT_THAT(missing, HasSubstr("nope.safetensors"));
  EXPECT_THAT(missing, HasSubstr("conveyor-make-model"));

  const std::string not_regular = error_of([&] { SafeTensorsFile::open(dir_.path()); });
  EXPECT_THAT(not_regular, HasSubstr("not a regular file"));

  write_file(dir_.path() / "empty.safetensors", {});
  const std::string empty =
      error_of([&] { SafeTensorsFile::open(dir_.path() / "empty.safetensors"); });
  EXPECT_THAT(empty, HasSubstr("empty.safetensors"));
  EXPECT_THAT(empty, HasSubstr("0 bytes"));

  const std::string no_dir = error_of([&] { SafeTensors::open(dir_.path() / "no-such-dir"); });
  EXPECT_THAT(no_dir, HasSubstr("no-such-dir"));
  EXPECT_THAT(no_dir, HasSubstr("conveyor-make-model"));

  const std::string no_model = error_of([&] { SafeTensors::open(dir_.path()); });
  EXPECT_THAT(no_model, HasSubstr("model.safetensors"));
  EXPECT_THAT(no_model, HasSubstr("model.safetensors.index.json"));
  EXPECT_THAT(no_model, HasSubstr(dir_.path().string()));
}

TEST_F(SafeTensorsFiles, ShapeMismatchAndMissingTensorMessages) {
  SafeTensorsWriter writer;
  writer.add("w", DType::kF32, {4, 8}, std::vector<float>(32, 1.0f));
  writer.write(dir_.path() / "model.safetensors");
  const SafeTensors tensors = SafeTensors::open(dir_.path());
  EXPECT_TRUE(tensors.contains("w"));
  EXPECT_FALSE(tensors.contains("v"));

  const std::string mismatch = error_of([&] { tensors.load_f32("w", std::vector<int64_t>{8, 4}); });
  EXPECT_THAT(mismatch, HasSubstr("\"w\""));
  EXPECT_THAT(mismatch, HasSubstr("[4, 8]"));
  EXPECT_THAT(mismatch, HasSubstr("[8, 4]"));
  EXPECT_THAT(mismatch, HasSubstr((dir_.path() / "model.safetensors").string()));
  const std::string rank = error_of([&] { tensors.load_f32("w", std::vector<int64_t>{32}); });
  EXPECT_THAT(rank, HasSubstr("[32]"));

  try {
    tensors.info("v");
    FAIL() << "expected an error";
  } catch (const conveyor::Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kModelFormat);
    EXPECT_THAT(e.what(), HasSubstr("\"v\""));
    EXPECT_THAT(e.what(), HasSubstr("model.safetensors"));
  }
}

// Three shards of two tensors each, plus the index.
class ShardedModel : public SafeTensorsFiles {
 protected:
  void SetUp() override {
    json weight_map = json::object();
    for (int shard = 0; shard < 3; ++shard) {
      SafeTensorsWriter writer;
      const std::string file = fmt::format("model-{:05d}-of-00003.safetensors", shard + 1);
      for (int t = 0; t < 2; ++t) {
        const std::string name = fmt::format("layer{}.t{}", shard, t);
        writer.add(name, DType::kBF16, {2}, std::vector<float>{float(shard), float(t)});
        weight_map[name] = file;
      }
      writer.write(dir_.path() / file);
    }
    write_index(json{{"metadata", {{"total_size", 24}}}, {"weight_map", weight_map}});
  }
  void write_index(const json& index) {
    std::ofstream out(dir_.path() / "model.safetensors.index.json");
    out << index.dump();
  }
};

TEST_F(ShardedModel, MapsShardsLazily) {
  const SafeTensors tensors = SafeTensors::open(dir_.path());
  EXPECT_EQ(tensors.n_mapped_files(), 0u);
  EXPECT_TRUE(tensors.contains("layer2.t1"));  // answered from the index
  EXPECT_FALSE(tensors.contains("layer3.t0"));
  EXPECT_EQ(tensors.n_mapped_files(), 0u);
  EXPECT_EQ(tensors.load_f32("layer1.t1", std::vector<int64_t>{2}), (std::vector<float>{1, 1}));
  EXPECT_EQ(tensors.n_mapped_files(), 1u);
  EXPECT_EQ(tensors.load_f32("layer1.t0", std::vector<int64_t>{2}), (std::vector<float>{1, 0}));
  EXPECT_EQ(tensors.n_mapped_files(), 1u);
  EXPECT_EQ(tensors.info("layer2.t0").dtype, DType::kBF16);
  EXPECT_EQ(tensors.n_mapped_files(), 2u);
  const std::string missing = error_of([&] { tensors.info("layer3.t0"); });
  EXPECT_THAT(missing, HasSubstr("layer3.t0"));
  EXPECT_THAT(missing, HasSubstr("model.safetensors.index.json"));

  SafeTensors moved = std::move(const_cast<SafeTensors&>(tensors));
  EXPECT_EQ(moved.n_mapped_files(), 2u);
}

TEST_F(ShardedModel, ConcurrentFirstAccessMapsEachShardOnce) {
  const SafeTensors tensors = SafeTensors::open(dir_.path());
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      const int shard = i % 3;
      auto v = tensors.load_f32(fmt::format("layer{}.t1", shard), std::vector<int64_t>{2});
      if (v == std::vector<float>{float(shard), 1.0f}) ++good;
    });
  }
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(good.load(), 8);
  EXPECT_EQ(tensors.n_mapped_files(), 3u);
}

TEST_F(ShardedModel, IndexErrors) {
  json index = {{"weight_map", {{"layer0.t0", "../model-00001-of-00003.safetensors"}}}};
  write_index(index);
  std::string error = error_of([&] { SafeTensors::open(dir_.path()); });
  EXPECT_THAT(error, HasSubstr("../model-00001-of-00003.safetensors"));
  EXPECT_THAT(error, HasSubstr("plain file name"));

  write_index(json{{"weight_map", {{"layer0.t0", "/etc/passwd"}}}});
  EXPECT_THAT(error_of([&] { SafeTensors::open(dir_.path()); }), HasSubstr("plain file name"));

  write_index(json{{"weight_map", {{"layer0.t0", "model-00009-of-00009.safetensors"}}}});
  error = error_of([&] { SafeTensors::open(dir_.path()); });
  EXPECT_THAT(error, HasSubstr("model-00009-of-00009.safetensors"));
  EXPECT_THAT(error, HasSubstr("missing"));

  write_index(json{{"weight_map", {{"layer0.t0", 3}}}});
  EXPECT_THAT(error_of([&] { SafeTensors::open(dir_.path()); }), HasSubstr("layer0.t0"));

  write_index(json{{"metadata", {}}});
  EXPECT_THAT(error_of([&] { SafeTensors::open(dir_.path()); }), HasSubstr("weight_map"));

  {
    std::ofstream out(dir_.path() / "model.safetensors.index.json");
    out << "{\"weight_map\": {";
  }
  error = error_of([&] { SafeTensors::open(dir_.path()); });
  EXPECT_THAT(error, HasSubstr("model.safetensors.index.json"));
  EXPECT_THAT(error, HasSubstr("malformed JSON"));

  // The index promises a tensor its shard does not hold: found when it is accessed.
  write_index(json{{"weight_map",
                    {{"layer0.t0", "model-00001-of-00003.safetensors"},
                     {"layer9.t0", "model-00002-of-00003.safetensors"}}}});
  const SafeTensors tensors = SafeTensors::open(dir_.path());
  EXPECT_TRUE(tensors.contains("layer9.t0"));
  error = error_of([&] { tensors.load_f32("layer9.t0", std::vector<int64_t>{2}); });
  EXPECT_THAT(error, HasSubstr("layer9.t0"));
  EXPECT_THAT(error, HasSubstr("model-00002-of-00003.safetensors"));
  EXPECT_THAT(error, HasSubstr("does not contain"));
}

TEST(SafeTensorsWriter, RejectsBadEntries) {
  SafeTensorsWriter writer;
  writer.add("a", DType::kF32, {2}, std::vector<float>{1, 2});
  EXPECT_THAT(error_of([&] { writer.add("a", DType::kF32, {1}, std::vector<float>{1}); }),
              HasSubstr("twice"));
  EXPECT_THAT(error_of([&] { writer.add("b", DType::kF32, {3}, std::vector<float>{1}); }),
              HasSubstr("1 values"));
  EXPECT_THAT(error_of([&] { writer.add("c", DType::kF32, {-1}, std::vector<float>{}); }),
              HasSubstr("negative"));
  EXPECT_THAT(error_of([&] { writer.add("__metadata__", DType::kF32, {0}, std::vector<float>{}); }),
              HasSubstr("reserved"));
  writer.add("p", DType::kF16, {3},
             SafeTensorsWriter::Producer([] { return std::vector<float>{1.0f}; }));
  EXPECT_THAT(error_of([&] { writer.serialize(); }), HasSubstr("producer returned 1 values"));
}

}  // namespace
