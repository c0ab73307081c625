// NumPy .npy files of float32 matrices (format version 1.0, little-endian, C order).
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

namespace conveyor {

// Writes data as a float32 array of shape [rows, cols]. Throws conveyor::Error naming the path
// when the file cannot be written.
void write_npy_f32(const std::filesystem::path& path, std::span<const float> data, int64_t rows,
                   int64_t cols);

struct NpyMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> data;  // [rows, cols]
};

// Reads a 2-D little-endian float32 C-order .npy file (what write_npy_f32 and numpy.save of a
// float32 matrix produce). Throws conveyor::Error(kModelFormat) for anything else.
NpyMatrix read_npy_f32(const std::filesystem::path& path);

}  // namespace conveyor
