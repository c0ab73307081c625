// GgufWriter (the GGUF v3 layout), the reference quantizers for F16/BF16/Q8_0/Q4_0, and
// write_gguf_model (Hugging Face names and orientation -> llama.cpp's).
#include "model/gguf_writer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.hpp"
#include "core/dtype_convert.hpp"
#include "core/file_io.hpp"
#include "model/ggml_quants.hpp"
#include "model/gguf_model.hpp"
#include "model/rope.hpp"
#include "model/weights.hpp"

namespace conveyor {
namespace {

// Encoded bytes are built in a std::string (GCC 12 warns falsely on growing vector<byte>).
template <typename T>
void append(std::string& out, T value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof(T));
}

void append_string(std::string& out, std::string_view s) {
  append<uint64_t>(out, s.size());
  out.append(s);
}

uint64_t align_up(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

void put_f16(std::byte* p, float value) {
  const uint16_t h = f32_to_f16(value);
  std::memcpy(p, &h, sizeof h);
}

}  // namespace

std::vector<std::byte> quantize_values(uint32_t type, std::span<const float> values) {
  const GgmlTypeTraits* traits = ggml_type_traits(type);
  if (traits == nullptr || values.size() % static_cast<size_t>(traits->block_elems) != 0) {
    fail(ErrorCode::kInvalidArgument, "cannot quantize {} values to ggml {}", values.size(),
         ggml_type_name(type));
  }
  const size_t n_blocks = values.size() / static_cast<size_t>(traits->block_elems);
  std::vector<std::byte> out(n_blocks * static_cast<size_t>(traits->block_bytes));
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32:
      std::copy_n(reinterpret_cast<const std::byte*>(values.data()), out.size(), out.data());
      return out;
    case GgmlType::kF16:
      for (size_t i = 0; i < values.size(); ++i)
        put_f16(out.data() + 2 * i, values[i]);
      return out;
    case GgmlType::kBF16:
      for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t h = f32_to_bf16(values[i]);
        std::memcpy(out.data() + 2 * i, &h, sizeof h);
      }
      return out;
    case GgmlType::kQ8_0:
      for (size_t b = 0; b < n_blocks; ++b) {
        const float* x = values.data() + 32 * b;
        std::byte* block = out.data() + 34 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j)
          amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        put_f16(block, d);
        for (int j = 0; j < 32; ++j) {
          block[2 + j] = static_cast<std::byte>(static_cast<int8_t>(std::lround(x[j] * id)));
        }
      }
      return out;
    case GgmlType::kQ4_0:
      for (size_t b = 0; b < n_blocks; ++b) {
        const float* x = values.data() + 32 * b;
        std::byte* block = out.data() + 18 * b;
        float amax = 0.0f;
        float max = 0.0f;
        for (int j = 0; j < 32; ++j) {
          if (std::fabs(x[j]) > amax) {
            amax = std::fabs(x[j]);
            max = x[j];
          }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        put_f16(block, d);
        for (int j = 0; j < 16; ++j) {
          const auto q0 = static_cast<uint8_t>(std::min(15.0f, std::floor(x[j] * id + 8.5f)));
          const auto q1 = static_cast<uint8_t>(std::min(15.0f, std::floor(x[j + 16] * id + 8.5f)));
          block[2 + j] = static_cast<std::byte>(q0 | (q1 << 4));
        }
      }
      return out;
    default:
      fail(ErrorCode::kInvalidArgument,
           "conveyor writes ggml F32, F16, BF16, Q8_0 and Q4_0, not {}", ggml_type_name(type));
  }
}

// ---- GgufWriter ----------------------------------------------------------------------------

void GgufWriter::add_kv(std::string key, GgufType type, std::string value) {
  for (const auto& [k, v] : kv_) {
    if (k == key) fail(ErrorCode::kInvalidArgument, "metadata key \"{}\" added twice", key);
  }
  std::string bytes;
  append<uint32_t>(bytes, static_cast<uint32_t>(type));
  bytes += value;
  kv_.emplace_back(std::move(key), std::move(bytes));
}

