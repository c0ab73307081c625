// conveyor-serve over real HTTP on loopback: OpenAI-shaped responses, whole and streamed; errors
// with the right status; overload; a client that leaves mid-stream frees its slot; 32 concurrent
// streaming clients get what each would alone; /metrics agrees; SIGTERM drains and exits 0.
#include <gtest/gtest.h>
#include <httplib.h>

#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>
#include <thread>

#include "common/test_util.hpp"
#include "conveyor/chat_template.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/tokenizer.hpp"
#include "serve/server.hpp"

namespace conveyor::serve {
namespace {

using nlohmann::json;
constexpr const char* kSmolLm2 = "SmolLM2-135M-Instruct.Q4_1.gguf";

struct Sse {
  std::vector<json> events;  // data payloads other than [DONE]
  bool done = false;         // ended with data: [DONE]
  int status = 0;
  std::string error;  // the client's error when no response came
};

// POSTs `body` and parses the server-sent events as they arrive; `keep_going` may end the
// connection early (a client that leaves).
Sse post_stream(httplib::Client& client, const std::string& path, const json& body,
                const std::function<bool(const Sse&)>& keep_going = {}) {
  Sse out;
  std::string buffer;
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body.dump();
  req.headers.emplace("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    buffer.append(data, n);
    for (size_t end; (end = buffer.find("\n\n")) != std::string::npos;) {
      const std::string event = buffer.substr(0, end);
      buffer.erase(0, end + 2);
      if (event.rfind("data: ", 0) != 0) continue;  // a keep-alive comment
      const std::string payload = event.substr(6);
      if (payload == "[DONE]") {
        out.done = true;
      } else {
        out.events.push_back(json::parse(payload));
      }
    }
    return !keep_going || keep_going(out);
  };
  const httplib::Result result = client.send(req);
  if (result) {
    out.status = result->status;
  } else {
    out.error = httplib::to_string(result.error());
  }
  return out;
}

json post(httplib::Client& client, const std::string& path, const json& body, int* status,
          std::string* retry_after = nullptr) {
  const httplib::Result r = client.Post(path, body.dump(), "application/json");
  if (!r) {
    ADD_FAILURE() << "no response from " << path;
    return {};
  }
  *status = r->status;
  if (retry_after != nullptr) *retry_after = r->get_header_value("Retry-After");
  return json::parse(r->body);
}

// The text of a stream: completions' choices[].text, chat's delta.content.
std::string stream_text(const Sse& s) {
  std::string text;
  for (const json& e : s.events) {
    if (!e.contains("choices") || e["choices"].empty()) continue;
    const json& c = e["choices"][0];
    if (c.contains("text")) text += c["text"].get<std::string>();
    if (c.contains("delta") && c["delta"].contains("content")) {
      text += c["delta"]["content"].get<std::string>();
    }
  }
  return text;
}

std::optional<std::string> finish_of(const Sse& s) {
  for (const json& e : s.events) {
    if (e.contains("choices") && !e["choices"].empty() &&
        !e["choices"][0]["finish_reason"].is_null()) {
      return e["choices"][0]["finish_reason"].get<std::string>();
    }
  }
  return std::nullopt;
}

// A metric's value in Prometheus text (the first series whose name and labels start so).
double metric(const std::string& text, const std::string& series) {
  size_t at = 0;
  while ((at = text.find(series, at)) != std::string::npos) {
    if ((at == 0 || text[at - 1] == '\n') && text[at + series.size()] == ' ') {
      return std::stod(text.substr(at + series.size() + 1));
    }
    at += series.size();
  }
  ADD_FAILURE() << "no series " << series;
  return -1.0;
}

// ---- a tiny random model without a tokenizer: token-id prompts ---------------------------------

class TinyServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir("conveyor-serve");
    test::make_tiny_model(dir_->path(), 4, 17);
  }
  static void TearDownTestSuite() { delete dir_; }

