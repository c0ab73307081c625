// ChatTemplate: format detection from a template's text (its marker tokens, as llama.cpp's
// llm_chat_detect_template does), default system prompt extraction, and rendering that follows
// each model's Jinja template string for string.
#include "conveyor/chat_template.hpp"

#include <fmt/format.h>

#include <array>
#include <ctime>

#include "core/check.hpp"

namespace conveyor {
namespace {

constexpr std::string_view kKnownFormats =
    "chatml, llama3, llama3.1, llama2, mistral-v1, mistral-v3";

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' ||
         (c >= '\x1c' && c <= '\x1f');
}

// Python's str.rstrip() / str.strip() (Jinja's |trim) for ASCII whitespace.
std::string_view rtrim(std::string_view s) {
  while (!s.empty() && is_space(s.back()))
    s.remove_suffix(1);
  return s;
}

std::string_view trim(std::string_view s) {
  s = rtrim(s);
  while (!s.empty() && is_space(s.front()))
    s.remove_prefix(1);
  return s;
}

// Builds the text and the markup ranges.
class Writer {
 public:
  void markup(std::string_view s) {
    if (s.empty()) return;
    const size_t begin = out_.text.size();
    out_.text += s;
    if (!out_.markup.empty() && out_.markup.back().second == begin) {
      out_.markup.back().second = out_.text.size();
    } else {
      out_.markup.emplace_back(begin, out_.text.size());
    }
  }
  void content(std::string_view s) { out_.text += s; }
  ChatPrompt take() { return std::move(out_); }

 private:
  ChatPrompt out_;
};

// The literal a ChatML template writes as its default system prompt: the text between
// "<|im_start|>system" + newline (a real one or the two characters \n) and "<|im_end|>" inside
// one quoted string (no message content spliced in).
std::optional<std::string> chatml_default_system(std::string_view t) {
  constexpr std::string_view kStart = "<|im_start|>system";
  for (size_t pos = t.find(kStart); pos != std::string_view::npos; pos = t.find(kStart, pos + 1)) {
    size_t body = pos + kStart.size();
    if (t.substr(body, 1) == "\n") {
      body += 1;
    } else if (t.substr(body, 2) == "\\n") {
      body += 2;
    } else {
      continue;
    }
    const size_t end = t.find("<|im_end|>", body);
    if (end == std::string_view::npos) continue;
    const std::string_view literal = t.substr(body, end - body);
    if (literal.find_first_of("'\"{}+") != std::string_view::npos) continue;
    std::string text;
    for (size_t i = 0; i < literal.size(); ++i) {
      if (literal[i] == '\\' && i + 1 < literal.size() && literal[i + 1] == 'n') {
        text += '\n';
        ++i;
      } else {
        text += literal[i];
      }
    }
    return text;
  }
  return std::nullopt;
}

std::string today() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  std::array<char, 32> buffer{};
  std::strftime(buffer.data(), buffer.size(), "%d %b %Y", &tm);
  return buffer.data();
}

// Raises what the templates raise when user and assistant turns do not alternate.
void check_alternation(std::span<const ChatMessage> messages) {
  for (size_t i = 0; i < messages.size(); ++i) {
    const bool user = messages[i].role == "user";
    if (user != (i % 2 == 0)) {
      fail(ErrorCode::kInvalidArgument,
           "message {} has role \"{}\", but after the optional system message this chat format "
           "needs user and assistant turns to alternate, starting with the user",
           i, messages[i].role);
    }
  }
}

void check_roles(std::span<const ChatMessage> messages) {
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      fail(ErrorCode::kInvalidArgument,
           "message {} has role \"{}\"; chat messages are system, user or assistant", i, role);
    }
  }
}

}  // namespace

std::string_view chat_format_name(ChatFormat format) noexcept {
  switch (format) {
    case ChatFormat::kChatMl:
      return "chatml";
    case ChatFormat::kLlama3:
      return "llama3";
    case ChatFormat::kLlama2:
      return "llama2";
    case ChatFormat::kMistralV1:
      return "mistral-v1";
    case ChatFormat::kMistralV3:
      return "mistral-v3";
  }
  return "?";
}

