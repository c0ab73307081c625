// OpenAI request checking and response shapes.
#include "serve/openai.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "conveyor/error.hpp"

namespace conveyor::serve {

using nlohmann::json;

namespace {

[[noreturn]] void bad(std::string param, std::string message, std::string code = {}) {
  throw ApiException(ApiError{.status = 400,
                              .message = std::move(message),
                              .param = std::move(param),
                              .code = std::move(code)});
}

// The value of `name`, or null when absent or JSON null (OpenAI treats both as "not given").
const json* field(const json& body, const char* name) {
  const auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string shown(const json& value) {
  std::string text = value.dump();
  return text.size() > 60 ? text.substr(0, 57) + "..." : text;
}

double number(const json& body, const char* name, double fallback, double lo, double hi,
              bool lo_open = false) {
  const json* v = field(body, name);
  if (v == nullptr) return fallback;
  if (!v->is_number()) {
    bad(name, fmt::format("'{}' must be a number, got {}", name, shown(*v)));
  }
  const double x = v->get<double>();
  if (!(lo_open ? x > lo : x >= lo) || !(x <= hi)) {
    bad(name, fmt::format("'{}' is {} but must lie in {}{}, {}]", name, shown(*v),
                          lo_open ? "(" : "[", lo, hi));
  }
  return x;
}

std::optional<int64_t> integer(const json& body, const char* name, int64_t lo, int64_t hi) {
  const json* v = field(body, name);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer()) {
    bad(name, fmt::format("'{}' must be an integer, got {}", name, shown(*v)));
  }
  const auto x = v->get<int64_t>();
  if (x < lo || x > hi) {
    bad(name, fmt::format("'{}' is {} but must lie in [{}, {}]", name, x, lo, hi));
  }
  return x;
}

bool boolean(const json& body, const char* name, bool fallback) {
  const json* v = field(body, name);
  if (v == nullptr) return fallback;
  if (!v->is_boolean())
    bad(name, fmt::format("'{}' must be true or false, got {}", name, shown(*v)));
  return v->get<bool>();
}

// Options conveyor does not implement: refused rather than silently ignored.
void refuse_unsupported(const json& body) {
  auto refuse = [&](const char* name, const char* why) {
    bad(name, fmt::format("'{}' is not supported by conveyor-serve: {}", name, why));
  };
  if (boolean(body, "echo", false)) refuse("echo", "the response never repeats the prompt");
  if (const json* v = field(body, "logprobs");
      v != nullptr && !(v->is_boolean() && !*v) && !(v->is_number_integer() && *v == 0)) {
    refuse("logprobs", "log-probabilities are not returned");
  }
  if (field(body, "top_logprobs") != nullptr) refuse("top_logprobs", "no log-probabilities");
  for (const char* penalty : {"presence_penalty", "frequency_penalty"}) {
    if (number(body, penalty, 0.0, -2.0, 2.0) != 0.0) refuse(penalty, "penalties are not applied");
  }
  if (const json* v = field(body, "logit_bias"); v != nullptr && !(v->is_object() && v->empty())) {
    refuse("logit_bias", "logits are not biased");
  }
  if (field(body, "suffix") != nullptr) refuse("suffix", "no insertion mode");
  if (const json* v = field(body, "tools"); v != nullptr && !(v->is_array() && v->empty())) {
    refuse("tools", "no tool calling");
  }
  if (const json* v = field(body, "response_format");
      v != nullptr && !(v->is_object() && v->value("type", "") == "text")) {
    refuse("response_format", "only plain text");
  }
}

std::vector<int32_t> token_ids(const json& array, const char* param, const ModelInfo& info) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < array.size(); ++i) {
    const json& v = array[i];
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= info.vocab_size) {
      bad(param, fmt::format("'{}' token {} is {}; token ids are integers in [0, {})", param, i,
                             shown(v), info.vocab_size));
    }
    ids.push_back(v.get<int32_t>());
  }
  return ids;
}

const Tokenizer& tokenizer_for(const ModelInfo& info, const char* param) {
  if (info.tokenizer == nullptr) {
    bad(param,
        fmt::format("the model '{}' has no tokenizer; send the prompt as token ids", info.name));
  }
  return *info.tokenizer;
}

