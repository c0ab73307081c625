// .npy writing and reading of float32 matrices.
#include "observe/npy.hpp"

#include <cstring>
#include <fstream>
#include <regex>
#include <string>

#include "core/check.hpp"
#include "core/file_io.hpp"

namespace conveyor {

namespace {
constexpr char kMagic[] = "\x93NUMPY";
}

void write_npy_f32(const std::filesystem::path& path, std::span<const float> data, int64_t rows,
                   int64_t cols) {
  if (rows < 0 || cols < 0 || static_cast<int64_t>(data.size()) != rows * cols) {
    fail(ErrorCode::kInternal, "npy write of {} floats as [{}, {}]", data.size(), rows, cols);
  }
  std::string header =
      fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", rows, cols);
  // Magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::string bytes(kMagic, 6);
  bytes.push_back(1);  // format version 1.0
  bytes.push_back(0);
  const uint16_t length = static_cast<uint16_t>(header.size());
  bytes.push_back(static_cast<char>(length & 0xff));
  bytes.push_back(static_cast<char>(length >> 8));
  bytes += header;
  bytes.append(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(float));
  write_file(path, bytes, ".npy array");
}

NpyMatrix read_npy_f32(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ErrorCode::kModelFormat, "cannot open {}", path.string());
  char prefix[10];
  in.read(prefix, 10);
  if (!in || std::memcmp(prefix, kMagic, 6) != 0) {
    fail(ErrorCode::kModelFormat, "{} is not a .npy file (bad magic)", path.string());
  }
  size_t header_length = static_cast<uint8_t>(prefix[8]) | (static_cast<uint8_t>(prefix[9]) << 8);
  if (prefix[6] != 1) {  // versions 2 and 3 carry a 4-byte length
    char more[2];
    in.read(more, 2);
    header_length |= (static_cast<size_t>(static_cast<uint8_t>(more[0])) << 16) |
                     (static_cast<size_t>(static_cast<uint8_t>(more[1])) << 24);
  }
  std::string header(header_length, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_length));
  std::smatch match;
  if (!std::regex_search(header, std::regex("'descr':\\s*'<f4'")) ||
      !std::regex_search(header, std::regex("'fortran_order':\\s*False")) ||
      !std::regex_search(header, match, std::regex("'shape':\\s*\\((\\d+),\\s*(\\d+),?\\)"))) {
    fail(ErrorCode::kModelFormat,
         "{}: expected a 2-D little-endian float32 C-order array, header {}", path.string(),
         header);
  }
  NpyMatrix m;
  m.rows = std::stoll(match[1].str());
  m.cols = std::stoll(match[2].str());
  m.data.resize(static_cast<size_t>(m.rows * m.cols));
  in.read(reinterpret_cast<char*>(m.data.data()),
          static_cast<std::streamsize>(m.data.size() * sizeof(float)));
  if (!in) fail(ErrorCode::kModelFormat, "{} is truncated", path.string());
  return m;
}

}  // namespace conveyor
