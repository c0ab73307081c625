// Tokenizer::from_tokenizer_json: a Hugging Face tokenizer.json (model BPE; normalizers
// Prepend/Replace/NFC; pre-tokenizers Split/ByteLevel/Digits/Metaspace; decoders ByteLevel,
// Replace/ByteFallback/Fuse/Strip, Metaspace; TemplateProcessing) plus tokenizer_config.json and
// generation_config.json from the same directory. Anything else is refused by name.
#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "conveyor/tokenizer.hpp"
#include "core/check.hpp"
#include "core/json_util.hpp"
#include "text/tokenizer_impl.hpp"

namespace conveyor {
namespace {

using Impl = Tokenizer::Impl;
using nlohmann::json;

json read_json(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    fail(ErrorCode::kModelFormat, "cannot open {}; check the path and that the file is readable",
         path.string());
  }
  std::ostringstream text;
  text << in.rdbuf();
  try {
    return json::parse(text.str());
  } catch (const json::exception& e) {
    fail(ErrorCode::kModelFormat, "{}: malformed JSON: {}", path.string(), e.what());
  }
}

// Reads one JSON object of a tokenizer.json, naming the component in errors.
class Component {
 public:
  Component(const json& value, std::string origin, std::string where)
      : v_(value), origin_(std::move(origin)), where_(std::move(where)) {
    if (!v_.is_object()) {
      fail(ErrorCode::kModelFormat, "{}: {} must be an object but is {}", origin_, where_,
           json_type_phrase(v_));
    }
  }
  std::string type() const { return string("type"); }
  std::string string(const char* key) const {
    const auto it = v_.find(key);
    if (it == v_.end() || !it->is_string()) {
      fail(ErrorCode::kModelFormat, "{}: {} needs a string \"{}\"", origin_, where_, key);
    }
    return it->get<std::string>();
  }
  bool boolean(const char* key, bool fallback) const {
    const auto it = v_.find(key);
    if (it == v_.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) {
      fail(ErrorCode::kModelFormat, "{}: {}.{} must be a boolean but is {}", origin_, where_, key,
           json_type_phrase(*it));
    }
    return it->get<bool>();
  }
  const json& at(const char* key) const {
    const auto it = v_.find(key);
    if (it == v_.end()) {
      fail(ErrorCode::kModelFormat, "{}: {} has no \"{}\"", origin_, where_, key);
    }
    return *it;
  }
  bool has(const char* key) const {
    const auto it = v_.find(key);
    return it != v_.end() && !it->is_null();
  }
  [[noreturn]] void unsupported(std::string_view what, std::string_view supported) const {
    fail(ErrorCode::kModelFormat, "{}: {} {} is not supported; conveyor implements {}", origin_,
         where_, what, supported);
  }
  const std::string& origin() const { return origin_; }
  const std::string& where() const { return where_; }