std::vector<int32_t> completion_prompt(const json& body, const ModelInfo& info) {
  const json* prompt = field(body, "prompt");
  if (prompt == nullptr) bad("prompt", "'prompt' is required: a string or an array of token ids");
  if (prompt->is_string()) {
    return tokenizer_for(info, "prompt").encode(prompt->get<std::string>());
  }
  if (prompt->is_array()) {
    if (!prompt->empty() && (*prompt)[0].is_string()) {
      if (prompt->size() != 1) {
        bad("prompt",
            fmt::format("'prompt' holds {} prompts; send one per request (n = 1)", prompt->size()));
      }
      return tokenizer_for(info, "prompt").encode((*prompt)[0].get<std::string>());
    }
    if (!prompt->empty() && (*prompt)[0].is_array()) {
      if (prompt->size() != 1) {
        bad("prompt",
            fmt::format("'prompt' holds {} prompts; send one per request (n = 1)", prompt->size()));
      }
      return token_ids((*prompt)[0], "prompt", info);
    }
    return token_ids(*prompt, "prompt", info);
  }
  bad("prompt",
      fmt::format("'prompt' must be a string or an array of token ids, got {}", shown(*prompt)));
}

// Message content: a string, or an array of {"type": "text", "text": ...} parts.
std::string message_content(const json& content, size_t index) {
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {
    std::string text;
    for (const json& part : content) {
      if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
          !part["text"].is_string()) {
        bad("messages", fmt::format("messages[{}].content parts must be {{\"type\": \"text\", "
                                    "\"text\": \"...\"}}; got {}",
                                    index, shown(part)));
      }
      text += part["text"].get<std::string>();
    }
    return text;
  }
  bad("messages",
      fmt::format("messages[{}].content must be a string or an array of text parts, got {}", index,
                  shown(content)));
}

std::vector<int32_t> chat_prompt(const json& body, const ModelInfo& info) {
  const json* messages = field(body, "messages");
  if (messages == nullptr) {
    bad("messages", "'messages' is required: an array of {\"role\", \"content\"} objects");
  }
  if (!messages->is_array() || messages->empty()) {
    bad("messages", fmt::format("'messages' must be a non-empty array, got {}", shown(*messages)));
  }
  const Tokenizer& tokenizer = tokenizer_for(info, "messages");
  if (info.chat == nullptr) {
    bad("messages", fmt::format("the model '{}' has no chat template; use /v1/completions or "
                                "start conveyor-serve with --chat-template",
                                info.name));
  }
  std::vector<ChatMessage> chat;
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
      bad("messages",
          fmt::format("messages[{}] must be an object with a string 'role', got {}", i, shown(m)));
    }
    const json* content = field(m, "content");
    chat.push_back({m["role"].get<std::string>(),
                    content == nullptr ? std::string() : message_content(*content, i)});
  }
  try {
    return encode_chat(tokenizer, info.chat->render(chat, tokenizer));
  } catch (const Error& e) {
    bad("messages", e.what());
  }
}

std::vector<std::string> stop_strings(const json& body) {
  const json* stop = field(body, "stop");
  if (stop == nullptr) return {};
  std::vector<std::string> out;
  if (stop->is_string()) {
    out.push_back(stop->get<std::string>());
  } else if (stop->is_array() && stop->size() <= 4 &&
             std::all_of(stop->begin(), stop->end(), [](const json& s) { return s.is_string(); })) {
    for (const json& s : *stop)
      out.push_back(s.get<std::string>());
  } else {
    bad("stop", fmt::format("'stop' must be a string or an array of at most 4 strings, got {}",
                            shown(*stop)));
  }
  return out;
}

}  // namespace

