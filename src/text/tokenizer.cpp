// The tokenization engine: special-token partition, normalization, pre-tokenizer splits,
// byte-level mapping, BPE merging (by rank or by score, with a heap over adjacent pairs),
// byte fallback; decoding and streaming decoding. Loaders: tokenizer_gguf.cpp,
// tokenizer_json.cpp.
#include <fmt/format.h>
#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <queue>
#include <unordered_set>

#include "conveyor/checkpoint.hpp"
#include "conveyor/gguf.hpp"
#include "core/check.hpp"
#include "text/tokenizer_impl.hpp"
#include "text/unicode.hpp"

namespace conveyor {

namespace text {

const std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string nfc(std::string_view input) {
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(input.data()),
                   static_cast<utf8proc_ssize_t>(input.size()), &out,
                   static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) {
    fail(ErrorCode::kInvalidArgument, "NFC normalization failed: {}", utf8proc_errmsg(n));
  }
  std::string result(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  std::free(out);
  return result;
}

}  // namespace text

namespace {

using Impl = Tokenizer::Impl;

// The end-of-turn texts llama.cpp also stops on when a model does not declare them.
constexpr std::string_view kEndOfGenerationTexts[] = {
    "<|eot_id|>", "<|eom_id|>",    "<|im_end|>",
    "<|end|>",    "<end_of_turn>", "<|endoftext|>",
    "<EOT>",      "_<EOT>",        "<｜end▁of▁sentence｜>",
    "</s>"};

// Every occurrence of `from` in `s` replaced by `to`.
void replace_all(std::string& s, std::string_view from, std::string_view to) {
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out += to;
  }
  out.append(s, pos);
  s = std::move(out);
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// A fragment of the input: text to tokenize, or one special token.
struct Fragment {
  std::string_view text;
  size_t offset = 0;  // of text in the input
  int32_t special = -1;
};

// Splits `text` at the special tokens it contains (longest match first at each position).
std::vector<Fragment> partition_specials(const Impl& t, std::string_view text,
                                         const EncodeOptions& options) {
  // A control token may be matched at [pos, pos + n) when specials are parsed there.
  size_t range = 0;  // ranges are sorted; the first one that may contain pos
  auto control_allowed = [&](size_t pos, size_t n) {
    if (!options.parse_special) return false;
    const auto& ranges = options.special_ranges;
    if (ranges.empty()) return true;
    while (range < ranges.size() && ranges[range].second <= pos)
      ++range;
    return range < ranges.size() && ranges[range].first <= pos && pos + n <= ranges[range].second;
  };
  std::vector<Fragment> out;
  size_t begin = 0;  // start of the pending text fragment
  size_t pos = 0;
  auto push_text = [&](size_t end) {
    if (end > begin) out.push_back({text.substr(begin, end - begin), begin, -1});
  };
  while (pos < text.size()) {
    const Impl::Special* match = nullptr;
    for (uint32_t index : t.specials_by_first_byte[static_cast<uint8_t>(text[pos])]) {
      const Impl::Special& s = t.specials[index];
      if (s.control && !control_allowed(pos, s.content.size())) continue;
      if (text.compare(pos, s.content.size(), s.content) == 0) {
        match = &s;  // specials are sorted longest first
        break;
      }
    }
    if (match == nullptr) {
      ++pos;
      continue;
    }
    size_t end = pos;
    if (match->lstrip) {
      while (end > begin && is_space(text[end - 1]))
        --end;
    }
    push_text(end);
    out.push_back({text.substr(pos, match->content.size()), pos, match->id});
    pos += match->content.size();
    if (match->rstrip) {
      while (pos < text.size() && is_space(text[pos]))
        ++pos;
    }
    begin = pos;
  }
  push_text(text.size());
  return out;
}

std::string normalize(const Impl& t, std::string_view fragment, bool at_start) {
  std::string s(fragment);
  for (const Impl::NormalizeOp& op : t.normalize) {
    switch (op.kind) {
      case Impl::NormalizeOp::Kind::kNfc:
        s = text::nfc(s);
        break;
      case Impl::NormalizeOp::Kind::kPrepend: {
        const bool applies = op.scheme == text::PrependScheme::kAlways ||
                             (op.scheme == text::PrependScheme::kFirst && at_start);
        if (applies && !s.empty() && !(op.unless_present && s.starts_with(op.to))) {
          s.insert(0, op.to);
        }
        break;
      }
      case Impl::NormalizeOp::Kind::kReplace:
        replace_all(s, op.from, op.to);
        break;
    }
  }
  return s;
}

// Applies one split step to every piece (byte ranges into `s`).
void apply_split(const text::SplitStep& step, std::string_view s,
                 std::vector<std::pair<size_t, size_t>>& pieces) {
  std::vector<std::pair<size_t, size_t>> next;
  std::vector<std::pair<size_t, size_t>> matches;
  for (const auto& piece : pieces) {
    const size_t begin = piece.first;  // a plain variable: lambdas may capture it (clang 14)
    const size_t length = piece.second - piece.first;
    matches.clear();
    step.regex.find_all(s.substr(begin, length), matches);
    size_t cursor = 0;  // relative to begin
    auto emit = [&](size_t a, size_t b) {
      if (b > a) next.emplace_back(begin + a, begin + b);
    };
    for (const auto& [a, b] : matches) {
      switch (step.behavior) {
        case text::SplitBehavior::kIsolated:  // gap, then the match, as pieces of their own
          emit(cursor, a);
          emit(a, b);
          cursor = b;
          break;
        case text::SplitBehavior::kRemoved:  // the gap only
          emit(cursor, a);
          cursor = b;
          break;
        case text::SplitBehavior::kMergedWithPrevious:  // the match ends the piece before it
          emit(cursor, b);
          cursor = b;
          break;
        case text::SplitBehavior::kMergedWithNext:  // the match starts the piece after it
          emit(cursor, a);
          cursor = a;
          break;
      }
    }
    emit(cursor, length);
  }
  pieces = std::move(next);
}

// BPE over one pre-tokenized piece (`word`, already byte-level mapped when the tokenizer is).
class Merger {
 public:
  explicit Merger(const Impl& t) : t_(t) {}