 private:
  const json& v_;
  std::string origin_;
  std::string where_;
};

// The literal of a Replace/Split pattern: {"String": s} (a literal) or {"Regex": r}.
std::pair<std::string, bool> pattern_of(const Component& c) {
  const json& p = c.at("pattern");
  if (p.is_object() && p.contains("String") && p["String"].is_string()) {
    return {p["String"].get<std::string>(), false};
  }
  if (p.is_object() && p.contains("Regex") && p["Regex"].is_string()) {
    return {p["Regex"].get<std::string>(), true};
  }
  fail(ErrorCode::kModelFormat,
       "{}: {} has a pattern that is neither {{\"String\"}} nor {{\"Regex\"}}", c.origin(),
       c.where());
}

// A literal as a PCRE2 pattern.
std::string quote_regex(std::string_view literal) {
  std::string out = "\\Q";
  for (size_t pos = 0;;) {
    const size_t end = literal.find("\\E", pos);
    if (end == std::string_view::npos) {
      out.append(literal.substr(pos));
      break;
    }
    out.append(literal.substr(pos, end - pos));
    out += "\\E\\\\E\\Q";
    pos = end + 2;
  }
  return out + "\\E";
}

text::PrependScheme prepend_scheme(const Component& c) {
  if (c.has("prepend_scheme")) {
    const std::string scheme = c.string("prepend_scheme");
    if (scheme == "always") return text::PrependScheme::kAlways;
    if (scheme == "first") return text::PrependScheme::kFirst;
    if (scheme == "never") return text::PrependScheme::kNever;
    c.unsupported(fmt::format("prepend_scheme \"{}\"", scheme), "always, first and never");
  }
  return c.boolean("add_prefix_space", true) ? text::PrependScheme::kAlways
                                             : text::PrependScheme::kNever;
}

void add_normalizer(Impl& t, const json& value, const std::string& origin,
                    const std::string& where) {
  if (value.is_null()) return;
  const Component c(value, origin, where);
  const std::string type = c.type();
  if (type == "Sequence") {
    const json& list = c.at("normalizers");
    for (size_t i = 0; i < list.size(); ++i)
      add_normalizer(t, list[i], origin, fmt::format("{}.normalizers[{}]", where, i));
  } else if (type == "Prepend") {
    t.normalize.push_back({.kind = Impl::NormalizeOp::Kind::kPrepend,
                           .to = c.string("prepend"),
                           .scheme = text::PrependScheme::kAlways});
  } else if (type == "Replace") {
    const auto [pattern, regex] = pattern_of(c);
    if (regex) c.unsupported("a Replace with a regex pattern", "string patterns");
    t.normalize.push_back(
        {.kind = Impl::NormalizeOp::Kind::kReplace, .from = pattern, .to = c.string("content")});
  } else if (type == "NFC") {
    t.normalize.push_back({.kind = Impl::NormalizeOp::Kind::kNfc});
  } else {
    c.unsupported(fmt::format("normalizer \"{}\"", type), "Sequence, Prepend, Replace and NFC");
  }
}

void add_pre_tokenizer(Impl& t, const json& value, const std::string& origin,
                       const std::string& where) {
  if (value.is_null()) return;
  const Component c(value, origin, where);
  const std::string type = c.type();
  if (type == "Sequence") {
    const json& list = c.at("pretokenizers");
    for (size_t i = 0; i < list.size(); ++i)
      add_pre_tokenizer(t, list[i], origin, fmt::format("{}.pretokenizers[{}]", where, i));
  } else if (type == "Split") {
    const auto [pattern, regex] = pattern_of(c);
    if (c.boolean("invert", false)) c.unsupported("an inverted Split", "invert = false");
    const std::string behavior = c.string("behavior");
    text::SplitBehavior b;
    if (behavior == "Isolated") {
      b = text::SplitBehavior::kIsolated;
    } else if (behavior == "Removed") {
      b = text::SplitBehavior::kRemoved;
    } else if (behavior == "MergedWithPrevious") {
      b = text::SplitBehavior::kMergedWithPrevious;
    } else if (behavior == "MergedWithNext") {
      b = text::SplitBehavior::kMergedWithNext;
    } else {
      c.unsupported(fmt::format("Split behavior \"{}\"", behavior),
                    "Isolated, Removed, MergedWithPrevious and MergedWithNext");
    }
    t.splits.push_back({text::Regex(regex ? pattern : quote_regex(pattern)), b});
  } else if (type == "ByteLevel") {
    t.byte_level = true;
    if (c.boolean("add_prefix_space", false)) {
      t.normalize.push_back({.kind = Impl::NormalizeOp::Kind::kPrepend,
                             .to = " ",
                             .scheme = text::PrependScheme::kAlways,
                             .unless_present = true});
    }
    if (c.boolean("use_regex", true)) {
      t.splits.push_back({text::Regex(text::kGpt2Pattern), text::SplitBehavior::kIsolated});
    }
  } else if (type == "Digits") {
    t.splits.push_back({text::Regex(c.boolean("individual_digits", false) ? "\\p{N}" : "\\p{N}+"),
                        text::SplitBehavior::kIsolated});
  } else if (type == "Metaspace") {
    const std::string replacement = c.string("replacement");
    t.normalize.push_back(
        {.kind = Impl::NormalizeOp::Kind::kReplace, .from = " ", .to = replacement});
    const text::PrependScheme scheme = prepend_scheme(c);
    if (scheme != text::PrependScheme::kNever) {
      t.normalize.push_back({.kind = Impl::NormalizeOp::Kind::kPrepend,
                             .to = replacement,
                             .scheme = scheme,
                             .unless_present = true});
    }
    if (c.boolean("split", true)) {
      t.splits.push_back(
          {text::Regex(quote_regex(replacement)), text::SplitBehavior::kMergedWithNext});
    }
  } else {
    c.unsupported(fmt::format("pre-tokenizer \"{}\"", type),
                  "Sequence, Split, ByteLevel, Digits and Metaspace");
  }
}

void add_decoder(Impl& t, const json& value, const std::string& origin, const std::string& where) {
  if (value.is_null()) return;
  const Component c(value, origin, where);
  const std::string type = c.type();
  if (type == "Sequence") {
    const json& list = c.at("decoders");
    for (size_t i = 0; i < list.size(); ++i)
      add_decoder(t, list[i], origin, fmt::format("{}.decoders[{}]", where, i));
  } else if (type == "ByteLevel") {
    t.byte_level = true;
  } else if (type == "Replace") {
    const auto [pattern, regex] = pattern_of(c);
    if (regex) c.unsupported("a Replace with a regex pattern", "string patterns");
    t.decode_replacements.emplace_back(pattern, c.string("content"));
  } else if (type == "ByteFallback" || type == "Fuse") {
    // Byte tokens decode to their byte and tokens are concatenated anyway.
  } else if (type == "Strip") {
    const std::string content = c.string("content");
    const json& start = c.at("start");
    const json& stop = c.at("stop");
    if (content != " " || !start.is_number_integer() || start.get<int64_t>() > 1 ||
        !stop.is_number_integer() || stop.get<int64_t>() != 0) {
      c.unsupported("Strip other than one leading space", "Strip(\" \", 1, 0)");
    }
    t.decode_strip_leading_space = start.get<int64_t>() == 1;
  } else if (type == "Metaspace") {
    t.decode_replacements.emplace_back(c.string("replacement"), " ");
    t.decode_strip_leading_space = prepend_scheme(c) != text::PrependScheme::kNever;
  } else {
    c.unsupported(fmt::format("decoder \"{}\"", type),
                  "Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip and Metaspace");
  }
}

std::optional<int32_t> token_of(const Impl& t, const std::string& content) {
  const auto it = t.ids.find(content);
  if (it == t.ids.end()) return std::nullopt;
  return it->second;
}

void add_post_processor(Impl& t, const json& value, const std::string& origin,
                        const std::string& where) {
  if (value.is_null()) return;
  const Component c(value, origin, where);
  const std::string type = c.type();
  if (type == "Sequence") {
    const json& list = c.at("processors");
    for (size_t i = 0; i < list.size(); ++i)
      add_post_processor(t, list[i], origin, fmt::format("{}.processors[{}]", where, i));
  } else if (type == "ByteLevel") {
    // Offsets only.
  } else if (type == "TemplateProcessing") {
    const json& single = c.at("single");
    if (!single.is_array()) c.unsupported("a non-list single template", "lists");
    std::vector<int32_t>* target = &t.prefix_ids;
    t.prefix_ids.clear();
    t.suffix_ids.clear();
    for (const json& piece : single) {
      if (piece.contains("Sequence")) {
        target = &t.suffix_ids;
      } else if (piece.contains("SpecialToken") && piece["SpecialToken"].contains("id")) {
        const auto name = piece["SpecialToken"]["id"].get<std::string>();
        const auto id = token_of(t, name);
        if (!id) {
          fail(ErrorCode::kModelFormat, "{}: {} adds \"{}\", which is not in the vocabulary",
               origin, where, name);
        }
        target->push_back(*id);
      } else {
        c.unsupported("template piece", "SpecialToken and Sequence");
      }
    }
  } else {
    c.unsupported(fmt::format("post-processor \"{}\"", type),
                  "Sequence, ByteLevel and TemplateProcessing");
  }
}

// "content" of a tokenizer_config.json special token: a string or {"content": ...}.
std::optional<std::string> special_content(const json& config, const char* key) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return std::nullopt;
}