ChatTemplate ChatTemplate::detect(std::string_view t) {
  ChatTemplate out;
  if (t.find("<|im_start|>") != std::string_view::npos) {
    out.format_ = ChatFormat::kChatMl;
    out.default_system_ = chatml_default_system(t);
  } else if (t.find("<|start_header_id|>") != std::string_view::npos &&
             t.find("<|end_header_id|>") != std::string_view::npos) {
    out.format_ = ChatFormat::kLlama3;
    out.dated_system_header_ = t.find("Cutting Knowledge Date") != std::string_view::npos;
    out.date_from_clock_ = t.find("strftime_now") != std::string_view::npos;
    constexpr std::string_view kDate = "date_string = \"";
    if (const size_t at = t.find(kDate); at != std::string_view::npos) {
      const size_t end = t.find('"', at + kDate.size());
      if (end != std::string_view::npos) {
        out.default_date_ = std::string(t.substr(at + kDate.size(), end - at - kDate.size()));
      }
    }
  } else if (t.find("[INST]") != std::string_view::npos) {
    if (t.find("<<SYS>>") != std::string_view::npos) {
      out.format_ = ChatFormat::kLlama2;
    } else if (t.find("[SYSTEM_PROMPT]") != std::string_view::npos) {
      fail(ErrorCode::kInvalidArgument,
           "the model's chat template is Mistral v7 ([SYSTEM_PROMPT]), which conveyor does not "
           "render yet; pass --chat-template with one of: {}",
           kKnownFormats);
    } else if (t.find("[AVAILABLE_TOOLS]") != std::string_view::npos) {
      out.format_ = ChatFormat::kMistralV3;
    } else {
      out.format_ = ChatFormat::kMistralV1;
    }
  } else {
    fail(ErrorCode::kInvalidArgument,
         "the model's chat template (\"{}...\") is not one conveyor recognises; pass "
         "--chat-template with one of: {}",
         t.substr(0, 60), kKnownFormats);
  }
  return out;
}

ChatTemplate ChatTemplate::named(std::string_view name) {
  ChatTemplate out;
  if (name == "chatml") {
    out.format_ = ChatFormat::kChatMl;
  } else if (name == "llama3") {
    out.format_ = ChatFormat::kLlama3;
  } else if (name == "llama3.1") {
    out.format_ = ChatFormat::kLlama3;
    out.dated_system_header_ = true;
  } else if (name == "llama2") {
    out.format_ = ChatFormat::kLlama2;
  } else if (name == "mistral-v1" || name == "mistral") {
    out.format_ = ChatFormat::kMistralV1;
  } else if (name == "mistral-v3") {
    out.format_ = ChatFormat::kMistralV3;
  } else {
    fail(ErrorCode::kInvalidArgument, "chat template \"{}\" is not known; known: {}", name,
         kKnownFormats);
  }
  return out;
}

ChatTemplate ChatTemplate::for_tokenizer(const Tokenizer& tokenizer,
                                         std::string_view override_name) {
  if (!override_name.empty()) return named(override_name);
  if (!tokenizer.chat_template()) {
    fail(ErrorCode::kInvalidArgument,
         "the model has no chat template; pass --chat-template with one of: {}", kKnownFormats);
  }
  return detect(*tokenizer.chat_template());
}

std::string ChatTemplate::describe() const {
  std::string out(chat_format_name(format_));
  if (dated_system_header_) out += " (dated system header)";
  if (default_system_) out += fmt::format(" (default system prompt: \"{}\")", *default_system_);
  return out;
}

