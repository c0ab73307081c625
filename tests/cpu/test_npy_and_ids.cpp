// .npy round trips and token-id parsing.
#include <gtest/gtest.h>

#include <fstream>

#include "common/test_util.hpp"
#include "conveyor/error.hpp"
#include "core/int_list.hpp"
#include "observe/npy.hpp"

namespace conveyor {
namespace {

TEST(Npy, RoundTripAndHeaderAlignment) {
  test::TempDir dir;
  std::vector<float> data(3 * 5);
  for (size_t i = 0; i < data.size(); ++i)
    data[i] = static_cast<float>(i) * 0.25f - 1.0f;
  const auto path = dir.path() / "x.npy";
  write_npy_f32(path, data, 3, 5);
  EXPECT_EQ(std::filesystem::file_size(path) % 64, (data.size() * 4) % 64);
  NpyMatrix m = read_npy_f32(path);
  EXPECT_EQ(m.rows, 3);
  EXPECT_EQ(m.cols, 5);
  EXPECT_EQ(m.data, data);
}

TEST(Npy, RejectsOtherArrays) {
  test::TempDir dir;
  const auto path = dir.path() / "bad.npy";
  std::ofstream(path) << "not numpy";
  EXPECT_THROW(read_npy_f32(path), Error);
  EXPECT_THROW(write_npy_f32(dir.path() / "missing-dir" / "x.npy", std::vector<float>(1), 1, 1),
               Error);
}

TEST(TokenIds, ParsesCommasAndSpaces) {
  EXPECT_EQ(parse_token_ids("1,2,3", "x"), (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(parse_token_ids(" 4  5,6 ", "x"), (std::vector<int32_t>{4, 5, 6}));
  EXPECT_EQ(parse_token_ids("-1", "x"), (std::vector<int32_t>{-1}));  // range is the engine's job
  EXPECT_TRUE(parse_token_ids("", "x").empty());
}

TEST(TokenIds, NonNumericNamesTheItem) {
  try {
    parse_token_ids("1,2,abc,4", "--prompt-ids");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("--prompt-ids: 'abc' (item 2)"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(parse_token_ids("3.5", "x"), Error);
  EXPECT_THROW(parse_token_ids("99999999999", "x"), Error);
}

TEST(IntLists, EmptyItemsAndOutOfRangeValuesAreErrors) {
  test::expect_invalid([] { parse_token_ids("1,,2", "--prompt-ids"); },
                       {"--prompt-ids", "item 1 is empty"});
  test::expect_invalid([] { parse_token_ids("1,2,", "--prompt-ids"); }, {"item 2 is empty"});
  test::expect_invalid([] { parse_int_list("0,x", "--devices", "CUDA device id", 0, 7); },
                       {"--devices", "'x' (item 1) is not a CUDA device id", "[0, 7]"});
  test::expect_invalid([] { parse_int_list("0,-1", "--devices", "CUDA device id", 0, 7); },
                       {"'-1' (item 1)"});
  EXPECT_EQ(parse_int_list(" 5, 6 7 ", "x", "layer count"), (std::vector<int64_t>{5, 6, 7}));
  EXPECT_TRUE(parse_int_list("  ", "x", "layer count").empty());
}

TEST(TokenIds, FileOfPrompts) {
  test::TempDir dir;
  const auto path = dir.path() / "prompts.txt";
  std::ofstream(path) << "# two prompts\n1,2,3\n\n7 8\n";
  auto prompts = read_token_ids_file(path);
  ASSERT_EQ(prompts.size(), 2u);
  EXPECT_EQ(prompts[1], (std::vector<int32_t>{7, 8}));
  std::ofstream(path) << "1,x\n";
  try {
    read_token_ids_file(path);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 1"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_token_ids_file(dir.path() / "absent.txt"), Error);
}

}  // namespace
}  // namespace conveyor