  void start(EngineOptions options = {}) {
    engine_.emplace(Engine::open(dir_->path(), options));
    server_ = std::make_unique<Server>(
        *engine_, nullptr, nullptr,
        ServerOptions{.port = 0, .model_name = "tiny", .heartbeat = std::chrono::milliseconds(20)});
    server_->start();
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client_->set_read_timeout(60, 0);
  }
  void TearDown() override {
    if (server_) server_->stop(std::chrono::milliseconds(0));
  }

  static test::TempDir* dir_;
  std::optional<Engine> engine_;
  std::unique_ptr<Server> server_;
  std::unique_ptr<httplib::Client> client_;
};
test::TempDir* TinyServerTest::dir_ = nullptr;

TEST_F(TinyServerTest, TokenPromptsGiveTheEnginesTokensAndUsage) {
  Request request{.prompt = {5, 9, 2, 7}, .max_new_tokens = 6, .stop_at_eos = false};
  const std::vector<int32_t> expected =
      Engine::open(dir_->path(), {}).generate({request}).requests[0].tokens;
  start({.n_stages = 2});
  int status = 0;
  const json r =
      post(*client_, "/v1/completions",
           {{"model", "tiny"}, {"prompt", {5, 9, 2, 7}}, {"max_tokens", 6}, {"temperature", 0}},
           &status);
  ASSERT_EQ(status, 200) << r.dump();
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["model"], "tiny");
  EXPECT_EQ(r["choices"][0]["token_ids"].get<std::vector<int32_t>>(), expected);
  EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r["usage"]["prompt_tokens"], 4);
  EXPECT_EQ(r["usage"]["completion_tokens"], 6);
  EXPECT_EQ(r["usage"]["total_tokens"], 10);
  EXPECT_EQ(r["id"].get<std::string>().rfind("cmpl-", 0), 0u);

  const httplib::Result models = client_->Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "tiny");
  const httplib::Result health = client_->Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

TEST_F(TinyServerTest, BadRequestsGetOpenAiErrorsWithTheRightStatus) {
  start();
  struct Case {
    std::string path, body;
    int status;
    std::string part;
  };
  const std::vector<Case> cases = {
      {"/v1/completions", "{oops", 400, "not valid JSON"},
      {"/v1/completions", R"({"model": "gpt-4", "prompt": [1]})", 404, "'gpt-4' does not exist"},
      {"/v1/completions", R"({"prompt": [1], "max_tokens": -1})", 400, "max_tokens"},
      {"/v1/completions", R"({"prompt": [1], "max_tokens": 5000})", 400,
       "maximum context length is 1024"},
      {"/v1/completions", R"({"prompt": "text needs a tokenizer"})", 400, "no tokenizer"},
      {"/v1/chat/completions", R"({"model": "tiny"})", 400, "'messages' is required"},
      {"/v1/nope", "{}", 404, "no route POST /v1/nope"},
  };
  for (const Case& c : cases) {
    const httplib::Result r = client_->Post(c.path, c.body, "application/json");
    ASSERT_TRUE(r) << c.body;
    EXPECT_EQ(r->status, c.status) << c.body << " -> " << r->body;
    const json e = json::parse(r->body);
    EXPECT_NE(e["error"]["message"].get<std::string>().find(c.part), std::string::npos) << r->body;
    EXPECT_TRUE(e["error"].contains("type")) << r->body;
  }
  const httplib::Result missing = client_->Get("/v1/models/gpt-4");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
}

