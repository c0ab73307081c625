// Chat templates without a Jinja engine: the formats Llama-family models ship (ChatML for
// SmolLM2 and Qwen2, Llama-3/3.1, Llama-2 [INST]/<<SYS>>, Mistral [INST] v1 and v3) detected
// from the model's template text and rendered as its Jinja would (tests compare against jinja2
// renderings of the real templates), including a template's built-in default system prompt.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "conveyor/tokenizer.hpp"

namespace conveyor {

enum class ChatFormat { kChatMl, kLlama3, kLlama2, kMistralV1, kMistralV3 };

// "chatml", "llama3", "llama2", "mistral-v1", "mistral-v3".
std::string_view chat_format_name(ChatFormat format) noexcept;

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct ChatRenderOptions {
  bool add_generation_prompt = true;  // end with the assistant's header
  std::string bos_token;              // text of the tokenizer's BOS, where the format writes it
  std::string eos_token;              // text of its EOS, where the format writes it
  // Llama-3.1+ system header date ("26 Jul 2024"); empty: the template's own default, or today
  // when the template asks for the clock.
  std::string date;
};

// A rendered conversation. `markup` lists the byte ranges the template wrote (as opposed to
// message content): control tokens are parsed there, and — unless asked otherwise — only there,
// so a user typing "<|im_end|>" cannot forge a turn.
struct ChatPrompt {
  std::string text;
  std::vector<std::pair<size_t, size_t>> markup;
};

class ChatTemplate {
 public:
  // Detects the format of a model's chat template (GGUF tokenizer.chat_template or
  // tokenizer_config.json). Throws conveyor::Error(kInvalidArgument) for a template it does not
  // recognise, naming the known formats and --chat-template.
  static ChatTemplate detect(std::string_view template_text);
  // A format by name (see chat_format_name; "llama3.1" is Llama-3 with the dated system
  // header). Throws kInvalidArgument for other names, listing the known ones.
  static ChatTemplate named(std::string_view name);
  // The model's template (tokenizer.chat_template()) or, when `override_name` is not empty, the
  // named format. Throws kInvalidArgument when the model has no template and none is named.
  static ChatTemplate for_tokenizer(const Tokenizer& tokenizer, std::string_view override_name);

  ChatFormat format() const { return format_; }
  // The system prompt the template inserts when the conversation has none (SmolLM2, Qwen2).
  const std::optional<std::string>& default_system() const { return default_system_; }
  // "chatml (default system prompt: ...)".
  std::string describe() const;

  // Renders `messages`. Throws kInvalidArgument where the template itself raises (roles that do
  // not alternate, a system message Mistral v1 does not take, unknown roles) and for an empty
  // conversation.
  ChatPrompt render(std::span<const ChatMessage> messages, const ChatRenderOptions& options) const;
  // render() with the tokenizer's BOS/EOS texts.
  ChatPrompt render(std::span<const ChatMessage> messages, const Tokenizer& tokenizer,
                    bool add_generation_prompt = true) const;

 private:
  ChatFormat format_ = ChatFormat::kChatMl;
  std::optional<std::string> default_system_;
  bool dated_system_header_ = false;  // Llama-3.1+: "Cutting Knowledge Date ... Today Date"
  bool date_from_clock_ = false;      // the template calls strftime_now
  std::string default_date_ = "26 Jul 2024";
};

// Token ids of a rendered conversation: no BOS added (templates write their own), control tokens
// parsed in the template's markup only, or in the content as well with
// `parse_special_in_content` (what Hugging Face and llama.cpp do). Throws kInvalidArgument when
// the prompt is empty.
std::vector<int32_t> encode_chat(const Tokenizer& tokenizer, const ChatPrompt& prompt,
                                 bool parse_special_in_content = false);

}  // namespace conveyor
