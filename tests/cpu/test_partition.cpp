// Tests of Partition: even splits, explicit and parsed counts, their errors, stage_of.
#include <gtest/gtest.h>

#include "common/test_util.hpp"

#include <string>
#include <vector>

#include "conveyor/error.hpp"
#include "conveyor/partition.hpp"

namespace conveyor {
namespace {

using test::expect_invalid;

TEST(Partition, EvenExamples) {
  EXPECT_EQ(Partition::even(10, 4).counts(), (std::vector<int64_t>{3, 3, 2, 2}));
  EXPECT_EQ(Partition::even(32, 4).counts(), (std::vector<int64_t>{8, 8, 8, 8}));
  EXPECT_EQ(Partition::even(5, 2).counts(), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(Partition::even(7, 7).counts(), (std::vector<int64_t>(7, 1)));
  EXPECT_EQ(Partition::even(1, 1).counts(), (std::vector<int64_t>{1}));
  EXPECT_EQ(Partition::even(22, 6).counts(), (std::vector<int64_t>{4, 4, 4, 4, 3, 3}));
}

TEST(Partition, EvenPropertiesForManyShapes) {
  for (int64_t n_layers = 1; n_layers <= 40; ++n_layers) {
    for (int n_stages = 1; n_stages <= n_layers; ++n_stages) {
      SCOPED_TRACE(testing::Message() << n_layers << " layers, " << n_stages << " stages");
      const Partition p = Partition::even(n_layers, n_stages);
      ASSERT_EQ(p.n_stages(), n_stages);
      ASSERT_EQ(p.n_layers(), n_layers);
      const std::vector<int64_t> counts = p.counts();
      int64_t next = 0;
      for (int s = 0; s < n_stages; ++s) {
        const LayerRange& r = p.range(s);
        EXPECT_EQ(r.first, next);
        EXPECT_GE(r.size(), 1);
        next = r.last;
        if (s > 0) {
          EXPECT_LE(counts[s], counts[s - 1]);  // extras go to the first stages
        }
        EXPECT_LE(counts[0] - counts[s], 1);
        EXPECT_EQ(p.has_embedding(s), s == 0);
        EXPECT_EQ(p.has_head(s), s == n_stages - 1);
      }
      EXPECT_EQ(next, n_layers);
      // The last stage (lm_head) never carries an extra layer.
      EXPECT_EQ(counts.back(), n_layers / n_stages);
      for (int64_t layer = 0; layer < n_layers; ++layer) {
        const int s = p.stage_of(layer);
        EXPECT_TRUE(p.range(s).contains(layer)) << "layer " << layer;
      }
    }
  }
}

TEST(Partition, FromCounts) {
  const Partition p = Partition::from_counts(24, {5, 6, 6, 7});
  EXPECT_EQ(p.n_stages(), 4);
  EXPECT_EQ(p.range(0), (LayerRange{0, 5}));
  EXPECT_EQ(p.range(1), (LayerRange{5, 11}));
  EXPECT_EQ(p.range(2), (LayerRange{11, 17}));
  EXPECT_EQ(p.range(3), (LayerRange{17, 24}));
  EXPECT_EQ(p.stage_of(0), 0);
  EXPECT_EQ(p.stage_of(4), 0);
  EXPECT_EQ(p.stage_of(5), 1);
  EXPECT_EQ(p.stage_of(16), 2);
  EXPECT_EQ(p.stage_of(17), 3);
  EXPECT_EQ(p.stage_of(23), 3);
  EXPECT_EQ(p.to_string(), "5,6,6,7");
  EXPECT_EQ(Partition::from_counts(24, {5, 6, 6, 7}), p);
  EXPECT_FALSE(Partition::even(24, 4) == p);
}

TEST(Partition, FromCountsErrors) {
  expect_invalid(
      [] {
        Partition::from_counts(10, {3, 3, 3});
      },
      {"sums to 9", "n_layers = 10", "3,3,3"});
  expect_invalid([] { Partition::from_counts(10, {3, 3, 5}); }, {"sums to 11", "n_layers = 10"});
  expect_invalid([] { Partition::from_counts(10, {5, 0, 5}); }, {"stage 1", "0 layers"});
  expect_invalid([] { Partition::from_counts(10, {6, -1, 5}); }, {"stage 1", "-1 layers"});
  expect_invalid([] { Partition::from_counts(10, {}); }, {"at least 1 stage", "n_stages = 0"});
  expect_invalid([] { Partition::from_counts(2, {1, 1, 0}); }, {"3 stages for 2 layers"});
  expect_invalid([] { Partition::even(3, 4); }, {"4 stages for 3 layers", "at most 3"});
  expect_invalid([] { Partition::even(8, 0); }, {"n_stages = 0"});
  expect_invalid([] { Partition::even(0, 1); }, {"n_layers = 0"});
}

TEST(Partition, Parse) {
  EXPECT_EQ(Partition::parse("5,6,6,7", 24).counts(), (std::vector<int64_t>{5, 6, 6, 7}));
  EXPECT_EQ(Partition::parse(" 3, 3 ,2,2 ", 10).counts(), (std::vector<int64_t>{3, 3, 2, 2}));
  EXPECT_EQ(Partition::parse("12", 12).counts(), (std::vector<int64_t>{12}));
  const Partition p = Partition::even(13, 5);
  EXPECT_EQ(Partition::parse(p.to_string(), 13), p);
}

TEST(Partition, ParseErrors) {
  expect_invalid([] { Partition::parse("5,x,6", 11); }, {"'x'", "token 1", "5,x,6"});
  expect_invalid([] { Partition::parse("5,,6", 11); }, {"token 1", "''"});
  expect_invalid([] { Partition::parse("", 11); }, {"token 0"});
  expect_invalid([] { Partition::parse("5,6.5", 11); }, {"'6.5'"});
  expect_invalid([] { Partition::parse("5,6,", 11); }, {"token 2"});
  expect_invalid([] { Partition::parse("4a,7", 11); }, {"'4a'"});
  expect_invalid([] { Partition::parse("5,6", 12); }, {"sums to 11", "n_layers = 12"});
  expect_invalid([] { Partition::parse("12,-1", 11); }, {"stage 1", "-1 layers"});
}

TEST(Partition, LookupErrors) {
  const Partition p = Partition::even(8, 2);
  expect_invalid([&] { p.stage_of(8); }, {"layer 8", "[0, 8)"});
  expect_invalid([&] { p.stage_of(-1); }, {"layer -1"});
  expect_invalid([&] { p.range(2); }, {"stage 2", "[0, 2)"});
}

TEST(Partition, Describe) {
  const std::string text = Partition::even(10, 4).describe();
  EXPECT_NE(text.find("stage 0: layers [0,3) (3) + embedding"), std::string::npos) << text;
  EXPECT_NE(text.find("stage 3: layers [8,10) (2) + final norm, lm_head"), std::string::npos)
      << text;
  const std::string single = Partition::even(4, 1).describe();
  EXPECT_NE(single.find("+ embedding + final norm, lm_head"), std::string::npos) << single;
}

}  // namespace
}  // namespace conveyor