  void run(std::string_view word, std::vector<int32_t>& out) {
    symbols_.clear();
    for (size_t pos = 0; pos < word.size();) {
      size_t length = text::utf8_valid_length(word, pos);
      if (length == 0) length = 1;
      const auto it = t_.ids.find(word.substr(pos, length));
      symbols_.push_back({static_cast<uint32_t>(pos), static_cast<uint32_t>(length),
                          it == t_.ids.end() ? -1 : it->second,
                          static_cast<int32_t>(symbols_.size()) - 1,
                          static_cast<int32_t>(symbols_.size()) + 1});
      pos += length;
    }
    if (symbols_.empty()) return;
    symbols_.back().next = -1;
    queue_ = {};
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols_.size()); ++i)
      consider(word, i, i + 1);
    while (!queue_.empty()) {
      const Candidate c = queue_.top();
      queue_.pop();
      Symbol& left = symbols_[static_cast<size_t>(c.left)];
      if (left.length == 0 || left.next != c.right || left.length != c.left_length) continue;
      Symbol& right = symbols_[static_cast<size_t>(c.right)];
      if (right.length != c.right_length) continue;
      left.length += right.length;
      left.id = c.merged;
      left.next = right.next;
      if (right.next >= 0) symbols_[static_cast<size_t>(right.next)].prev = c.left;
      right.length = 0;
      if (left.prev >= 0) consider(word, left.prev, c.left);
      if (left.next >= 0) consider(word, c.left, left.next);
    }
    for (int32_t i = 0; i >= 0; i = symbols_[static_cast<size_t>(i)].next) {
      const Symbol& s = symbols_[static_cast<size_t>(i)];
      if (s.id >= 0) {
        out.push_back(s.id);
      } else {
        fallback(word.substr(s.start, s.length), out);
      }
    }
  }