void GgufWriter::add_u32(std::string key, uint32_t value) {
  std::string v;
  append(v, value);
  add_kv(std::move(key), GgufType::kU32, std::move(v));
}
void GgufWriter::add_i32(std::string key, int32_t value) {
  std::string v;
  append(v, value);
  add_kv(std::move(key), GgufType::kI32, std::move(v));
}
void GgufWriter::add_u64(std::string key, uint64_t value) {
  std::string v;
  append(v, value);
  add_kv(std::move(key), GgufType::kU64, std::move(v));
}
void GgufWriter::add_f32(std::string key, float value) {
  std::string v;
  append(v, value);
  add_kv(std::move(key), GgufType::kF32, std::move(v));
}
void GgufWriter::add_bool(std::string key, bool value) {
  std::string v;
  append<uint8_t>(v, value ? 1 : 0);
  add_kv(std::move(key), GgufType::kBool, std::move(v));
}
void GgufWriter::add_string(std::string key, std::string_view value) {
  std::string v;
  append_string(v, value);
  add_kv(std::move(key), GgufType::kString, std::move(v));
}
void GgufWriter::add_strings(std::string key, const std::vector<std::string>& values) {
  std::string v;
  append<uint32_t>(v, static_cast<uint32_t>(GgufType::kString));
  append<uint64_t>(v, values.size());
  for (const std::string& s : values)
    append_string(v, s);
  add_kv(std::move(key), GgufType::kArray, std::move(v));
}
void GgufWriter::add_i32s(std::string key, const std::vector<int32_t>& values) {
  std::string v;
  append<uint32_t>(v, static_cast<uint32_t>(GgufType::kI32));
  append<uint64_t>(v, values.size());
  for (int32_t x : values)
    append(v, x);
  add_kv(std::move(key), GgufType::kArray, std::move(v));
}
void GgufWriter::add_f32s(std::string key, const std::vector<float>& values) {
  std::string v;
  append<uint32_t>(v, static_cast<uint32_t>(GgufType::kF32));
  append<uint64_t>(v, values.size());
  for (float x : values)
    append(v, x);
  add_kv(std::move(key), GgufType::kArray, std::move(v));
}

void GgufWriter::add_tensor(std::string name, uint32_t type, std::vector<int64_t> ne,
                            Producer produce) {
  const GgmlTypeTraits* traits = ggml_type_traits(type);
  if (traits == nullptr) {
    fail(ErrorCode::kInvalidArgument, "tensor \"{}\": {} is not a ggml type", name,
         ggml_type_name(type));
  }
  if (ne.empty() || ne.size() > 4 || ne[0] % traits->block_elems != 0) {
    fail(ErrorCode::kInvalidArgument,
         "tensor \"{}\": needs 1 to 4 dimensions with ne[0] a multiple of {} ({})", name,
         traits->block_elems, traits->name);
  }
  for (const Tensor& t : tensors_) {
    if (t.name == name) fail(ErrorCode::kInvalidArgument, "tensor \"{}\" added twice", name);
  }
  uint64_t numel = 1;
  for (int64_t d : ne)
    numel *= static_cast<uint64_t>(d);
  Tensor tensor{.name = std::move(name),
                .type = type,
                .ne = std::move(ne),
                .n_bytes = numel / static_cast<uint64_t>(traits->block_elems) *
                           static_cast<uint64_t>(traits->block_bytes),
                .produce = std::move(produce)};
  tensors_.push_back(std::move(tensor));
}

void GgufWriter::add_tensor(std::string name, uint32_t type, std::vector<int64_t> ne,
                            std::vector<std::byte> data) {
  add_tensor(std::move(name), type, std::move(ne),
             Producer([bytes = std::move(data)] { return bytes; }));
}

void GgufWriter::erase_kv(std::string_view key) {
  std::erase_if(kv_, [&](const auto& kv) { return kv.first == key; });
}

void GgufWriter::erase_tensor(std::string_view name) {
  std::erase_if(tensors_, [&](const Tensor& t) { return t.name == name; });
}

void GgufWriter::set_alignment(uint32_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    fail(ErrorCode::kInvalidArgument, "alignment {} is not a power of two", alignment);
  }
  alignment_ = alignment;
}

std::string GgufWriter::header() const {
  std::string out = "GGUF";
  append<uint32_t>(out, 3);
  append<uint64_t>(out, tensors_.size());
  append<uint64_t>(out, kv_.size() + (alignment_ != 32 ? 1 : 0));
  if (alignment_ != 32) {
    append_string(out, "general.alignment");
    append<uint32_t>(out, static_cast<uint32_t>(GgufType::kU32));
    append<uint32_t>(out, alignment_);
  }
  for (const auto& [key, bytes] : kv_) {
    append_string(out, key);
    out += bytes;
  }
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    append_string(out, t.name);
    append<uint32_t>(out, static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne)
      append<int64_t>(out, d);
    append<uint32_t>(out, t.type);
    append<uint64_t>(out, offset);
    offset = align_up(offset + t.n_bytes, alignment_);
  }
  out.resize(align_up(out.size(), alignment_), '\0');
  return out;
}

