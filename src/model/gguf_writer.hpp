// GgufWriter: writes valid GGUF v3 files (metadata, tensor table, aligned data), and
// write_gguf_model: a Llama-family model from Hugging Face tensors to GGUF the way llama.cpp's
// converter lays it out (names, Q/K row permutation, tied head, rope factors). Used by tests,
// benchmarks and conveyor-make-model --gguf.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "conveyor/checkpoint.hpp"
#include "conveyor/gguf.hpp"
#include "conveyor/model_config.hpp"

namespace conveyor {

// Quantizes fp32 values to a ggml type conveyor writes (F32, F16, BF16, Q8_0, Q4_0), like
// ggml's reference quantizers: Q8_0 d = max|x| / 127, Q4_0 d = x_maxabs / -8. values.size() must
// be a multiple of the block size. Throws kInvalidArgument otherwise or for other types.
std::vector<std::byte> quantize_values(uint32_t type, std::span<const float> values);

class GgufWriter {
 public:
  // Produces a tensor's bytes when the file is written (so a large file needs no copy in
  // memory); must return exactly the tensor's byte size.
  using Producer = std::function<std::vector<std::byte>()>;

  void add_u32(std::string key, uint32_t value);
  void add_i32(std::string key, int32_t value);
  void add_u64(std::string key, uint64_t value);
  void add_f32(std::string key, float value);
  void add_bool(std::string key, bool value);
  void add_string(std::string key, std::string_view value);
  void add_strings(std::string key, const std::vector<std::string>& values);
  void add_i32s(std::string key, const std::vector<int32_t>& values);
  void add_f32s(std::string key, const std::vector<float>& values);

  // Adds a tensor of ggml `type` and dims `ne` (ggml order: ne[0] fastest). Throws
  // kInvalidArgument for duplicate names, unknown types or ne[0] not a multiple of the block.
  void add_tensor(std::string name, uint32_t type, std::vector<int64_t> ne, Producer produce);
  void add_tensor(std::string name, uint32_t type, std::vector<int64_t> ne,
                  std::vector<std::byte> data);

  // Drop a metadata entry or tensor added earlier (no-op when absent): for callers that adjust
  // what gguf_model_writer built.
  void erase_kv(std::string_view key);
  void erase_tensor(std::string_view name);

  // Data alignment (written as general.alignment when not 32).
  void set_alignment(uint32_t alignment);

  std::vector<std::byte> serialize() const;
  // Streams the file through `<path>.tmp` and a rename. Returns the bytes written.
  uint64_t write(const std::filesystem::path& path) const;

 private:
  struct Tensor {
    std::string name;
    uint32_t type = 0;
    std::vector<int64_t> ne;
    uint64_t n_bytes = 0;
    Producer produce;
  };
  std::string header() const;  // bytes up to the aligned start of the data section
  void add_kv(std::string key, GgufType type, std::string value);

  std::vector<std::pair<std::string, std::string>> kv_;  // key, type + value bytes
  std::vector<Tensor> tensors_;
  uint32_t alignment_ = 32;
};

struct GgufModelOptions {
  uint32_t matrix_type = static_cast<uint32_t>(GgmlType::kF32);     // 2-D layer weights
  uint32_t embedding_type = static_cast<uint32_t>(GgmlType::kF32);  // token_embd (and output)
  // Tokenizer metadata to embed (tokenizer.ggml.*), e.g. from a vocabulary; may be empty.
  std::function<void(GgufWriter&)> add_tokenizer;
  std::string name = "conveyor test model";
};

// Tokenizer metadata for a model without a real vocabulary (conveyor-make-model's random
// weights): a SentencePiece ("llama") vocabulary of `vocab_size` tokens — <unk>, <s>, </s>, the
// 256 byte tokens <0x00>..<0xFF>, then placeholder words "▁w{id}" — so llama.cpp loads and
// benchmarks the same weights. Text through it is meaningless. Throws kInvalidArgument when
// vocab_size < 259.
std::function<void(GgufWriter&)> placeholder_tokenizer(int64_t vocab_size);

// A writer holding `config` and its weights (read from `tensors`, by Hugging Face name, when the
// file is written) as llama.cpp lays out a model: architecture llama (Llama, Mistral) or qwen2
// metadata, Q/K rows permuted for llama, no output.weight when the head is tied,
// rope_freqs.weight for llama3 rope scaling (the factors Hugging Face's llama3 formula implies).
// `tensors` must outlive the writer.
GgufWriter gguf_model_writer(const ModelConfig& config, const TensorSource& tensors,
                             const GgufModelOptions& options);
// gguf_model_writer(...).write(path); returns the bytes written.
uint64_t write_gguf_model(const ModelConfig& config, const TensorSource& tensors,
                          const GgufModelOptions& options, const std::filesystem::path& path);

}  // namespace conveyor
