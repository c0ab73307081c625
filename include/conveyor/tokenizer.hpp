// Tokenizer: text <-> token ids for the models conveyor runs, read from a GGUF file
// (tokenizer.ggml.*: byte-level BPE "gpt2" with its pre-tokenizer, or SentencePiece BPE "llama")
// or a Hugging Face tokenizer.json (+ tokenizer_config.json). How each source maps onto the one
// engine: docs/tokenizers.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace conveyor {

class GgufFile;

// What a vocabulary entry is (GGUF token_type; Hugging Face added tokens map onto kControl when
// special, kUserDefined otherwise).
enum class TokenKind : uint8_t { kNormal, kUnknown, kControl, kUserDefined, kUnused, kByte };

struct EncodeOptions {
  bool add_special = true;     // BOS (and EOS) as the tokenizer's configuration asks
  bool parse_special = false;  // match control tokens ("<|im_start|>") written in the text
  // With parse_special: when not empty, control tokens are matched only inside these byte ranges
  // of the text (a chat template's markup; see encode_chat).
  std::span<const std::pair<size_t, size_t>> special_ranges;
};

struct DecodeOptions {
  bool skip_special = false;  // drop the text of control tokens
};

// Immutable and cheap to copy (the vocabulary is shared); thread-safe.
class Tokenizer {
 public:
  // From GGUF metadata; a vocabulary-only GGUF (no tensors) works. Throws
  // conveyor::Error(kModelFormat) naming the key for an unknown tokenizer.ggml.model or .pre,
  // missing merges or scores, arrays of mismatched lengths, special ids outside the vocabulary.
  static Tokenizer from_gguf(const GgufFile& file);
  // From tokenizer.json; tokenizer_config.json (special tokens, add_bos_token, chat template)
  // and generation_config.json (eos ids) are read from the same directory when present.
  static Tokenizer from_tokenizer_json(const std::filesystem::path& tokenizer_json);
  // From a --model path: a .gguf file, a directory holding one, or a directory with
  // tokenizer.json (a Hugging Face model, or just its tokenizer files).
  static Tokenizer open(const std::filesystem::path& path);

  // Text -> ids. `text` must be valid UTF-8: invalid bytes are an error naming the offset
  // (kInvalidArgument), never silently replaced.
  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& options = {}) const;
  // Ids -> text bytes (byte-level and byte-fallback tokens may split a UTF-8 character: a
  // sequence cut short stays as its bytes; replace_invalid_utf8 makes it printable). Throws
  // kInvalidArgument for ids outside the vocabulary.
  std::string decode(std::span<const int32_t> ids, const DecodeOptions& options = {}) const;

  int32_t vocab_size() const;
  // The vocabulary entry as stored ("Ġthe", "▁the", "<0x0A>", "<|im_end|>").
  const std::string& token_text(int32_t id) const;
  TokenKind token_kind(int32_t id) const;
  std::optional<int32_t> token_id(std::string_view token_text) const;

  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  bool adds_bos() const;  // encode(..., add_special) starts with BOS
  // Tokens that end generation: eos, eot/eom, and control tokens whose text marks an end of
  // turn (<|im_end|>, <|eot_id|>, <|endoftext|>, ...).
  const std::vector<int32_t>& end_of_generation_ids() const;
  bool is_end_of_generation(int32_t id) const;
  // The model's chat template text (GGUF tokenizer.chat_template or tokenizer_config.json).
  const std::optional<std::string>& chat_template() const;
  // "byte-level BPE (GGUF gpt2, pre smollm): 49152 tokens, 48900 merges".
  const std::string& description() const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl);
  friend class StreamDecoder;
  std::shared_ptr<const Impl> impl_;
};

// Turns ids into text as they are generated: returns only complete UTF-8 characters, holding a
// token's trailing partial character until the next token completes it. Not thread-safe.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, const DecodeOptions& options = {});
  // The text this token completes (possibly empty).
  std::string push(int32_t id);
  // What is still held (an incomplete character, as U+FFFD), then starts over.
  std::string finish();

 private:
  Tokenizer tokenizer_;
  DecodeOptions options_;
  std::string pending_;
  bool started_ = false;
};

}  // namespace conveyor