std::vector<std::byte> GgufWriter::serialize() const {
  const std::string head = header();
  const auto* head_bytes = reinterpret_cast<const std::byte*>(head.data());
  std::vector<std::byte> out(head_bytes, head_bytes + head.size());
  for (const Tensor& t : tensors_) {
    const std::vector<std::byte> data = t.produce();
    CONVEYOR_ASSERT(data.size() == t.n_bytes);
    out.insert(out.end(), data.begin(), data.end());
    if (&t != &tensors_.back()) out.resize(align_up(out.size(), alignment_), std::byte{0});
  }
  return out;
}

uint64_t GgufWriter::write(const std::filesystem::path& path) const {
  uint64_t written = 0;
  write_file_atomically(path, [&](std::ostream& out) {
    const std::string head = header();
    out.write(head.data(), static_cast<std::streamsize>(head.size()));
    written = head.size();
    const std::vector<char> zeros(alignment_, 0);
    for (const Tensor& t : tensors_) {
      const std::vector<std::byte> data = t.produce();
      if (data.size() != t.n_bytes) {
        fail(ErrorCode::kInvalidArgument, "tensor \"{}\" producer gave {} bytes, expected {}",
             t.name, data.size(), t.n_bytes);
      }
      out.write(reinterpret_cast<const char*>(data.data()),
                static_cast<std::streamsize>(data.size()));
      written += data.size();
      if (&t != &tensors_.back()) {
        const uint64_t pad = align_up(written, alignment_) - written;
        out.write(zeros.data(), static_cast<std::streamsize>(pad));
        written += pad;
      }
    }
  });
  return written;
}

// ---- models --------------------------------------------------------------------------------

std::function<void(GgufWriter&)> placeholder_tokenizer(int64_t vocab_size) {
  constexpr int64_t kFixed = 3 + 256;  // <unk> <s> </s> and the byte tokens
  if (vocab_size < kFixed) {
    fail(ErrorCode::kInvalidArgument,
         "a placeholder tokenizer needs a vocabulary of at least {} tokens (3 special, 256 bytes) "
         "but the model has {}; make the model with --vocab {} or more",
         kFixed, vocab_size, kFixed);
  }
  return [vocab_size](GgufWriter& w) {
    // llama.cpp's token types: 1 normal, 2 unknown, 3 control, 6 byte.
    std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
    std::vector<int32_t> types = {2, 3, 3};
    for (int byte = 0; byte < 256; ++byte) {
      tokens.push_back(fmt::format("<0x{:02X}>", byte));
      types.push_back(6);
    }
    while (static_cast<int64_t>(tokens.size()) < vocab_size) {
      tokens.push_back(fmt::format("\u2581w{}", tokens.size()));
      types.push_back(1);
    }
    std::vector<float> scores(tokens.size());
    for (size_t i = 0; i < scores.size(); ++i)
      scores[i] = i < kFixed ? 0.0f : -static_cast<float>(i);
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_strings("tokenizer.ggml.tokens", tokens);
    w.add_f32s("tokenizer.ggml.scores", scores);
    w.add_i32s("tokenizer.ggml.token_type", types);
    w.add_u32("tokenizer.ggml.unknown_token_id", 0);
  };
}

