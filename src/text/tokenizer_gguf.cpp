// Tokenizer::from_gguf: tokenizer.ggml.* metadata onto the engine. "gpt2" is byte-level BPE
// whose pre-tokenizer regexes are chosen by tokenizer.ggml.pre (the model's tokenizer.json
// splits, as llama.cpp names them); "llama" is SentencePiece BPE with scores, byte fallback and
// the "▁" space marker.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <string>
#include <utility>
#include <vector>

#include "conveyor/gguf.hpp"
#include "conveyor/tokenizer.hpp"
#include "core/check.hpp"
#include "text/tokenizer_impl.hpp"

namespace conveyor {
namespace {

using Impl = Tokenizer::Impl;

// DeepSeek LLM's tokenizer.json splits (Latin-like letters, ASCII and full-width punctuation, CJK
// runs, digits) as PCRE2 patterns; code points are escaped so no editor can normalize them.
constexpr std::string_view kDeepSeekLetters =
    "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}"
    "\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}"
    "\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-"
    "\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}"
    "\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}\\x{1D6B}-"
    "\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}"
    "\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}"
    "\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}"
    "\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-"
    "\\x{1FFC}\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}"
    "\\x{2126}\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}"
    "\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}"
    "\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-"
    "\\x{A76F}\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}"
    "\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}"
    "\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}"
    "\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}]+";
constexpr std::string_view kDeepSeekPunctuation =
    "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-"
    "\\x{3002}]+";
constexpr std::string_view kDeepSeekCjk =
    "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+";

// Pre-tokenizer regex lists by tokenizer.ggml.pre; each splits the pieces of the one before.
std::optional<std::vector<std::string_view>> pre_tokenizer_patterns(std::string_view pre,
                                                                    bool& ignore_merges,
                                                                    bool& add_bos) {
  using namespace text;
  if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "command-r" ||
      pre == "codeshell" || pre == "exaone" || pre == "minerva-7b") {
    return std::vector<std::string_view>{"\\p{N}", kGpt2Pattern};
  }
  if (pre == "llama3" || pre == "llama-v3" || pre == "llama-bpe" || pre == "falcon3" ||
      pre == "dbrx" || pre == "smaug-bpe") {
    ignore_merges = true;
    add_bos = true;
    return std::vector<std::string_view>{kLlama3Pattern};
  }
  if (pre == "qwen2" || pre == "deepseek-r1-qwen" || pre == "megrez" || pre == "stablelm2") {
    return std::vector<std::string_view>{kQwen2Pattern};
  }
  if (pre == "gpt-2" || pre == "phi-2" || pre == "roberta-bpe" || pre == "olmo" || pre == "mpt" ||
      pre == "jina-es" || pre == "jina-de" || pre == "jina-v2-es" || pre == "jina-v2-de" ||
      pre == "jina-v2-code") {
    return std::vector<std::string_view>{kGpt2Pattern};
  }
  if (pre == "default") {
    // llama.cpp's fallback for files converted without a known pre-tokenizer.
    return std::vector<std::string_view>{"[\\p{P}\\$\\+<=>\\^~\\|]+", kGpt2Pattern, "\\p{N}+",
                                         "[0-9][0-9][0-9]"};
  }
  if (pre == "deepseek-llm") {
    return std::vector<std::string_view>{"[\\r\\n]", kDeepSeekLetters, kDeepSeekPunctuation,
                                         "\\s+$",    kDeepSeekCjk,     "\\p{N}+"};
  }
  return std::nullopt;
}

constexpr std::string_view kKnownPre =
    "default, gpt-2, smollm, starcoder, llama3, llama-bpe, qwen2, deepseek-llm, ... "
    "(docs/tokenizers.md)";

TokenKind kind_of(int64_t type) {
  switch (type) {
    case 2:
      return TokenKind::kUnknown;
    case 3:
      return TokenKind::kControl;
    case 4:
      return TokenKind::kUserDefined;
    case 5:
      return TokenKind::kUnused;
    case 6:
      return TokenKind::kByte;
    default:  // 1 normal, 0 undefined
      return TokenKind::kNormal;
  }
}

std::optional<int32_t> id_key(const GgufContents& c, std::string_view key) {
  const std::optional<int64_t> id = c.get_int(key);
  if (!id) return std::nullopt;
  if (*id < 0 || *id > INT32_MAX) {
    fail(ErrorCode::kModelFormat, "{}: {} = {} is not a token id", c.origin, key, *id);
  }
  return static_cast<int32_t>(*id);
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const GgufFile& file) {
  const GgufContents& c = file.contents();
  const std::optional<std::string> model = c.get_string("tokenizer.ggml.model");
  if (!model) {
    fail(ErrorCode::kModelFormat,
         "{}: has no tokenizer (no tokenizer.ggml.model), so text cannot be tokenized; pass "
         "token ids (--prompt-ids), or use a GGUF converted with its tokenizer",
         c.origin);
  }
  auto t = std::make_shared<Impl>();
  std::optional<std::vector<std::string>> tokens = c.get_strings("tokenizer.ggml.tokens");
  if (!tokens || tokens->empty()) {
    fail(ErrorCode::kModelFormat, "{}: tokenizer.ggml.tokens is missing or empty", c.origin);
  }
  t->tokens = std::move(*tokens);
  const size_t n = t->tokens.size();
  t->kinds.assign(n, TokenKind::kNormal);
  if (const auto types = c.get_ints("tokenizer.ggml.token_type")) {
    if (types->size() != n) {
      fail(ErrorCode::kModelFormat,
           "{}: tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
           c.origin, types->size(), n);
    }
    for (size_t i = 0; i < n; ++i)
      t->kinds[i] = kind_of((*types)[i]);
  }
  t->ids.reserve(n);
  for (size_t i = 0; i < n; ++i)
    t->ids.emplace(t->tokens[i], static_cast<int32_t>(i));  // the first of duplicates wins

  bool add_bos = false;
  bool add_eos = false;
  std::string description;
  if (*model == "gpt2") {
    t->merging = Impl::Merging::kRanks;
    t->byte_level = true;
    std::optional<std::string> pre = c.get_string("tokenizer.ggml.pre");
    if (!pre || *pre == "default") {
      // What llama.cpp does, with its warning: the model's own splits are unknown.
      spdlog::warn(
          "{}: tokenizer.ggml.pre is {}: using llama.cpp's default pre-tokenizer, which may split "
          "text differently from the model's own tokenizer (quality may degrade); re-convert the "
          "model with a current llama.cpp to record it",
          c.origin, pre ? "\"default\"" : "missing");
      pre = "default";
    }
    const auto patterns = pre_tokenizer_patterns(*pre, t->ignore_merges, add_bos);
    if (!patterns) {
      fail(ErrorCode::kModelFormat,
           "{}: tokenizer.ggml.pre = \"{}\" is not a pre-tokenizer conveyor knows; known: {}",
           c.origin, *pre, kKnownPre);
    }
    for (std::string_view pattern : *patterns)
      t->splits.push_back({text::Regex(pattern), text::SplitBehavior::kIsolated});
    const std::optional<std::vector<std::string>> merges = c.get_strings("tokenizer.ggml.merges");
    if (!merges) {
      fail(ErrorCode::kModelFormat, "{}: a gpt2 tokenizer needs tokenizer.ggml.merges", c.origin);
    }
    t->merges.reserve(merges->size());
    for (size_t rank = 0; rank < merges->size(); ++rank) {
      const std::string& merge = (*merges)[rank];
      const size_t space = merge.find(' ', 1);
      if (space == std::string::npos) {
        fail(ErrorCode::kModelFormat,
             "{}: tokenizer.ggml.merges entry {} \"{}\" has no space between its two parts",
             c.origin, rank, merge);
      }
      const std::string_view left = std::string_view(merge).substr(0, space);
      const std::string_view right = std::string_view(merge).substr(space + 1);
      const auto l = t->ids.find(left);
      const auto r = t->ids.find(right);
      const auto m = t->ids.find(std::string(left) + std::string(right));
      if (l == t->ids.end() || r == t->ids.end() || m == t->ids.end()) {
        fail(ErrorCode::kModelFormat,
             "{}: tokenizer.ggml.merges entry {} \"{}\" merges tokens that are not in the "
             "vocabulary",
             c.origin, rank, merge);
      }
      t->merges.try_emplace(
          (static_cast<uint64_t>(l->second) << 32) | static_cast<uint32_t>(r->second),
          static_cast<int32_t>(rank), m->second);
    }
    description = fmt::format("byte-level BPE (GGUF gpt2, pre {}): {} tokens, {} merges", *pre, n,
                              merges->size());
  } else if (*model == "llama") {
    const std::optional<std::vector<float>> scores = c.get_floats("tokenizer.ggml.scores");
    if (!scores || scores->size() != n) {
      fail(ErrorCode::kModelFormat,
           "{}: a llama (SentencePiece) tokenizer needs tokenizer.ggml.scores with one score per "
           "token ({}), found {}",
           c.origin, n, scores ? std::to_string(scores->size()) : std::string("none"));
    }
    t->scores = *scores;
    t->merging = Impl::Merging::kScores;
    t->byte_fallback = true;
    add_bos = true;
    t->unk_id = 0;
    t->bos = 1;
    t->eos = 2;
    if (c.get_bool("tokenizer.ggml.add_space_prefix").value_or(true)) {
      t->normalize.push_back({.kind = Impl::NormalizeOp::Kind::kPrepend,
                              .to = " ",
                              .scheme = text::PrependScheme::kAlways});
      t->decode_strip_leading_space = true;
    }
    t->normalize.push_back({.kind = Impl::NormalizeOp::Kind::kReplace, .from = " ", .to = "▁"});
    t->decode_replacements.emplace_back("▁", " ");
    description = fmt::format("SentencePiece BPE (GGUF llama): {} tokens with scores", n);
  } else {
    fail(ErrorCode::kModelFormat,
         "{}: tokenizer.ggml.model = \"{}\" is not supported; conveyor reads gpt2 (byte-level "
         "BPE) and llama (SentencePiece BPE)",
         c.origin, *model);
  }

  if (auto id = id_key(c, "tokenizer.ggml.bos_token_id")) t->bos = id;
  if (auto id = id_key(c, "tokenizer.ggml.eos_token_id")) t->eos = id;
  if (auto id = id_key(c, "tokenizer.ggml.unknown_token_id")) t->unk_id = id;
  for (std::string_view key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    if (auto id = id_key(c, key)) {
      if (*id >= static_cast<int32_t>(n)) {
        fail(ErrorCode::kModelFormat, "{}: {} = {} is outside the vocabulary [0, {})", c.origin,
             key, *id, n);
      }
      t->end_of_generation.push_back(*id);
    }
  }
  add_bos = c.get_bool("tokenizer.ggml.add_bos_token").value_or(add_bos);
  add_eos = c.get_bool("tokenizer.ggml.add_eos_token").value_or(add_eos);
  if (add_bos && t->bos) t->prefix_ids.push_back(*t->bos);
  if (add_eos && t->eos) t->suffix_ids.push_back(*t->eos);
  for (size_t i = 0; i < n; ++i) {
    const TokenKind kind = t->kinds[i];
    if (kind == TokenKind::kControl || kind == TokenKind::kUserDefined ||
        kind == TokenKind::kUnknown) {
      t->specials.push_back({.id = static_cast<int32_t>(i),
                             .content = t->tokens[i],
                             .control = kind != TokenKind::kUserDefined});
    }
  }
  t->chat_template = c.get_string("tokenizer.chat_template");
  t->description = std::move(description);
  t->finalize(c.origin);
  return Tokenizer(std::move(t));
}

}  // namespace conveyor