 private:
  struct Symbol {
    uint32_t start = 0;
    uint32_t length = 0;  // 0: merged into its left neighbour
    int32_t id = -1;
    int32_t prev = -1;
    int32_t next = -1;
  };
  struct Candidate {
    double priority = 0;  // lower first: rank, or -score
    int32_t left = 0;
    int32_t right = 0;
    uint32_t left_length = 0;
    uint32_t right_length = 0;
    int32_t merged = 0;
    bool operator<(const Candidate& o) const {  // std::priority_queue is a max-heap
      return priority != o.priority ? priority > o.priority : left > o.left;
    }
  };

  void consider(std::string_view word, int32_t l, int32_t r) {
    const Symbol& a = symbols_[static_cast<size_t>(l)];
    const Symbol& b = symbols_[static_cast<size_t>(r)];
    if (t_.merging == Impl::Merging::kRanks) {
      if (a.id < 0 || b.id < 0) return;
      const auto it =
          t_.merges.find((static_cast<uint64_t>(a.id) << 32) | static_cast<uint32_t>(b.id));
      if (it == t_.merges.end()) return;
      queue_.push(
          {static_cast<double>(it->second.first), l, r, a.length, b.length, it->second.second});
    } else {
      const auto it = t_.ids.find(word.substr(a.start, a.length + b.length));
      if (it == t_.ids.end()) return;
      queue_.push({-static_cast<double>(t_.scores[static_cast<size_t>(it->second)]), l, r, a.length,
                   b.length, it->second});
    }
  }

  // A symbol the vocabulary lacks: its bytes as byte tokens, or the unknown token.
  void fallback(std::string_view symbol, std::vector<int32_t>& out) {
    if (t_.byte_fallback || t_.byte_level) {
      std::string bytes;
      if (t_.byte_level) {
        for (size_t pos = 0; pos < symbol.size();) {
          size_t length = 0;
          const char32_t cp = text::decode_utf8(symbol, pos, length);
          const auto b = text::byte_level_alphabet().decode(cp);
          bytes += b ? static_cast<char>(*b) : '?';
          pos += length;
        }
      } else {
        bytes = symbol;
      }
      bool complete = true;
      for (char c : bytes)
        complete = complete && t_.byte_tokens[static_cast<uint8_t>(c)] >= 0;
      if (complete) {
        for (char c : bytes)
          out.push_back(t_.byte_tokens[static_cast<uint8_t>(c)]);
        return;
      }
    }
    if (!t_.unk_id) {
      fail(ErrorCode::kModelFormat,
           "the tokenizer cannot encode \"{}\": it is not in the vocabulary, which has no byte "
           "tokens and no unknown token",
           symbol);
    }
    if (t_.fuse_unk && !out.empty() && out.back() == *t_.unk_id) return;
    out.push_back(*t_.unk_id);
  }

  const Impl& t_;
  std::vector<Symbol> symbols_;
  std::priority_queue<Candidate> queue_;
};

void encode_fragment(const Impl& t, std::string_view fragment, bool at_start, Merger& merger,
                     std::unordered_map<std::string, std::vector<int32_t>>& cache,
                     std::vector<int32_t>& out) {
  const std::string s = normalize(t, fragment, at_start);
  std::vector<std::pair<size_t, size_t>> pieces{{0, s.size()}};
  for (const text::SplitStep& step : t.splits)
    apply_split(step, s, pieces);
  std::string mapped;
  for (const auto& [begin, end] : pieces) {
    std::string_view piece(s.data() + begin, end - begin);
    if (t.byte_level) {
      mapped = text::byte_level_alphabet().map(piece);
      piece = mapped;
    }
    if (t.ignore_merges) {
      if (const auto it = t.ids.find(piece); it != t.ids.end()) {
        out.push_back(it->second);
        continue;
      }
    }
    auto [it, inserted] = cache.try_emplace(std::string(piece));
    if (inserted) merger.run(piece, it->second);
    out.insert(out.end(), it->second.begin(), it->second.end());
  }
}

