// StopStrings (text cut at the first stop string while streaming) and the OpenAI request
// checks, without a server.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/test_util.hpp"
#include "serve/openai.hpp"
#include "serve/stop_strings.hpp"

namespace conveyor::serve {
namespace {

std::string feed(StopStrings& s, const std::vector<std::string>& pieces) {
  std::string out;
  for (const std::string& p : pieces)
    out += s.push(p);
  return out + s.finish();
}

TEST(StopStrings, CutsAtTheFirstMatchAcrossPieces) {
  StopStrings s({"END", "\n\n"});
  // "EN" could start END: held back until "D" arrives.
  EXPECT_EQ(s.push("Hello EN"), "Hello ");
  EXPECT_EQ(s.push("D and more"), "");
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(s.push("ignored"), "");
  EXPECT_EQ(s.finish(), "");

  StopStrings t({"END"});
  EXPECT_EQ(t.push("ENTER"), "ENTER");  // "EN" then "T": not a stop
  EXPECT_EQ(feed(t, {"a E", "N", "x"}), "a ENx");
  EXPECT_FALSE(t.stopped());

  StopStrings earliest({"world", "lo"});
  EXPECT_EQ(feed(earliest, {"hello world"}), "hel");
  StopStrings none({});
  EXPECT_EQ(feed(none, {"a", "b"}), "ab");
  StopStrings unicode({"é!"});
  EXPECT_EQ(feed(unicode, {"café", "!", "x"}), "caf");
  StopStrings held({"abc"});
  EXPECT_EQ(feed(held, {"xab"}), "xab");  // the end releases what was held back
}

ModelInfo info() {
  return ModelInfo{.name = "m", .max_context = 100, .vocab_size = 50};
}

ApiError error_of(Endpoint endpoint, const std::string& body) {
  try {
    parse_request(endpoint, body, info(), 7);
  } catch (const ApiException& e) {
    return e.error();
  }
  ADD_FAILURE() << "accepted " << body;
  return {};
}

TEST(OpenAiRequests, TokenPromptsAndDefaults) {
  ApiRequest r =
      parse_request(Endpoint::kCompletions, R"({"model": "m", "prompt": [1, 2, 3]})", info(), 99);
  EXPECT_EQ(r.request.prompt, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(r.request.max_new_tokens, 16);
  EXPECT_EQ(r.request.sampling.temperature, 1.0);
  EXPECT_EQ(r.request.sampling.seed, 99u);
  EXPECT_FALSE(r.stream);
  r = parse_request(Endpoint::kCompletions,
                    R"({"prompt": [[4, 5]], "max_tokens": 7, "temperature": 0, "top_p": 0.5,
                        "top_k": 3, "seed": 5, "stop": ["x", "y"], "stream": true,
                        "stream_options": {"include_usage": true}, "n": 1, "user": "u",
                        "unknown_extension": {"ignored": true}})",
                    info(), 0);
  EXPECT_EQ(r.request.prompt, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(r.request.max_new_tokens, 7);
  EXPECT_TRUE(r.request.sampling.greedy());
  EXPECT_EQ(r.request.sampling.top_k, 3);
  EXPECT_EQ(r.request.sampling.seed, 5u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"x", "y"}));
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
}

TEST(OpenAiRequests, ErrorsNameTheFieldTheValueAndTheLimit) {
  struct Case {
    Endpoint endpoint;
    std::string body;
    int status;
    std::string param;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {Endpoint::kCompletions, "{not json", 400, "", {"not valid JSON"}},
      {Endpoint::kCompletions, "[1]", 400, "", {"JSON object"}},
      {Endpoint::kCompletions,
       R"({"model": "other", "prompt": [1]})",
       404,
       "model",
       {"'other' does not exist", "serves 'm'"}},
      {Endpoint::kCompletions, R"({"model": 3, "prompt": [1]})", 400, "model", {"string"}},
      {Endpoint::kCompletions, R"({})", 400, "prompt", {"'prompt' is required"}},
      {Endpoint::kCompletions,
       R"({"prompt": [1, 99]})",
       400,
       "prompt",
       {"token 1 is 99", "[0, 50)"}},
      {Endpoint::kCompletions, R"({"prompt": "text"})", 400, "prompt", {"has no tokenizer"}},
      {Endpoint::kCompletions,
       R"({"prompt": [1], "max_tokens": "9"})",
       400,
       "max_tokens",
       {"must be an integer", "\"9\""}},
      {Endpoint::kCompletions,
       R"({"prompt": [1], "max_tokens": 100})",
       400,
       "max_tokens",
       {"maximum context length is 100", "at most 99"}},
      {Endpoint::kCompletions,
       R"({"prompt": [1], "temperature": 3})",
       400,
       "temperature",
       {"3", "[0, 2]"}},
      {Endpoint::kCompletions, R"({"prompt": [1], "top_p": 0})", 400, "top_p", {"(0, 1]"}},
      {Endpoint::kCompletions, R"({"prompt": [1], "n": 2})", 400, "n", {"n = 1"}},
      {Endpoint::kCompletions,
       R"({"prompt": [1], "stream": "yes"})",
       400,
       "stream",
       {"true or false"}},
      {Endpoint::kCompletions, R"({"prompt": [1], "stop": [1]})", 400, "stop", {"strings"}},
      {Endpoint::kCompletions, R"({"prompt": [1], "echo": true})", 400, "echo", {"not supported"}},
      {Endpoint::kCompletions,
       R"({"prompt": [1], "presence_penalty": 1})",
       400,
       "presence_penalty",
       {"not supported"}},
      {Endpoint::kCompletions,
       R"({"prompt": [1], "logprobs": 2})",
       400,
       "logprobs",
       {"not supported"}},
      {Endpoint::kChat, R"({"model": "m"})", 400, "messages", {"'messages' is required"}},
      {Endpoint::kChat, R"({"messages": []})", 400, "messages", {"non-empty array"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    const ApiError e = error_of(c.endpoint, c.body);
    EXPECT_EQ(e.status, c.status);
    EXPECT_EQ(e.param, c.param);
    for (const std::string& part : c.parts)
      EXPECT_NE(e.message.find(part), std::string::npos) << e.message;
  }
  const nlohmann::json shape = error_json({.status = 400, .message = "m", .param = "p"});
  EXPECT_EQ(shape["error"]["message"], "m");
  EXPECT_EQ(shape["error"]["type"], "invalid_request_error");
  EXPECT_EQ(shape["error"]["param"], "p");
  EXPECT_TRUE(shape["error"]["code"].is_null());
}

}  // namespace
}  // namespace conveyor::serve