TEST_F(TinyServerTest, AFullQueueAnswers503WithRetryAfter) {
  start({.capacity = {.max_batch = 1, .max_waiting = 0}});
  std::atomic<bool> first_running{false};
  std::thread holder([&] {
    httplib::Client c("127.0.0.1", server_->port());
    post_stream(c, "/v1/completions",
                {{"prompt", {1, 2, 3}}, {"max_tokens", 600}, {"stream", true}}, [&](const Sse&) {
                  first_running = true;
                  return true;
                });
  });
  while (engine_->metrics().kv_slots_used == 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  int status = 0;
  std::string retry_after;
  const json r = post(*client_, "/v1/completions", {{"prompt", {4, 5}}, {"max_tokens", 2}}, &status,
                      &retry_after);
  EXPECT_EQ(status, 503) << r.dump();
  EXPECT_EQ(retry_after, "1");
  EXPECT_EQ(r["error"]["code"], "overloaded");
  server_->stop(std::chrono::milliseconds(0));  // cancels the holder's request
  holder.join();
}

TEST_F(TinyServerTest, AClientLeavingMidStreamCancelsItsRequestAndFreesTheSlot) {
  start({.n_stages = 2, .capacity = {.max_batch = 2}});
  // The stream sends keep-alives (no text without a tokenizer); leave after a few.
  int chunks = 0;
  const Sse s = post_stream(*client_, "/v1/completions",
                            {{"prompt", {1, 2, 3}}, {"max_tokens", 900}, {"stream", true}},
                            [&](const Sse&) { return ++chunks < 3; });
  EXPECT_FALSE(s.done);
  for (int i = 0; i < 500 && engine_->metrics().kv_slots_used != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const EngineMetrics m = engine_->metrics();
  EXPECT_EQ(m.kv_slots_used, 0);
  EXPECT_EQ(m.requests_cancelled, 1);
  EXPECT_LT(m.generated_tokens, 900);
}

// cpp-httplib listens with a backlog of 5, which a burst of clients on a loaded machine overflows
// (SmolLm2ServerTest.ThirtyTwoConcurrentStreams saw connections reset); the server sets its own.
TEST_F(TinyServerTest, ListensWithTheBacklogItWasGiven) {
  engine_.emplace(Engine::open(dir_->path(), {}));
  Server refused(*engine_, nullptr, nullptr, ServerOptions{.port = 0, .listen_backlog = 0});
  try {
    refused.start();
    ADD_FAILURE() << "a backlog of 0 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("listen_backlog is 0"), std::string::npos) << e.what();
  }
  server_ = std::make_unique<Server>(*engine_, nullptr, nullptr,
                                     ServerOptions{.port = 0, .listen_backlog = 77});
  server_->start();
  // ss shows a listening socket's backlog in its Send-Q column.
  FILE* ss = popen(fmt::format("ss -Hltn 'sport = :{}' 2>&1", server_->port()).c_str(), "r");
  ASSERT_NE(ss, nullptr);
  std::string out;
  char buffer[256];
  while (std::fgets(buffer, sizeof buffer, ss) != nullptr)
    out += buffer;
  const int status = pclose(ss);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127) GTEST_SKIP() << "no ss (iproute2): " << out;
  std::istringstream fields(out);
  std::string state, recv_q, send_q;
  fields >> state >> recv_q >> send_q;
  EXPECT_EQ(state, "LISTEN") << out;
  EXPECT_EQ(send_q, "77") << out;
}

// ---- SmolLM2: text, chat, streaming, stop strings, 32 concurrent clients ------------------------

class SmolLm2ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto path = test::asset_path(kSmolLm2);
    if (!path) GTEST_SKIP() << test::missing_asset_reason(kSmolLm2, "smollm2");
    model_ = *path;
  }
  void start(EngineOptions options) {
    tokenizer_.emplace(Tokenizer::open(model_));
    chat_.emplace(ChatTemplate::for_tokenizer(*tokenizer_, ""));
    options.capacity.max_context = 512;
    engine_.emplace(Engine::open(model_, options));
    server_ = std::make_unique<Server>(*engine_, &*tokenizer_, &*chat_,
                                       ServerOptions{.port = 0, .model_name = "smollm2"});
    server_->start();
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client_->set_read_timeout(120, 0);
  }
  void TearDown() override {
    if (server_) server_->stop(std::chrono::milliseconds(0));
  }

  std::filesystem::path model_;
  std::optional<Tokenizer> tokenizer_;
  std::optional<ChatTemplate> chat_;
  std::optional<Engine> engine_;
  std::unique_ptr<Server> server_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(SmolLm2ServerTest, ChatAndCompletionsWholeAndStreamed) {
  start({.n_stages = 2, .capacity = {.max_batch = 4}});
  const json chat = {
      {"model", "smollm2"},
      {"messages", {{{"role", "user"}, {"content", "What is the capital of France?"}}}},
      {"temperature", 0},
      {"max_tokens", 40}};
  int status = 0;
  const json whole = post(*client_, "/v1/chat/completions", chat, &status);
  ASSERT_EQ(status, 200) << whole.dump();
  EXPECT_EQ(whole["object"], "chat.completion");
  const std::string answer = whole["choices"][0]["message"]["content"];
  EXPECT_NE(answer.find("Paris"), std::string::npos) << answer;
  EXPECT_EQ(whole["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(whole["choices"][0]["finish_reason"], "stop");
  json streamed_request = chat;
  streamed_request["stream"] = true;
  streamed_request["stream_options"] = {{"include_usage", true}};
  const Sse s = post_stream(*client_, "/v1/chat/completions", streamed_request);
  ASSERT_TRUE(s.done);
  EXPECT_EQ(s.events.front()["object"], "chat.completion.chunk");
  EXPECT_EQ(s.events.front()["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(stream_text(s), answer);
  EXPECT_EQ(finish_of(s), "stop");
  EXPECT_EQ(s.events.back()["usage"], whole["usage"]);

  // A stop string ends the text before it, with finish_reason "stop".
  const json completion = {{"prompt", "The capital of France is"},
                           {"temperature", 0},
                           {"max_tokens", 12},
                           {"stop", {"Paris"}}};
  const json cut = post(*client_, "/v1/completions", completion, &status);
  ASSERT_EQ(status, 200) << cut.dump();
  const std::string text = cut["choices"][0]["text"];
  EXPECT_EQ(text.find("Paris"), std::string::npos) << text;
  EXPECT_EQ(cut["choices"][0]["finish_reason"], "stop");
  json streamed_cut = completion;
  streamed_cut["stream"] = true;
  const Sse sc = post_stream(*client_, "/v1/completions", streamed_cut);
  EXPECT_EQ(stream_text(sc), text);
  EXPECT_EQ(finish_of(sc), "stop");
  EXPECT_EQ(engine_->metrics().kv_slots_used, 0);
}

// Batch-invariant kernels make every token's result independent of what shares its step, so
// each stream must equal its run alone bit for bit by construction: any difference is cross-talk.
// (Without them a step past 16 rows goes through OpenBLAS, which rounds differently, and a
// greedy near-tie could flip.) Under ctest -j2 this test also caught the server closing queued
// connections after cpp-httplib's 5 s keep-alive wait (ServerOptions::request_timeout).
TEST_F(SmolLm2ServerTest, ThirtyTwoConcurrentStreamsGetWhatEachGetsAlone) {
  start({.n_stages = 2,
         .device = {.batch_invariant = true},
         .capacity = {.max_batch = 8, .max_waiting = 64},
         .schedule = {.decode_mode = DecodeMode::kCohorts}});
  constexpr int kClients = 32;
  const std::vector<std::string> topics = {"cats",   "the sea", "bread", "trains",
                                           "winter", "music",   "stars", "rivers"};
  auto body = [&](int i) {
    return json{{"prompt", fmt::format("Write one sentence about {} (#{}):", topics[i % 8], i)},
                {"max_tokens", 8},
                {"temperature", 0},
                {"stream", true}};
  };
  // Each alone first.
  std::vector<std::string> alone(kClients);
  for (int i = 0; i < kClients; ++i) {
    const Sse s = post_stream(*client_, "/v1/completions", body(i));
    ASSERT_TRUE(s.done);
    alone[i] = stream_text(s);
  }
  std::vector<Sse> got(kClients);
  std::vector<std::thread> clients;
  const auto start_time = std::chrono::steady_clock::now();
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", server_->port());
      c.set_read_timeout(120, 0);
      got[i] = post_stream(c, "/v1/completions", body(i));
    });
  }
  for (std::thread& t : clients)
    t.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
  EXPECT_LT(seconds, 120.0);
  for (int i = 0; i < kClients; ++i) {
    EXPECT_EQ(got[i].status, 200) << "client " << i << ": " << got[i].error;
    EXPECT_TRUE(got[i].done) << "client " << i;
    EXPECT_EQ(stream_text(got[i]), alone[i]) << "client " << i;
  }
  const httplib::Result m = client_->Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(metric(m->body, "conveyor_kv_slots_used"), 0.0);
  EXPECT_EQ(metric(m->body, "conveyor_requests_running"), 0.0);
  EXPECT_EQ(metric(m->body, "conveyor_requests_waiting"), 0.0);
  EXPECT_EQ(metric(m->body, "conveyor_time_to_first_token_seconds_count"), 2.0 * kClients);
  EXPECT_EQ(metric(m->body, "conveyor_engine_requests_total{outcome=\"finished\"}"),
            2.0 * kClients);
  EXPECT_EQ(metric(m->body, "conveyor_engine_requests_total{outcome=\"cancelled\"}"), 0.0);
  EXPECT_GT(metric(m->body, "conveyor_stage_busy_seconds_total{stage=\"1\"}"), 0.0);
}

// ---- the binary: SIGTERM drains gracefully and exits 0 -----------------------------------------

TEST(ServeBinary, SigtermStopsGracefullyWithExitZero) {
  test::TempDir dir("conveyor-serve-bin");
  test::make_tiny_model(dir.path(), 2, 3);
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  const std::string binary = test::binary_path("conveyor-serve").string();
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    close(out[0]);
    execl(binary.c_str(), binary.c_str(), "--model", dir.path().c_str(), "--port", "0", "--stages",
          "2", "--grace", "30", "--log-level", "error", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  FILE* stream = fdopen(out[0], "r");
  int port = 0;
  char line[4096];
  std::string printed;
  while (port == 0 && std::fgets(line, sizeof line, stream) != nullptr) {
    printed += line;
    std::smatch m;
    const std::string s(line);
    if (std::regex_search(s, m, std::regex(R"(on http://127\.0\.0\.1:(\d+))"))) {
      port = std::stoi(m[1]);
    }
  }
  ASSERT_GT(port, 0) << printed;
  // SIGTERM arrives while a request streams: the request finishes within the grace period (at
  // its length or an end-of-sequence token) and the server exits 0.
  {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    bool signalled = false;
    const Sse s = post_stream(c, "/v1/completions",
                              {{"prompt", {1, 2, 3}}, {"max_tokens", 400}, {"stream", true}},
                              [&](const Sse&) {
                                if (!signalled) kill(pid, SIGTERM);
                                signalled = true;
                                return true;
                              });
    EXPECT_TRUE(signalled);
    EXPECT_TRUE(s.done);
    EXPECT_TRUE(finish_of(s) == "length" || finish_of(s) == "stop")
        << finish_of(s).value_or("none");
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  while (std::fgets(line, sizeof line, stream) != nullptr)
    printed += line;
  std::fclose(stream);
  ASSERT_TRUE(WIFEXITED(status)) << printed;
  EXPECT_EQ(WEXITSTATUS(status), 0) << printed;
  EXPECT_NE(printed.find("SIGTERM received"), std::string::npos) << printed;
  EXPECT_NE(printed.find("stopped"), std::string::npos) << printed;
}

}  // namespace
}  // namespace conveyor::serve