void check_id(const Impl& t, int32_t id) {
  if (id < 0 || id >= static_cast<int32_t>(t.tokens.size())) {
    fail(ErrorCode::kInvalidArgument, "token id {} is outside the vocabulary [0, {})", id,
         t.tokens.size());
  }
}

}  // namespace

// ---- Impl ----------------------------------------------------------------------------------

void Tokenizer::Impl::finalize(std::string_view origin) {
  const auto n = static_cast<int32_t>(tokens.size());
  for (const auto& [name, id] : {std::pair{"bos", bos}, {"eos", eos}, {"unk", unk_id}}) {
    if (id && (*id < 0 || *id >= n)) {
      fail(ErrorCode::kModelFormat, "{}: the {} token id {} is outside the vocabulary [0, {})",
           origin, name, *id, n);
    }
  }
  std::sort(specials.begin(), specials.end(), [](const Special& a, const Special& b) {
    return a.content.size() != b.content.size() ? a.content.size() > b.content.size() : a.id < b.id;
  });
  std::erase_if(specials, [](const Special& s) { return s.content.empty(); });
  for (auto& bucket : specials_by_first_byte)
    bucket.clear();
  for (size_t i = 0; i < specials.size(); ++i) {
    specials_by_first_byte[static_cast<uint8_t>(specials[i].content[0])].push_back(
        static_cast<uint32_t>(i));
  }
  byte_tokens.fill(-1);
  for (int b = 0; b < 256; ++b) {
    const std::string text = byte_level
                                 ? text::byte_level_alphabet().encode(static_cast<uint8_t>(b))
                                 : fmt::format("<0x{:02X}>", b);
    if (const auto it = ids.find(text); it != ids.end())
      byte_tokens[static_cast<size_t>(b)] = it->second;
  }
  std::unordered_set<int32_t> eog(end_of_generation.begin(), end_of_generation.end());
  if (eos) eog.insert(*eos);
  for (int32_t id = 0; id < n; ++id) {
    const TokenKind kind = kinds[static_cast<size_t>(id)];
    if (kind != TokenKind::kControl && kind != TokenKind::kUserDefined) continue;
    for (std::string_view marker : kEndOfGenerationTexts) {
      if (tokens[static_cast<size_t>(id)] == marker) eog.insert(id);
    }
  }
  end_of_generation.assign(eog.begin(), eog.end());
  std::sort(end_of_generation.begin(), end_of_generation.end());
}

std::string Tokenizer::Impl::decode_token(int32_t id) const {
  const std::string& text = tokens[static_cast<size_t>(id)];
  switch (kinds[static_cast<size_t>(id)]) {
    case TokenKind::kByte:
      if (text.size() == 6 && text.starts_with("<0x") && text.ends_with(">")) {
        return std::string(1, static_cast<char>(std::stoi(text.substr(3, 2), nullptr, 16)));
      }
      return text;
    case TokenKind::kControl:
    case TokenKind::kUserDefined:
    case TokenKind::kUnknown:
    case TokenKind::kUnused:
      return text;
    case TokenKind::kNormal:
      break;
  }
  if (byte_level) {
    std::string bytes;
    for (size_t pos = 0; pos < text.size();) {
      size_t length = 0;
      const char32_t cp = text::decode_utf8(text, pos, length);
      const auto b = text::byte_level_alphabet().decode(cp);
      if (!b) return text;  // not byte-level text (Hugging Face keeps such tokens as they are)
      bytes += static_cast<char>(*b);
      pos += length;
    }
    return bytes;
  }
  std::string out = text;
  for (const auto& [from, to] : decode_replacements)
    replace_all(out, from, to);
  return out;
}

