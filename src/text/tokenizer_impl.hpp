// Tokenizer::Impl: the one tokenization engine both sources (GGUF metadata, tokenizer.json)
// are loaded into — vocabulary, merge ranks or scores, special tokens, normalization,
// pre-tokenizer splits and the decode rules. docs/tokenizers.md describes the mapping.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "conveyor/tokenizer.hpp"
#include "text/regex.hpp"

namespace conveyor {

namespace text {

// Hash for unordered_map<std::string, ...> lookups by string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext };

// One pre-tokenizer split: each piece is cut at the matches of `regex`; what happens to the
// matched text and the gaps between matches follows `behavior` (Hugging Face's Split).
struct SplitStep {
  Regex regex;
  SplitBehavior behavior = SplitBehavior::kIsolated;
};

// When a fragment (the text between special tokens) gets a prefix.
enum class PrependScheme { kNever, kFirst, kAlways };

}  // namespace text

struct Tokenizer::Impl {
  enum class Merging {
    kRanks,   // merge the listed pair of lowest rank first (byte-level BPE, tokenizer.json BPE)
    kScores,  // merge any pair whose concatenation is a token, highest score first (GGUF llama)
  };

  // ---- vocabulary
  std::vector<std::string> tokens;  // id -> text as stored
  std::vector<TokenKind> kinds;     // id -> kind
  std::vector<float> scores;        // kScores only
  std::unordered_map<std::string, int32_t, text::StringHash, std::equal_to<>> ids;
  Merging merging = Merging::kRanks;
  // (left id << 32 | right id) -> (rank, merged id), kRanks only.
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;
  bool ignore_merges = false;              // a piece that is itself a token is emitted whole
  bool byte_fallback = false;              // symbols outside the vocabulary become <0xNN> tokens
  std::array<int32_t, 256> byte_tokens{};  // id of <0xNN> (byte fallback) or of the byte's
                                           // byte-level character; -1 when absent
  std::optional<int32_t> unk_id;
  bool fuse_unk = false;

  // ---- encoding: per fragment (the text between special tokens) normalize, split, map, merge
  struct NormalizeOp {
    enum class Kind { kNfc, kPrepend, kReplace };
    Kind kind = Kind::kReplace;
    std::string from;  // kReplace: the literal replaced
    std::string to;    // kReplace: its replacement; kPrepend: the prefix
    text::PrependScheme scheme = text::PrependScheme::kAlways;  // kPrepend
    bool unless_present = false;  // kPrepend: skip when the fragment already starts with it
  };
  std::vector<NormalizeOp> normalize;  // in order
  std::vector<text::SplitStep> splits;
  bool byte_level = false;  // GPT-2 byte-level alphabet before merging, inverse when decoding

  // ---- special (added) tokens, matched in the raw text before anything else
  struct Special {
    int32_t id = 0;
    std::string content;
    bool control = true;  // matched only with parse_special; user-defined ones always are
    bool lstrip = false;  // swallows whitespace on its left
    bool rstrip = false;  // ... and on its right
  };
  std::vector<Special> specials;                                  // longest content first
  std::array<std::vector<uint32_t>, 256> specials_by_first_byte;  // indices into specials
  std::vector<int32_t> prefix_ids;  // added in front with add_special (BOS)
  std::vector<int32_t> suffix_ids;  // added at the end with add_special (EOS)

  // ---- decoding
  std::vector<std::pair<std::string, std::string>> decode_replacements;  // e.g. "▁" -> " "
  bool decode_strip_leading_space = false;  // drop one leading space of the whole text

  std::optional<int32_t> bos;
  std::optional<int32_t> eos;
  std::vector<int32_t> end_of_generation;
  std::optional<std::string> chat_template;
  std::string description;

  // Sorts specials, fills byte_tokens and end_of_generation; checks ids. Called by both
  // loaders once everything is set. `origin` names the source in errors.
  void finalize(std::string_view origin);
  // The bytes token `id` decodes to, without the leading-space rule.
  std::string decode_token(int32_t id) const;
};

// The GPT-2, Llama-3 and Qwen2 pre-tokenizer regexes (as their tokenizer.json files write them).
namespace text {
extern const std::string_view kGpt2Pattern;
extern const std::string_view kLlama3Pattern;
extern const std::string_view kQwen2Pattern;
// NFC normalization (canonical decomposition, then canonical composition).
std::string nfc(std::string_view text);
}  // namespace text

}  // namespace conveyor
