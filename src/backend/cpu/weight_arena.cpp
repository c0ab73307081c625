// WeightArena: anonymous mappings carved into tensors (weight_arena.hpp).
#include "backend/cpu/weight_arena.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>

#include "core/check.hpp"

namespace conveyor::cpu {

namespace {

constexpr std::size_t kHugePage = std::size_t{2} << 20;
// Chunks of at least this size: few mappings, little tail left unused.
constexpr std::size_t kMinChunk = std::size_t{64} << 20;
constexpr std::size_t kAlign = 64;

std::size_t round_up(std::size_t n, std::size_t to) {
  return (n + to - 1) / to * to;
}

}  // namespace

WeightArena::~WeightArena() {
  for (const Chunk& chunk : chunks_)
    ::munmap(chunk.base, chunk.size);
}

std::span<std::byte> WeightArena::allocate(std::size_t bytes) {
  if (bytes == 0) return {};
  const std::size_t need = round_up(bytes, kAlign);
  if (chunks_.empty() || chunks_.back().size - chunks_.back().used < need) {
    const std::size_t size = round_up(std::max(need, kMinChunk), kHugePage);
    // Map one huge page more and trim, so the chunk starts on a huge-page boundary.
    void* raw = ::mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) {
      fail(ErrorCode::kOutOfMemory,
           "could not map {:.1f} MiB of host memory for a stage's weights; free memory, use "
           "--dtype bf16 or more processes (mpirun)",
           static_cast<double>(size) / (1 << 20));
    }
    const auto start = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t aligned = round_up(start, kHugePage);
    if (aligned > start) ::munmap(raw, aligned - start);
    const std::uintptr_t end = start + size + kHugePage;
    if (end > aligned + size)
      ::munmap(reinterpret_cast<void*>(aligned + size), end - aligned - size);
    auto* base = reinterpret_cast<std::byte*>(aligned);
    if (huge_pages_) ::madvise(base, size, MADV_HUGEPAGE);  // a hint: refused where THP is off
    chunks_.push_back(Chunk{.base = base, .size = size, .used = 0});
  }
  Chunk& chunk = chunks_.back();
  const std::span<std::byte> out(chunk.base + chunk.used, bytes);
  chunk.used += need;
  return out;
}

std::size_t WeightArena::bytes_mapped() const {
  std::size_t total = 0;
  for (const Chunk& chunk : chunks_)
    total += chunk.size;
  return total;
}

}  // namespace conveyor::cpu
