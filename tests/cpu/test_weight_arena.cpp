// WeightArena: the CPU stage's memory for copied weights (backend/cpu/weight_arena.hpp).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "backend/cpu/weight_arena.hpp"
#include "common/test_util.hpp"
#include "conveyor/error.hpp"

namespace conveyor::cpu {
namespace {

TEST(WeightArena, AllocationsAreZeroedAlignedAndDisjoint) {
  WeightArena arena(/*huge_pages=*/true);
  EXPECT_TRUE(arena.allocate(0).empty());
  const std::span<std::byte> a = arena.allocate(100);
  const std::span<std::byte> b = arena.allocate(3 << 20);
  ASSERT_EQ(a.size(), 100u);
  ASSERT_EQ(b.size(), std::size_t{3} << 20);
  for (const auto& s : {a, b}) {
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(s.data()) % 64, 0u);
    EXPECT_TRUE(std::all_of(s.begin(), s.end(), [](std::byte x) { return x == std::byte{0}; }));
  }
  // The first chunk starts on a 2 MiB boundary (huge pages can back it).
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a.data()) % (std::uintptr_t{2} << 20), 0u);
  EXPECT_GE(b.data(), a.data() + 128);  // 100 bytes rounded up to 64-byte units
  std::fill(a.begin(), a.end(), std::byte{1});
  std::fill(b.begin(), b.end(), std::byte{2});
  EXPECT_EQ(a.back(), std::byte{1});
  EXPECT_EQ(b.front(), std::byte{2});
  EXPECT_EQ(arena.bytes_mapped(), std::size_t{64} << 20);  // one chunk so far
}

TEST(WeightArena, ATensorLargerThanAChunkGetsItsOwn) {
  WeightArena arena(/*huge_pages=*/true);
  (void)arena.allocate(1000);
  const std::span<std::byte> big = arena.allocate((std::size_t{64} << 20) + 1);
  EXPECT_EQ(big.size(), (std::size_t{64} << 20) + 1);
  big.back() = std::byte{7};
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(big.data()) % (std::uintptr_t{2} << 20), 0u);
  EXPECT_EQ(arena.bytes_mapped(), (std::size_t{64} << 20) + (std::size_t{66} << 20));
}

TEST(WeightArena, AnImpossibleSizeIsAnOutOfMemoryErrorNamingIt) {
  WeightArena arena(/*huge_pages=*/true);
  test::expect_error([&] { (void)arena.allocate(std::numeric_limits<std::size_t>::max() / 4); },
                     ErrorCode::kOutOfMemory, {"could not map", "MiB of host memory"});
}

}  // namespace
}  // namespace conveyor::cpu
