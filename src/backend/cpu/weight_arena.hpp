// WeightArena: host memory for the weights a CPU stage copies (converted from the checkpoint, or
// drawn), in 2 MiB-aligned anonymous chunks, optionally advised MADV_HUGEPAGE: where transparent
// huge pages are enabled ("always" or "madvise") the decode weight stream then walks 512x fewer
// pages (bench_cpu_ops BM_GemvStream huge:1 against huge:0, docs/benchmarks.md), at the price of
// clearing whole huge pages at load.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

namespace conveyor::cpu {

class WeightArena {
 public:
  explicit WeightArena(bool huge_pages) : huge_pages_(huge_pages) {}
  ~WeightArena();
  WeightArena(const WeightArena&) = delete;
  WeightArena& operator=(const WeightArena&) = delete;

  // `bytes` of zeroed memory, 64-byte aligned, valid while the arena lives. Not thread-safe.
  // Throws conveyor::Error(kOutOfMemory) naming the size when the mapping fails.
  std::span<std::byte> allocate(std::size_t bytes);

  std::size_t bytes_mapped() const;

 private:
  struct Chunk {
    std::byte* base = nullptr;
    std::size_t size = 0;
    std::size_t used = 0;
  };
  bool huge_pages_ = false;
  std::vector<Chunk> chunks_;
};

}  // namespace conveyor::cpu