std::vector<int64_t> ids_of(const json& value) {
  std::vector<int64_t> ids;
  if (value.is_number_integer()) ids.push_back(value.get<int64_t>());
  if (value.is_array()) {
    for (const json& v : value) {
      if (v.is_number_integer()) ids.push_back(v.get<int64_t>());
    }
  }
  return ids;
}

}  // namespace

Tokenizer Tokenizer::from_tokenizer_json(const std::filesystem::path& tokenizer_json) {
  const std::string origin = tokenizer_json.string();
  const json root = read_json(tokenizer_json);
  if (!root.is_object()) {
    fail(ErrorCode::kModelFormat, "{}: must hold a JSON object but holds {}", origin,
         json_type_phrase(root));
  }
  auto t = std::make_shared<Impl>();
  static const json kMissing;
  const auto model_it = root.find("model");
  const Component model(model_it != root.end() ? *model_it : kMissing, origin, "model");
  if (model.type() != "BPE") {
    model.unsupported(fmt::format("type \"{}\"", model.type()),
                      "BPE models (Llama, Mistral, Qwen2, SmolLM); Unigram and WordPiece "
                      "tokenizers are not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.has(key) && !model.at(key).get<std::string>().empty()) {
      model.unsupported(fmt::format("\"{}\"", key), "BPE without subword affixes");
    }
  }
  if (model.has("dropout") && model.at("dropout").get<double>() != 0.0) {
    model.unsupported("dropout", "deterministic BPE (dropout null)");
  }
  const json& vocab = model.at("vocab");
  if (!vocab.is_object()) {
    fail(ErrorCode::kModelFormat, "{}: model.vocab must be an object of token -> id", origin);
  }
  // Ids may leave gaps (added tokens fill them); size the table by the largest id.
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
      fail(ErrorCode::kModelFormat, "{}: model.vocab[\"{}\"] = {} is not a token id", origin, token,
           id.dump());
    }
    max_id = std::max(max_id, id.get<int64_t>());
  }
  const json added = root.contains("added_tokens") ? root["added_tokens"] : json::array();
  if (!added.is_array()) {
    fail(ErrorCode::kModelFormat, "{}: added_tokens must be a list", origin);
  }
  for (const json& a : added) {
    if (a.contains("id") && a["id"].is_number_integer())
      max_id = std::max(max_id, a["id"].get<int64_t>());
  }
  t->tokens.assign(static_cast<size_t>(max_id + 1), std::string());
  t->kinds.assign(static_cast<size_t>(max_id + 1), TokenKind::kUnused);
  for (const auto& [token, id] : vocab.items()) {
    t->tokens[static_cast<size_t>(id.get<int64_t>())] = token;
    t->kinds[static_cast<size_t>(id.get<int64_t>())] = TokenKind::kNormal;
  }
  for (size_t i = 0; i < added.size(); ++i) {
    const Component a(added[i], origin, fmt::format("added_tokens[{}]", i));
    const json& id_value = a.at("id");
    if (!id_value.is_number_integer() || id_value.get<int64_t>() < 0) {
      fail(ErrorCode::kModelFormat, "{}: added_tokens[{}] has no valid id", origin, i);
    }
    const auto id = static_cast<int32_t>(id_value.get<int64_t>());
    const bool special = a.boolean("special", false);
    t->tokens[static_cast<size_t>(id)] = a.string("content");
    t->kinds[static_cast<size_t>(id)] = special ? TokenKind::kControl : TokenKind::kUserDefined;
    t->specials.push_back({.id = id,
                           .content = a.string("content"),
                           .control = special,
                           .lstrip = a.boolean("lstrip", false),
                           .rstrip = a.boolean("rstrip", false)});
  }
  t->ids.reserve(t->tokens.size());
  for (size_t i = 0; i < t->tokens.size(); ++i) {
    if (t->kinds[i] != TokenKind::kUnused) t->ids.emplace(t->tokens[i], static_cast<int32_t>(i));
  }
  for (size_t i = 0; i < t->tokens.size(); ++i) {
    const std::string& text = t->tokens[i];
    if (t->kinds[i] == TokenKind::kNormal && text.size() == 6 && text.starts_with("<0x") &&
        text.ends_with(">")) {
      t->kinds[i] = TokenKind::kByte;
    }
  }

  const json& merges = model.at("merges");
  if (!merges.is_array()) {
    fail(ErrorCode::kModelFormat, "{}: model.merges must be a list", origin);
  }
  t->merges.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& m = merges[rank];
    std::string left, right;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ', 1);
      if (space == std::string::npos) {
        fail(ErrorCode::kModelFormat, "{}: merge {} \"{}\" has no space between its parts", origin,
             rank, s);
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      fail(ErrorCode::kModelFormat, "{}: merge {} is {}, not \"a b\" or [\"a\", \"b\"]", origin,
           rank, m.dump());
    }
    const auto l = token_of(*t, left);
    const auto r = token_of(*t, right);
    const auto merged = token_of(*t, left + right);
    if (!l || !r || !merged) {
      fail(ErrorCode::kModelFormat,
           "{}: merge {} (\"{}\", \"{}\") uses tokens outside the vocabulary", origin, rank, left,
           right);
    }
    t->merges.try_emplace((static_cast<uint64_t>(*l) << 32) | static_cast<uint32_t>(*r),
                          static_cast<int32_t>(rank), *merged);
  }
  t->merging = Impl::Merging::kRanks;
  t->ignore_merges = model.boolean("ignore_merges", false);
  t->byte_fallback = model.boolean("byte_fallback", false);
  t->fuse_unk = model.boolean("fuse_unk", false);
  if (model.has("unk_token")) {
    t->unk_id = token_of(*t, model.string("unk_token"));
  }

  add_normalizer(*t, root.value("normalizer", json()), origin, "normalizer");
  add_pre_tokenizer(*t, root.value("pre_tokenizer", json()), origin, "pre_tokenizer");
  add_decoder(*t, root.value("decoder", json()), origin, "decoder");
  add_post_processor(*t, root.value("post_processor", json()), origin, "post_processor");

  // tokenizer_config.json: special tokens, BOS/EOS use, chat template.
  const std::filesystem::path dir = tokenizer_json.parent_path();
  std::error_code ec;
  if (std::filesystem::exists(dir / "tokenizer_config.json", ec)) {
    const json config = read_json(dir / "tokenizer_config.json");
    if (const auto bos = special_content(config, "bos_token")) t->bos = token_of(*t, *bos);
    if (const auto eos = special_content(config, "eos_token")) t->eos = token_of(*t, *eos);
    if (config.contains("add_bos_token") && config["add_bos_token"].is_boolean()) {
      std::erase(t->prefix_ids, t->bos.value_or(-1));
      if (config["add_bos_token"].get<bool>() && t->bos)
        t->prefix_ids.insert(t->prefix_ids.begin(), *t->bos);
    }
    if (config.contains("add_eos_token") && config["add_eos_token"].is_boolean()) {
      std::erase(t->suffix_ids, t->eos.value_or(-1));
      if (config["add_eos_token"].get<bool>() && t->eos) t->suffix_ids.push_back(*t->eos);
    }
    if (const auto it = config.find("chat_template"); it != config.end()) {
      if (it->is_string()) {
        t->chat_template = it->get<std::string>();
      } else if (it->is_array()) {
        for (const json& entry : *it) {
          if (entry.value("name", "") == "default" && entry.contains("template")) {
            t->chat_template = entry["template"].get<std::string>();
          }
        }
      }
    }
  }
  if (!t->chat_template && std::filesystem::exists(dir / "chat_template.jinja", ec)) {
    std::ifstream in(dir / "chat_template.jinja", std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    t->chat_template = text.str();
  }
  for (const char* file : {"generation_config.json", "config.json"}) {
    if (!std::filesystem::exists(dir / file, ec)) continue;
    const json config = read_json(dir / file);
    if (!config.is_object() || !config.contains("eos_token_id")) continue;
    for (int64_t id : ids_of(config["eos_token_id"])) {
      if (id < 0 || id >= static_cast<int64_t>(t->tokens.size())) {
        fail(ErrorCode::kModelFormat, "{}: eos_token_id {} is outside the vocabulary [0, {})",
             (dir / file).string(), id, t->tokens.size());
      }
      t->end_of_generation.push_back(static_cast<int32_t>(id));
    }
  }
  t->description = fmt::format("{} BPE (tokenizer.json): {} tokens, {} merges, {} added",
                               t->byte_level ? "byte-level" : "SentencePiece-style", vocab.size(),
                               merges.size(), added.size());
  t->finalize(origin);
  return Tokenizer(std::move(t));
}

}  // namespace conveyor
