// The OpenAI API's request and response shapes for /v1/completions and /v1/chat/completions:
// parsing and checking a request body into an engine Request, and the JSON of results, stream
// chunks and errors.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/chat_template.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/tokenizer.hpp"

namespace conveyor::serve {

// An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with an HTTP status.
struct ApiError {
  int status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  // the offending field, or empty
  std::string code;   // e.g. "context_length_exceeded", or empty
};

class ApiException : public std::runtime_error {
 public:
  explicit ApiException(ApiError error)
      : std::runtime_error(error.message), error_(std::move(error)) {}
  const ApiError& error() const { return error_; }

 private:
  ApiError error_;
};

nlohmann::json error_json(const ApiError& error);

enum class Endpoint { kCompletions, kChat };

// What the server knows about the model it serves.
struct ModelInfo {
  std::string name;                      // the id /v1/models lists and requests must name
  const Tokenizer* tokenizer = nullptr;  // null: token-id prompts only, no text out
  const ChatTemplate* chat = nullptr;    // null: no /v1/chat/completions
  int64_t max_context = 0;
  int64_t vocab_size = 0;
};

// A checked request: the engine request plus what only the server acts on.
struct ApiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  Request request;                // prompt ids, max_new_tokens, sampling, stop tokens
  std::vector<std::string> stop;  // stop strings (on the decoded text)
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// Parses and checks a request body. Throws ApiException: 400 for malformed JSON, a field of the
// wrong type or out of range, missing `prompt`/`messages`, `n` other than 1, unsupported options
// (echo, logprobs, penalties, logit_bias, suffix) and a prompt that does not fit the context;
// 404 for a `model` other than info.name. `seed_source` gives the seed of a request without one.
ApiRequest parse_request(Endpoint endpoint, std::string_view body, const ModelInfo& info,
                         uint64_t seed_source);

// "stop" or "length" (a stop string or token: "stop").
std::string_view finish_reason(FinishReason reason, bool stop_string);

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// Identity of one response: "cmpl-..."/"chatcmpl-...", the creation time and model name.
struct ResponseHeader {
  std::string id;
  int64_t created = 0;
  std::string model;
};

// A whole (non-streamed) response.
nlohmann::json completion_json(Endpoint endpoint, const ResponseHeader& header,
                               const std::string& text, std::string_view finish, const Usage& usage,
                               const std::vector<int32_t>* token_ids = nullptr);
// One server-sent event chunk: a text delta (chat: the first carries the role), or the final one
// with `finish` set and an empty delta. `token_ids`: the new tokens, for a model without a
// tokenizer (an extension field of the choice).
nlohmann::json chunk_json(Endpoint endpoint, const ResponseHeader& header, const std::string& text,
                          std::optional<std::string_view> finish, bool first,
                          const std::vector<int32_t>* token_ids = nullptr);
// The usage chunk a stream ends with when stream_options.include_usage is set.
nlohmann::json usage_chunk_json(Endpoint endpoint, const ResponseHeader& header,
                                const Usage& usage);

}  // namespace conveyor::serve