GgufWriter gguf_model_writer(const ModelConfig& config, const TensorSource& tensors,
                             const GgufModelOptions& options) {
  std::string arch;
  switch (config.architecture) {
    case Architecture::kLlama:
    case Architecture::kMistral:
      arch = "llama";
      break;
    case Architecture::kQwen2:
      arch = "qwen2";
      break;
  }
  const bool permute = arch == "llama";
  GgufWriter w;
  w.add_string("general.architecture", arch);
  w.add_string("general.name", options.name);
  w.add_u32(arch + ".block_count", static_cast<uint32_t>(config.n_layers));
  w.add_u32(arch + ".context_length", static_cast<uint32_t>(config.max_position_embeddings));
  w.add_u32(arch + ".embedding_length", static_cast<uint32_t>(config.hidden_size));
  w.add_u32(arch + ".feed_forward_length", static_cast<uint32_t>(config.intermediate_size));
  w.add_u32(arch + ".attention.head_count", static_cast<uint32_t>(config.n_heads));
  w.add_u32(arch + ".attention.head_count_kv", static_cast<uint32_t>(config.n_kv_heads));
  w.add_f32(arch + ".attention.layer_norm_rms_epsilon", static_cast<float>(config.rms_norm_eps));
  w.add_f32(arch + ".rope.freq_base", static_cast<float>(config.rope_theta));
  w.add_u32(arch + ".rope.dimension_count", static_cast<uint32_t>(config.head_dim));
  if (config.head_dim * config.n_heads != config.hidden_size) {
    w.add_u32(arch + ".attention.key_length", static_cast<uint32_t>(config.head_dim));
    w.add_u32(arch + ".attention.value_length", static_cast<uint32_t>(config.head_dim));
  }
  w.add_u32(arch + ".vocab_size", static_cast<uint32_t>(config.vocab_size));
  if (config.sliding_window) {
    w.add_u32(arch + ".attention.sliding_window", static_cast<uint32_t>(*config.sliding_window));
  }
  if (config.rope_scaling.type == RopeScalingType::kLinear) {
    w.add_string(arch + ".rope.scaling.type", "linear");
    w.add_f32(arch + ".rope.scaling.factor", static_cast<float>(config.rope_scaling.factor));
  }
  if (config.bos_token_id) {
    w.add_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(*config.bos_token_id));
  }
  if (!config.eos_token_ids.empty()) {
    w.add_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(config.eos_token_ids.front()));
  }
  if (options.add_tokenizer) options.add_tokenizer(w);

  // rope_freqs: the factor by which llama3 scaling divides each unscaled frequency.
  if (config.rope_scaling.type == RopeScalingType::kLlama3 ||
      config.rope_scaling.type == RopeScalingType::kFrequencyFactors) {
    ModelConfig unscaled = config;
    unscaled.rope_scaling = {};
    const std::vector<float> base = rope_inv_freq(unscaled);
    std::vector<float> factors;
    if (config.rope_scaling.type == RopeScalingType::kFrequencyFactors) {
      factors.assign(config.rope_scaling.frequency_factors.begin(),
                     config.rope_scaling.frequency_factors.end());
    } else {
      const std::vector<float> scaled = rope_inv_freq(config);
      for (size_t i = 0; i < base.size(); ++i)
        factors.push_back(base[i] / scaled[i]);
    }
    w.add_tensor("rope_freqs.weight", static_cast<uint32_t>(GgmlType::kF32),
                 {static_cast<int64_t>(factors.size())}, quantize_values(0, factors));
  }

  const StageWeightsSpec whole{
      .first_layer = 0, .last_layer = config.n_layers, .embedding = true, .head = true};
  std::vector<std::string> names = required_tensor_names(config, whole);
  names.erase(std::unique(names.begin(), names.end()), names.end());
  for (const std::string& hf : names) {
    const std::string gguf = *gguf_tensor_name(hf);
    const std::vector<int64_t> shape = tensor_shape(config, hf);  // Hugging Face [out, in]
    const bool matrix = shape.size() == 2;
    const bool table = hf == "model.embed_tokens.weight" || hf == "lm_head.weight";
    const uint32_t type = !matrix ? static_cast<uint32_t>(GgmlType::kF32)
                          : table ? options.embedding_type
                                  : options.matrix_type;
    const bool qk = permute && (hf.find("q_proj") != std::string::npos ||
                                hf.find("k_proj") != std::string::npos);
    const int64_t heads =
        hf.find("q_proj") != std::string::npos ? config.n_heads : config.n_kv_heads;
    w.add_tensor(gguf, type, {shape.rbegin(), shape.rend()},
                 [&tensors, hf, shape, type, qk, heads] {
                   std::vector<float> values = tensors.load_f32(hf, shape);
                   if (qk)
                     permute_qk_rows(values, shape[0], shape.size() == 2 ? shape[1] : 1, heads);
                   return quantize_values(type, values);
                 });
  }
  return w;
}

uint64_t write_gguf_model(const ModelConfig& config, const TensorSource& tensors,
                          const GgufModelOptions& options, const std::filesystem::path& path) {
  return gguf_model_writer(config, tensors, options).write(path);
}

}  // namespace conveyor