// ---- Tokenizer -----------------------------------------------------------------------------

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Tokenizer Tokenizer::open(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec) &&
      std::filesystem::exists(path / "tokenizer.json", ec)) {
    return from_tokenizer_json(path / "tokenizer.json");
  }
  if (path.filename() == "tokenizer.json") return from_tokenizer_json(path);
  const ModelLocation location = locate_model(path);
  if (location.format == CheckpointFormat::kGguf) return from_gguf(GgufFile::open(location.path));
  fail(ErrorCode::kInvalidArgument,
       "model directory {} has no tokenizer.json, so its text cannot be tokenized; add the "
       "model's tokenizer.json (and tokenizer_config.json), or pass token ids (--prompt-ids)",
       path.string());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  const Impl& t = *impl_;
  if (const auto bad = text::first_invalid_utf8(text)) {
    fail(ErrorCode::kInvalidArgument,
         "text is not valid UTF-8: byte 0x{:02x} at offset {} does not start a complete "
         "character; pass UTF-8 text",
         static_cast<uint8_t>(text[*bad]), *bad);
  }
  std::vector<int32_t> out;
  if (options.add_special) out = t.prefix_ids;
  Merger merger(t);
  std::unordered_map<std::string, std::vector<int32_t>> cache;
  for (const Fragment& f : partition_specials(t, text, options)) {
    if (f.special >= 0) {
      out.push_back(f.special);
    } else {
      encode_fragment(t, f.text, f.offset == 0, merger, cache, out);
    }
  }
  if (options.add_special) out.insert(out.end(), t.suffix_ids.begin(), t.suffix_ids.end());
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, const DecodeOptions& options) const {
  const Impl& t = *impl_;
  std::string out;
  for (int32_t id : ids) {
    check_id(t, id);
    if (options.skip_special && t.kinds[static_cast<size_t>(id)] == TokenKind::kControl) continue;
    out += t.decode_token(id);
  }
  if (t.decode_strip_leading_space && out.starts_with(' ')) out.erase(0, 1);
  return out;
}

int32_t Tokenizer::vocab_size() const {
  return static_cast<int32_t>(impl_->tokens.size());
}
const std::string& Tokenizer::token_text(int32_t id) const {
  check_id(*impl_, id);
  return impl_->tokens[static_cast<size_t>(id)];
}
TokenKind Tokenizer::token_kind(int32_t id) const {
  check_id(*impl_, id);
  return impl_->kinds[static_cast<size_t>(id)];
}
std::optional<int32_t> Tokenizer::token_id(std::string_view token_text) const {
  const auto it = impl_->ids.find(token_text);
  if (it == impl_->ids.end()) return std::nullopt;
  return it->second;
}
std::optional<int32_t> Tokenizer::bos_id() const {
  return impl_->bos;
}
std::optional<int32_t> Tokenizer::eos_id() const {
  return impl_->eos;
}
bool Tokenizer::adds_bos() const {
  return impl_->bos && !impl_->prefix_ids.empty() && impl_->prefix_ids.front() == *impl_->bos;
}
const std::vector<int32_t>& Tokenizer::end_of_generation_ids() const {
  return impl_->end_of_generation;
}
bool Tokenizer::is_end_of_generation(int32_t id) const {
  return std::binary_search(impl_->end_of_generation.begin(), impl_->end_of_generation.end(), id);
}
const std::optional<std::string>& Tokenizer::chat_template() const {
  return impl_->chat_template;
}
const std::string& Tokenizer::description() const {
  return impl_->description;
}

// ---- StreamDecoder -------------------------------------------------------------------------

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, const DecodeOptions& options)
    : tokenizer_(tokenizer), options_(options) {}

std::string StreamDecoder::push(int32_t id) {
  const Tokenizer::Impl& t = *tokenizer_.impl_;
  check_id(t, id);
  if (options_.skip_special && t.kinds[static_cast<size_t>(id)] == TokenKind::kControl) return {};
  std::string bytes = t.decode_token(id);
  if (!started_ && !bytes.empty()) {
    started_ = true;
    if (t.decode_strip_leading_space && bytes.starts_with(' ')) bytes.erase(0, 1);
  }
  pending_ += bytes;
  const size_t complete = text::complete_utf8_prefix(pending_);
  std::string out = text::replace_invalid_utf8(std::string_view(pending_).substr(0, complete));
  pending_.erase(0, complete);
  return out;
}

std::string StreamDecoder::finish() {
  std::string out = text::replace_invalid_utf8(pending_);
  pending_.clear();
  started_ = false;
  return out;
}

}  // namespace conveyor
