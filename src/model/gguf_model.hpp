// A GGUF file as a conveyor model: Hugging Face tensor names mapped to GGUF ones, dequantized to
// fp32, llama's Q/K rows un-permuted, and the model-level checks that every tensor the config
// implies is present with its shape and a supported type.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "conveyor/checkpoint.hpp"
#include "conveyor/gguf.hpp"
#include "conveyor/model_config.hpp"

namespace conveyor {

// The GGUF name of a Hugging Face tensor name ("model.layers.3.mlp.up_proj.weight" ->
// "blk.3.ffn_up.weight"), or nullopt for names a Llama-family model does not have.
std::optional<std::string> gguf_tensor_name(std::string_view hf_name);

// Undoes llama.cpp's Q/K row permutation in place on a [rows, cols] matrix (cols = 1 for a
// bias): HF row h*D + s*D/2 + i is GGUF row h*D + 2i + s, with D = rows / n_heads.
void unpermute_qk_rows(std::span<float> values, int64_t rows, int64_t cols, int64_t n_heads);
// llama.cpp's permutation itself (what its converter applies), in place.
void permute_qk_rows(std::span<float> values, int64_t rows, int64_t cols, int64_t n_heads);

// Checks the tensor table against `config`: every tensor of the model present, with the shape
// the metadata implies and a type conveyor dequantizes; nothing else but rope_freqs.weight (and
// nothing beyond blk.{n_layers-1}). Throws conveyor::Error(kModelFormat) naming the tensor.
void check_gguf_tensors(const GgufFile& file, const ModelConfig& config);

// "GGUF v3, 272 tensors: 210 Q4_1, 61 F32, 1 Q8_0".
std::string describe_gguf(const GgufFile& file);

// The tensors of a GGUF model by Hugging Face name (see TensorSource). Dequantizes on each
// load_f32 and then releases the file pages it read.
std::unique_ptr<TensorSource> make_gguf_tensors(std::shared_ptr<const GgufFile> file,
                                                const ModelConfig& config);

}  // namespace conveyor