json error_json(const ApiError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)},
            {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

ApiRequest parse_request(Endpoint endpoint, std::string_view body_text, const ModelInfo& info,
                         uint64_t seed_source) {
  json body;
  try {
    body = json::parse(body_text);
  } catch (const json::parse_error& e) {
    bad("", fmt::format("the request body is not valid JSON: {}", e.what()));
  }
  if (!body.is_object()) bad("", "the request body must be a JSON object");
  if (const json* model = field(body, "model")) {
    if (!model->is_string())
      bad("model", fmt::format("'model' must be a string, got {}", shown(*model)));
    if (model->get<std::string>() != info.name) {
      throw ApiException(ApiError{.status = 404,
                                  .message = fmt::format("The model '{}' does not exist; this "
                                                         "server serves '{}'",
                                                         model->get<std::string>(), info.name),
                                  .param = "model",
                                  .code = "model_not_found"});
    }
  }
  if (const auto n = integer(body, "n", 1, 128); n && *n != 1) {
    bad("n", fmt::format("'n' is {}; conveyor-serve returns one choice per request (n = 1)", *n));
  }
  refuse_unsupported(body);

  ApiRequest out;
  out.endpoint = endpoint;
  out.stream = boolean(body, "stream", false);
  if (const json* options = field(body, "stream_options")) {
    if (!options->is_object()) {
      bad("stream_options",
          fmt::format("'stream_options' must be an object, got {}", shown(*options)));
    }
    out.include_usage = boolean(*options, "include_usage", false);
  }
  Request& req = out.request;
  req.prompt =
      endpoint == Endpoint::kChat ? chat_prompt(body, info) : completion_prompt(body, info);
  if (req.prompt.empty()) bad("prompt", "the prompt is empty; give at least one token");
  const auto prompt = static_cast<int64_t>(req.prompt.size());
  if (prompt >= info.max_context) {
    bad(endpoint == Endpoint::kChat ? "messages" : "prompt",
        fmt::format("This model's maximum context length is {} tokens, but the prompt has {} "
                    "tokens; shorten it (the server's --max-context sets the limit)",
                    info.max_context, prompt),
        "context_length_exceeded");
  }
  // Chat answers may run to the end of the context; completions default to 16 tokens.
  std::optional<int64_t> max_tokens = integer(body, "max_tokens", 0, INT32_MAX);
  if (endpoint == Endpoint::kChat) {
    if (auto m = integer(body, "max_completion_tokens", 0, INT32_MAX)) max_tokens = m;
  }
  req.max_new_tokens =
      max_tokens.value_or(endpoint == Endpoint::kChat ? info.max_context - prompt : 16);
  if (prompt + req.max_new_tokens > info.max_context) {
    bad("max_tokens",
        fmt::format("This model's maximum context length is {} tokens. However, you requested {} "
                    "tokens ({} in the prompt, {} for the completion); lower max_tokens to at "
                    "most {} or shorten the prompt",
                    info.max_context, prompt + req.max_new_tokens, prompt, req.max_new_tokens,
                    info.max_context - prompt),
        "context_length_exceeded");
  }
  req.sampling.temperature = number(body, "temperature", 1.0, 0.0, 2.0);
  req.sampling.top_p = number(body, "top_p", 1.0, 0.0, 1.0, /*lo_open=*/true);
  req.sampling.top_k = integer(body, "top_k", 0, info.vocab_size).value_or(0);
  if (const json* seed = field(body, "seed")) {
    if (!seed->is_number_integer())
      bad("seed", fmt::format("'seed' must be an integer, got {}", shown(*seed)));
    req.sampling.seed = seed->is_number_unsigned() ? seed->get<uint64_t>()
                                                   : static_cast<uint64_t>(seed->get<int64_t>());
  } else {
    req.sampling.seed = seed_source;
  }
  // Extension (as llama.cpp and vLLM spell it): generate max_tokens whatever comes, for
  // benchmarks that need a fixed amount of work.
  req.stop_at_eos = !boolean(body, "ignore_eos", false);
  if (req.stop_at_eos && info.tokenizer != nullptr) {
    req.stop_token_ids = info.tokenizer->end_of_generation_ids();
  }
  out.stop = stop_strings(body);
  return out;
}

std::string_view finish_reason(FinishReason reason, bool stop_string) {
  if (stop_string || reason == FinishReason::kStopToken) return "stop";
  return "length";
}

namespace {

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json base(Endpoint endpoint, const ResponseHeader& h, bool chunk) {
  const char* object = endpoint == Endpoint::kChat
                           ? (chunk ? "chat.completion.chunk" : "chat.completion")
                           : "text_completion";
  return {{"id", h.id}, {"object", object}, {"created", h.created}, {"model", h.model}};
}

}  // namespace

json completion_json(Endpoint endpoint, const ResponseHeader& header, const std::string& text,
                     std::string_view finish, const Usage& usage,
                     const std::vector<int32_t>* token_ids) {
  json out = base(endpoint, header, false);
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish}};
  if (endpoint == Endpoint::kChat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  } else {
    choice["text"] = text;
  }
  if (token_ids != nullptr) choice["token_ids"] = *token_ids;  // without a tokenizer
  out["choices"] = json::array({choice});
  out["usage"] = usage_json(usage);
  return out;
}

json chunk_json(Endpoint endpoint, const ResponseHeader& header, const std::string& text,
                std::optional<std::string_view> finish, bool first,
                const std::vector<int32_t>* token_ids) {
  json out = base(endpoint, header, true);
  json choice = {{"index", 0},
                 {"logprobs", nullptr},
                 {"finish_reason", finish ? json(*finish) : json(nullptr)}};
  if (endpoint == Endpoint::kChat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!finish) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  if (token_ids != nullptr) choice["token_ids"] = *token_ids;
  out["choices"] = json::array({choice});
  return out;
}

json usage_chunk_json(Endpoint endpoint, const ResponseHeader& header, const Usage& usage) {
  json out = base(endpoint, header, true);
  out["choices"] = json::array();
  out["usage"] = usage_json(usage);
  return out;
}

}  // namespace conveyor::serve
