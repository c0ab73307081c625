// UTF-8 validation and coding (RFC 3629), and GPT-2's byte-level alphabet.
#include "text/unicode.hpp"

namespace conveyor::text {

size_t utf8_valid_length(std::string_view text, size_t pos) noexcept {
  const size_t n = text.size();
  if (pos >= n) return 0;
  const auto b0 = static_cast<uint8_t>(text[pos]);
  if (b0 < 0x80) return 1;
  size_t length;
  char32_t cp;
  char32_t min;
  if ((b0 & 0xE0) == 0xC0) {
    length = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    length = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    length = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (pos + length > n) return 0;
  for (size_t i = 1; i < length; ++i) {
    const auto b = static_cast<uint8_t>(text[pos + i]);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return length;
}

std::optional<size_t> first_invalid_utf8(std::string_view text) noexcept {
  size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<uint8_t>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const size_t length = utf8_valid_length(text, pos);
    if (length == 0) return pos;
    pos += length;
  }
  return std::nullopt;
}

char32_t decode_utf8(std::string_view text, size_t pos, size_t& length) noexcept {
  length = utf8_valid_length(text, pos);
  const auto b0 = static_cast<uint8_t>(text[pos]);
  switch (length) {
    case 1:
      return b0;
    case 2:
      return (char32_t{b0 & 0x1Fu} << 6) | (static_cast<uint8_t>(text[pos + 1]) & 0x3Fu);
    case 3:
      return (char32_t{b0 & 0x0Fu} << 12) | ((static_cast<uint8_t>(text[pos + 1]) & 0x3Fu) << 6) |
             (static_cast<uint8_t>(text[pos + 2]) & 0x3Fu);
    case 4:
      return (char32_t{b0 & 0x07u} << 18) | ((static_cast<uint8_t>(text[pos + 1]) & 0x3Fu) << 12) |
             ((static_cast<uint8_t>(text[pos + 2]) & 0x3Fu) << 6) |
             (static_cast<uint8_t>(text[pos + 3]) & 0x3Fu);
    default:
      length = 1;
      return 0xFFFD;
  }
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

namespace {

// Whether bytes[pos..] is a proper prefix of some valid sequence (more bytes could complete it).
bool incomplete_prefix(std::string_view bytes, size_t pos) {
  const auto b0 = static_cast<uint8_t>(bytes[pos]);
  size_t need;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
  } else {
    return false;  // ASCII, a continuation byte, or a lead byte no valid sequence starts with
  }
  const size_t have = bytes.size() - pos;
  if (have >= need) return false;
  if (have >= 2) {
    // The second byte's range excludes overlong forms, surrogates and code points > U+10FFFF.
    const auto b1 = static_cast<uint8_t>(bytes[pos + 1]);
    const uint8_t lo = b0 == 0xE0 ? 0xA0 : b0 == 0xF0 ? 0x90 : 0x80;
    const uint8_t hi = b0 == 0xED ? 0x9F : b0 == 0xF4 ? 0x8F : 0xBF;
    if (b1 < lo || b1 > hi) return false;
  }
  for (size_t i = 2; i < have; ++i) {
    if ((static_cast<uint8_t>(bytes[pos + i]) & 0xC0) != 0x80) return false;
  }
  return true;
}

}  // namespace

size_t complete_utf8_prefix(std::string_view bytes) noexcept {
  // Only the last 3 bytes can start an incomplete sequence.
  const size_t n = bytes.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const size_t pos = n - back;
    const auto b = static_cast<uint8_t>(bytes[pos]);
    if ((b & 0xC0) == 0x80) continue;  // continuation byte: look further back
    if (b >= 0xC0 && incomplete_prefix(bytes, pos)) return pos;
    break;
  }
  return n;
}

std::string replace_invalid_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const size_t length = utf8_valid_length(bytes, pos);
    if (length == 0) {
      out += "\xEF\xBF\xBD";
      ++pos;
    } else {
      out.append(bytes.substr(pos, length));
      pos += length;
    }
  }
  return out;
}

ByteLevelAlphabet::ByteLevelAlphabet() {
  decoded_.fill(-1);
  char32_t next = 0x100;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    const char32_t cp = printable ? static_cast<char32_t>(b) : next++;
    append_utf8(encoded_[static_cast<size_t>(b)], cp);
    decoded_[cp] = static_cast<int16_t>(b);
  }
}

std::optional<uint8_t> ByteLevelAlphabet::decode(char32_t cp) const {
  if (cp >= decoded_.size() || decoded_[cp] < 0) return std::nullopt;
  return static_cast<uint8_t>(decoded_[cp]);
}

std::string ByteLevelAlphabet::map(std::string_view text) const {
  std::string out;
  out.reserve(text.size() * 2);
  for (char c : text)
    out += encoded_[static_cast<uint8_t>(c)];
  return out;
}

const ByteLevelAlphabet& byte_level_alphabet() {
  static const ByteLevelAlphabet alphabet;
  return alphabet;
}

}  // namespace conveyor::text
