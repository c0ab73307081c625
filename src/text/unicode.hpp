// UTF-8 helpers for the tokenizer: validation, code point iteration and encoding, and GPT-2's
// byte-level alphabet (every byte as a printable code point) with its inverse.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace conveyor::text {

// Length of the UTF-8 sequence starting at text[pos] when it is a complete, valid (shortest
// form, no surrogates, <= U+10FFFF) sequence; 0 otherwise.
size_t utf8_valid_length(std::string_view text, size_t pos) noexcept;

// Byte offset of the first invalid or incomplete UTF-8 sequence, or nullopt when `text` is valid.
std::optional<size_t> first_invalid_utf8(std::string_view text) noexcept;

// The code point at text[pos] (which must start a valid sequence) and its length.
char32_t decode_utf8(std::string_view text, size_t pos, size_t& length) noexcept;

void append_utf8(std::string& out, char32_t cp);

// Length of the longest prefix of `bytes` that ends on a character boundary, treating a trailing
// incomplete (but so far valid) sequence as pending; invalid bytes count as complete (they will
// never become valid). Used by streaming decoders.
size_t complete_utf8_prefix(std::string_view bytes) noexcept;

// `bytes` with every invalid sequence replaced by U+FFFD (as Python's errors="replace").
std::string replace_invalid_utf8(std::string_view bytes);

// GPT-2 bytes_to_unicode: bytes 0x21-0x7E, 0xA1-0xAC and 0xAE-0xFF map to themselves, the other
// 68 to U+0100 + n in byte order (space -> U+0120 'Ġ', '\n' -> U+010A 'Ċ').
class ByteLevelAlphabet {
 public:
  ByteLevelAlphabet();
  // The UTF-8 text of byte b's code point.
  const std::string& encode(uint8_t b) const { return encoded_[b]; }
  // The byte of code point cp, or nullopt when cp is not in the alphabet.
  std::optional<uint8_t> decode(char32_t cp) const;
  // Maps every byte of `text`.
  std::string map(std::string_view text) const;

 private:
  std::array<std::string, 256> encoded_;
  std::array<int16_t, 512> decoded_;  // code point (< 0x200) -> byte, or -1
};

const ByteLevelAlphabet& byte_level_alphabet();

}  // namespace conveyor::text
