// Counter-based random numbers that give the same bits on the host and in CUDA kernels: the
// sampler's (seed, position) draw and the values of random-weight models. Header only, no CUDA
// header: compiled by the host compiler and by nvcc (kernels/*.cu).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CONVEYOR_HOST_DEVICE __host__ __device__
#else
#define CONVEYOR_HOST_DEVICE
#endif

namespace conveyor {

// The splitmix64 finalizer of x + golden gamma: a bijective 64-bit mix, so distinct counters
// give distinct, well-spread outputs.
CONVEYOR_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The sampler's uniform draw in [0, 1) for the token after `position` of a request seeded with
// `seed`: a multiple of 2^-53, identical on the CPU and the GPU.
CONVEYOR_HOST_DEVICE inline double sampling_uniform(uint64_t seed, int64_t position) {
  const uint64_t bits = splitmix64(splitmix64(seed) ^ static_cast<uint64_t>(position));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

// Element `index` of a random-weight tensor keyed by `key`: uniform in
// [mean - half_width, mean + half_width). The uniform is a multiple of 2^-23 in [-1, 1), exact
// in float, and the one rounding is a fused multiply-add (correctly rounded on the host and the
// device), so every platform gets the same float.
CONVEYOR_HOST_DEVICE inline float random_weight(uint64_t key, uint64_t index, float mean,
                                                float half_width) {
  const uint64_t bits = splitmix64(key + index * 0x9e3779b97f4a7c15ull);
  const float unit = static_cast<float>(static_cast<int32_t>(bits >> 40) - (1 << 23)) * 0x1.0p-23f;
  return fmaf(unit, half_width, mean);
}

}  // namespace conveyor