ChatPrompt ChatTemplate::render(std::span<const ChatMessage> messages,
                                const ChatRenderOptions& options) const {
  if (messages.empty()) {
    fail(ErrorCode::kInvalidArgument, "the conversation is empty; give at least one message");
  }
  check_roles(messages);
  Writer w;
  const bool has_system = messages.front().role == "system";
  const std::span<const ChatMessage> turns = has_system ? messages.subspan(1) : messages;
  switch (format_) {
    case ChatFormat::kChatMl:
      if (!has_system && default_system_) {
        w.markup("<|im_start|>system\n" + *default_system_ + "<|im_end|>\n");
      }
      for (const ChatMessage& m : messages) {
        w.markup("<|im_start|>" + m.role + "\n");
        w.content(m.content);
        w.markup("<|im_end|>\n");
      }
      if (options.add_generation_prompt) w.markup("<|im_start|>assistant\n");
      break;
    case ChatFormat::kLlama3: {
      w.markup(options.bos_token);
      std::span<const ChatMessage> rest = messages;
      if (dated_system_header_) {
        const std::string date = !options.date.empty() ? options.date
                                 : date_from_clock_    ? today()
                                                       : default_date_;
        w.markup(
            "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December "
            "2023\nToday Date: " +
            date + "\n\n");
        if (has_system) w.content(trim(messages.front().content));
        w.markup("<|eot_id|>");
        rest = turns;
      }
      for (const ChatMessage& m : rest) {
        w.markup("<|start_header_id|>" + m.role + "<|end_header_id|>\n\n");
        w.content(trim(m.content));
        w.markup("<|eot_id|>");
      }
      if (options.add_generation_prompt)
        w.markup("<|start_header_id|>assistant<|end_header_id|>\n\n");
      break;
    }
    case ChatFormat::kLlama2:
      check_alternation(turns);
      for (size_t i = 0; i < turns.size(); ++i) {
        const ChatMessage& m = turns[i];
        if (m.role == "user") {
          w.markup(options.bos_token + "[INST] ");
          if (i == 0 && has_system) {
            // The template strips "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content as a whole.
            const std::string_view user = rtrim(m.content);
            w.markup("<<SYS>>\n");
            w.content(messages.front().content);
            w.markup(user.empty() ? "\n<</SYS>>" : "\n<</SYS>>\n\n");
            w.content(user);
          } else {
            w.content(trim(m.content));
          }
          w.markup(" [/INST]");
        } else {
          w.markup(" ");
          w.content(trim(m.content));
          w.markup(" " + options.eos_token);
        }
      }
      break;
    case ChatFormat::kMistralV1:
      if (has_system) {
        fail(ErrorCode::kInvalidArgument,
             "this Mistral chat format takes no system message (its template refuses one); "
             "drop --system or put the instructions in the first user message");
      }
      check_alternation(turns);
      w.markup(options.bos_token);
      for (const ChatMessage& m : turns) {
        if (m.role == "user") {
          w.markup("[INST] ");
          w.content(m.content);
          w.markup(" [/INST]");
        } else {
          w.content(m.content);
          w.markup(options.eos_token + " ");
        }
      }
      break;
    case ChatFormat::kMistralV3:
      check_alternation(turns);
      w.markup(options.bos_token);
      for (size_t i = 0; i < turns.size(); ++i) {
        const ChatMessage& m = turns[i];
        if (m.role == "user") {
          w.markup("[INST] ");
          if (i + 1 == turns.size() && has_system) {
            w.content(messages.front().content);
            w.markup("\n\n");
          }
          w.content(m.content);
          w.markup("[/INST]");
        } else {
          w.markup(" ");
          w.content(trim(m.content));
          w.markup(options.eos_token);
        }
      }
      break;
  }
  ChatPrompt prompt = w.take();
  if (prompt.text.empty()) {
    fail(ErrorCode::kInvalidArgument,
         "the prompt is empty after applying the {} chat template; give a non-empty message",
         chat_format_name(format_));
  }
  return prompt;
}

ChatPrompt ChatTemplate::render(std::span<const ChatMessage> messages, const Tokenizer& tokenizer,
                                bool add_generation_prompt) const {
  ChatRenderOptions options;
  options.add_generation_prompt = add_generation_prompt;
  if (const auto bos = tokenizer.bos_id()) options.bos_token = tokenizer.token_text(*bos);
  if (const auto eos = tokenizer.eos_id()) options.eos_token = tokenizer.token_text(*eos);
  return render(messages, options);
}

std::vector<int32_t> encode_chat(const Tokenizer& tokenizer, const ChatPrompt& prompt,
                                 bool parse_special_in_content) {
  std::vector<int32_t> ids = tokenizer.encode(
      prompt.text,
      EncodeOptions{
          .add_special = false,
          .parse_special = true,
          .special_ranges = parse_special_in_content
                                ? std::span<const std::pair<size_t, size_t>>()
                                : std::span<const std::pair<size_t, size_t>>(prompt.markup)});
  if (ids.empty()) {
    fail(ErrorCode::kInvalidArgument,
         "the prompt has no tokens after applying the chat template; give a non-empty message");
  }
  return ids;
}

}  // namespace conveyor
