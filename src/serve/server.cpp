// Server: routes, request streams from the engine's scheduling thread to the HTTP threads, SSE
// framing, cancellation on disconnect and graceful shutdown.
#include "serve/server.hpp"

#include <fmt/format.h>
#include <httplib.h>
#include <spdlog/spdlog.h>

#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "conveyor/error.hpp"
#include "core/check.hpp"
#include "serve/metrics.hpp"
#include "serve/openai.hpp"
#include "serve/stop_strings.hpp"

namespace conveyor::serve {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

namespace {

// The events of one request, handed from the engine's scheduling thread to its HTTP thread.
class EventQueue {
 public:
  struct Token {
    int32_t id;
    Clock::time_point at;
  };

  void push(const RequestEvent& e) {
    {
      std::lock_guard lock(mutex_);
      if (e.token) tokens_.push_back({*e.token, Clock::now()});
      if (e.finished) {
        result_ = *e.result;
        finished_ = true;
      }
    }
    changed_.notify_all();
  }

  // Waits up to `timeout` for tokens or the end; returns what arrived since the last call.
  std::deque<Token> take(std::chrono::milliseconds timeout, bool* finished) {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, timeout, [&] { return !tokens_.empty() || finished_; });
    *finished = finished_ && tokens_.empty();
    return std::exchange(tokens_, {});
  }
  RequestResult result() {
    std::lock_guard lock(mutex_);
    return result_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Token> tokens_;
  bool finished_ = false;
  RequestResult result_;
};

// One generation's text and timing: decodes tokens incrementally, applies stop strings, records
// latencies, and frames SSE chunks.
struct Generation {
  Endpoint endpoint = Endpoint::kCompletions;
  ResponseHeader header;
  RequestId id = 0;
  int64_t prompt_tokens = 0;
  bool include_usage = false;
  std::shared_ptr<EventQueue> events;
  const Tokenizer* tokenizer = nullptr;
  std::optional<StreamDecoder> decoder;
  StopStrings stop;
  Clock::time_point arrival;
  std::optional<Clock::time_point> last_token;
  int64_t n_tokens = 0;
  std::vector<int32_t> token_ids;  // without a tokenizer: all of them
  bool started = false;            // the first SSE chunk went out
  bool cancelled_for_stop = false;

  Generation(std::vector<std::string> stops) : stop(std::move(stops)) {}

  // What one generated token adds: its text after the stop strings (possibly empty: part of a
  // character, or held back), or its id for a model without a tokenizer.
  struct Piece {
    std::string text;
    std::optional<int32_t> id;
  };

  // The pieces of newly arrived tokens (end-of-generation tokens and those after a stop string
  // give none); records latencies.
  std::vector<Piece> absorb(const std::deque<EventQueue::Token>& tokens, ServeMetrics& metrics,
                            Engine& engine) {
    std::vector<Piece> pieces;
    for (const EventQueue::Token& t : tokens) {
      if (last_token) {
        metrics.inter_token(std::chrono::duration<double>(t.at - *last_token).count());
      } else {
        metrics.time_to_first_token(std::chrono::duration<double>(t.at - arrival).count());
      }
      last_token = t.at;
      ++n_tokens;
      if (stop.stopped()) continue;  // generated before the cancellation took effect
      if (tokenizer == nullptr) {
        token_ids.push_back(t.id);
        pieces.push_back({{}, t.id});
        continue;
      }
      if (tokenizer->is_end_of_generation(t.id)) continue;
      pieces.push_back({stop.push(decoder->push(t.id)), std::nullopt});
      if (stop.stopped() && !cancelled_for_stop) {
        cancelled_for_stop = true;
        engine.cancel(id);
      }
    }
    return pieces;
  }

  // The rest of the text at the end (a held-back tail, an unfinished character).
  std::string flush() {
    if (tokenizer == nullptr || stop.stopped()) return {};
    return stop.push(decoder->finish()) + stop.finish();
  }

  Usage usage() const { return {prompt_tokens, n_tokens}; }
};

std::string sse(const json& payload) {
  return "data: " + payload.dump() + "\n\n";
}

bool write(httplib::DataSink& sink, const std::string& text) {
  return sink.write(text.data(), text.size());
}

std::string random_id(std::string_view prefix) {
  static std::atomic<uint64_t> counter{std::random_device{}()};
  return fmt::format("{}{:016x}", prefix, counter.fetch_add(0x9E3779B97F4A7C15ull));
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

ApiError error_for(const Error& e) {
  switch (e.code()) {
    case ErrorCode::kInvalidArgument:
      return {.status = 400, .message = e.what()};
    case ErrorCode::kOverloaded:
      return {.status = 503, .type = "server_error", .message = e.what(), .code = "overloaded"};
    case ErrorCode::kCancelled:
      return {.status = 503,
              .type = "server_error",
              .message = fmt::format("the server is shutting down: {}", e.what()),
              .code = "shutting_down"};
    default:
      return {.status = 500, .type = "server_error", .message = e.what()};
  }
}

}  // namespace

struct Server::Impl {
  Engine& engine;
  const Tokenizer* tokenizer;
  const ChatTemplate* chat;
  ServerOptions options;
  ModelInfo info;
  ServeMetrics metrics;
  httplib::Server http;
  std::thread listener;
  int port = 0;
  socket_t listen_socket = INVALID_SOCKET;  // the bound socket, once bound
  std::atomic<bool> stopping{false};
  std::mutex stop_mutex;
  std::condition_variable stopped_cv;
  bool stopped = false;
  std::atomic<uint64_t> seeds{std::random_device{}()};
  // Generation responses still being written; stop() lets them end before closing the server
  // (cpp-httplib cuts chunked responses once it stops).
  std::mutex active_mutex;
  std::condition_variable active_cv;
  int active = 0;

  void begin_response() {
    std::lock_guard lock(active_mutex);
    ++active;
  }
  void end_response() {
    {
      std::lock_guard lock(active_mutex);
      --active;
    }
    active_cv.notify_all();
  }

  Impl(Engine& e, const Tokenizer* t, const ChatTemplate* c, ServerOptions o)
      : engine(e), tokenizer(t), chat(c), options(std::move(o)) {
    info = ModelInfo{.name = options.model_name,
                     .tokenizer = tokenizer,
                     .chat = chat,
                     .max_context = engine.max_context(),
                     .vocab_size = engine.config().vocab_size};
  }

  void send_error(httplib::Response& res, const ApiError& e) {
    res.status = e.status;
    if (e.status == 503) res.set_header("Retry-After", "1");
    res.set_content(error_json(e).dump(), "application/json");
  }

  void generate(Endpoint endpoint, const httplib::Request& req, httplib::Response& res);
  void routes();
};

void Server::Impl::generate(Endpoint endpoint, const httplib::Request& req,
                            httplib::Response& res) {
  const auto arrival = Clock::now();
  const char* path = endpoint == Endpoint::kChat ? "/v1/chat/completions" : "/v1/completions";
  auto respond_error = [&](const ApiError& e) {
    send_error(res, e);
    metrics.http_response(path, e.status);
  };
  if (stopping) {
    respond_error({.status = 503,
                   .type = "server_error",
                   .message = "the server is shutting down",
                   .code = "shutting_down"});
    return;
  }
  ApiRequest api;
  try {
    api = parse_request(endpoint, req.body, info, seeds.fetch_add(0x9E3779B97F4A7C15ull));
  } catch (const ApiException& e) {
    respond_error(e.error());
    return;
  }
  auto gen = std::make_shared<Generation>(api.stop);
  gen->endpoint = endpoint;
  gen->header = {.id = random_id(endpoint == Endpoint::kChat ? "chatcmpl-" : "cmpl-"),
                 .created = unix_now(),
                 .model = info.name};
  gen->prompt_tokens = static_cast<int64_t>(api.request.prompt.size());
  gen->include_usage = api.include_usage;
  gen->events = std::make_shared<EventQueue>();
  gen->tokenizer = tokenizer;
  if (tokenizer != nullptr) gen->decoder.emplace(*tokenizer, DecodeOptions{.skip_special = true});
  gen->arrival = arrival;
  begin_response();  // before submit: stop() waits for this response from here on
  try {
    gen->id = engine.submit(std::move(api.request),
                            [events = gen->events](const RequestEvent& e) { events->push(e); });
  } catch (const Error& e) {
    end_response();
    respond_error(error_for(e));
    return;
  }

  auto outcome = [](const RequestResult& r, const Generation& g) -> std::string {
    if (g.stop.stopped()) return "stop";
    if (r.finish == FinishReason::kError) return "error";
    if (r.finish == FinishReason::kCancelled) return "cancelled";
    return std::string(finish_reason(r.finish, false));
  };

  if (!api.stream) {
    struct Done {  // the body is complete (or abandoned): stop() may close after it
      Impl* impl;
      ~Done() { impl->end_response(); }
    } done{this};
    std::string text;
    bool finished = false;
    while (!finished) {
      for (const Generation::Piece& p :
           gen->absorb(gen->events->take(options.heartbeat, &finished), metrics, engine)) {
        text += p.text;
      }
    }
    text += gen->flush();
    const RequestResult result = gen->events->result();
    metrics.request_done(std::chrono::duration<double>(Clock::now() - arrival).count(),
                         outcome(result, *gen));
    if (!gen->stop.stopped() && result.finish == FinishReason::kError) {
      respond_error({.status = 500, .type = "server_error", .message = result.error});
      return;
    }
    if (!gen->stop.stopped() && result.finish == FinishReason::kCancelled) {
      respond_error({.status = 503,
                     .type = "server_error",
                     .message = "the request was cancelled: the server is shutting down",
                     .code = "shutting_down"});
      return;
    }
    res.set_content(completion_json(endpoint, gen->header, text,
                                    finish_reason(result.finish, gen->stop.stopped()), gen->usage(),
                                    tokenizer ? nullptr : &gen->token_ids)
                        .dump(),
                    "application/json");
    metrics.http_response(path, 200);
    return;
  }

  metrics.http_response(path, 200);
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, gen, outcome](size_t, httplib::DataSink& sink) {
        if (!gen->started) {
          gen->started = true;
          // Chat streams open with the assistant's role, as OpenAI's do.
          if (gen->endpoint == Endpoint::kChat &&
              !write(sink, sse(chunk_json(gen->endpoint, gen->header, "", std::nullopt, true)))) {
            return false;
          }
        }
        bool finished = false;
        const auto tokens = gen->events->take(options.heartbeat, &finished);
        if (tokens.empty() && !finished) {
          static constexpr std::string_view kKeepAlive = ": keep-alive\n\n";
          return sink.write(kKeepAlive.data(), kKeepAlive.size());  // false: the client left
        }
        // One chunk per token, as OpenAI's streams go (clients time tokens by chunks).
        std::vector<Generation::Piece> pieces = gen->absorb(tokens, metrics, engine);
        if (finished) {
          if (std::string tail = gen->flush(); !tail.empty()) pieces.push_back({tail, {}});
        }
        std::string out;
        for (const Generation::Piece& p : pieces) {
          const std::vector<int32_t> ids =
              p.id ? std::vector<int32_t>{*p.id} : std::vector<int32_t>{};
          out += sse(chunk_json(gen->endpoint, gen->header, p.text, std::nullopt, false,
                                p.id ? &ids : nullptr));
        }
        if (!out.empty() && !write(sink, out)) return false;
        if (!finished) return true;
        const RequestResult result = gen->events->result();
        metrics.request_done(std::chrono::duration<double>(Clock::now() - gen->arrival).count(),
                             outcome(result, *gen));
        std::string tail;
        if (!gen->stop.stopped() &&
            (result.finish == FinishReason::kError || result.finish == FinishReason::kCancelled)) {
          const ApiError e =
              result.finish == FinishReason::kError
                  ? ApiError{.status = 500, .type = "server_error", .message = result.error}
                  : ApiError{.status = 503,
                             .type = "server_error",
                             .message =
                                 "the request was cancelled: the server is "
                                 "shutting down",
                             .code = "shutting_down"};
          tail = sse(error_json(e));
        } else {
          tail = sse(chunk_json(gen->endpoint, gen->header, "",
                                finish_reason(result.finish, gen->stop.stopped()), false));
          if (gen->include_usage) {
            tail += sse(usage_chunk_json(gen->endpoint, gen->header, gen->usage()));
          }
        }
        tail += "data: [DONE]\n\n";
        if (!write(sink, tail)) return false;
        sink.done();
        return true;
      },
      [this, gen](bool success) {
        if (!success) engine.cancel(gen->id);  // the client went away: free its KV slot
        end_response();
      });
}

void Server::Impl::routes() {
  http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    generate(Endpoint::kCompletions, req, res);
  });
  http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    generate(Endpoint::kChat, req, res);
  });
  auto model_json = [this] {
    return json{{"id", info.name}, {"object", "model"}, {"created", 0}, {"owned_by", "conveyor"}};
  };
  http.Get("/v1/models", [this, model_json](const httplib::Request&, httplib::Response& res) {
    res.set_content(json{{"object", "list"}, {"data", json::array({model_json()})}}.dump(),
                    "application/json");
  });
  http.Get(R"(/v1/models/(.+))", [this, model_json](const httplib::Request& req,
                                                    httplib::Response& res) {
    if (req.matches[1] != info.name) {
      send_error(res,
                 {.status = 404,
                  .message = fmt::format("The model '{}' does not exist", req.matches[1].str()),
                  .param = "model",
                  .code = "model_not_found"});
      return;
    }
    res.set_content(model_json().dump(), "application/json");
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    res.status = stopping ? 503 : 200;
    res.set_content(json{{"status", stopping ? "stopping" : "ok"}}.dump(), "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.render(engine.metrics()), "text/plain; version=0.0.4");
  });
  http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // an API error already written
    send_error(res,
               {.status = res.status,
                .message = res.status == 404 ? fmt::format("no route {} {}; see /v1/models, "
                                                           "/v1/completions, /v1/chat/completions, "
                                                           "/health, /metrics",
                                                           req.method, req.path)
                                             : fmt::format("HTTP {}", res.status)});
  });
  http.set_exception_handler(
      [this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown error";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        spdlog::error("request failed: {}", what);
        send_error(res, {.status = 500, .type = "server_error", .message = what});
      });
}

Server::Server(Engine& engine, const Tokenizer* tokenizer, const ChatTemplate* chat,
               ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, tokenizer, chat, std::move(options))) {}

Server::~Server() {
  stop(std::chrono::milliseconds(0));
}

void Server::start() {
  Impl& d = *impl_;
  if (d.options.http_threads < 1) {
    fail(ErrorCode::kInvalidArgument, "http_threads is {} but must be at least 1",
         d.options.http_threads);
  }
  if (d.options.listen_backlog < 1) {
    fail(ErrorCode::kInvalidArgument, "listen_backlog is {} but must be at least 1",
         d.options.listen_backlog);
  }
  const int threads = d.options.http_threads;
  d.http.new_task_queue = [threads] {
    return new httplib::ThreadPool(static_cast<size_t>(threads));
  };
  d.http.set_payload_max_length(d.options.max_body_bytes);
  d.http.set_read_timeout(static_cast<time_t>(d.options.request_timeout.count()), 0);
  // A connection's first request is awaited with the keep-alive timeout: the same allowance.
  d.http.set_keep_alive_timeout(static_cast<time_t>(d.options.request_timeout.count()));
  d.routes();
  // cpp-httplib hands each socket it tries to bind to this hook (the last one is the one bound)
  // and then listens with a backlog of 5; listening again on it sets the real backlog.
  d.http.set_socket_options([&d](socket_t sock) {
    httplib::default_socket_options(sock);
    d.listen_socket = sock;
  });
  d.port = d.options.port == 0
               ? d.http.bind_to_any_port(d.options.host)
               : (d.http.bind_to_port(d.options.host, d.options.port) ? d.options.port : -1);
  if (d.port <= 0) {
    fail(ErrorCode::kInvalidArgument,
         "cannot listen on {}:{} (in use, or not an address of this machine); pick another "
         "--host/--port",
         d.options.host, d.options.port);
  }
  if (::listen(d.listen_socket, d.options.listen_backlog) != 0) {
    fail(ErrorCode::kInvalidArgument, "cannot set the listen backlog of {}:{} to {}: {}",
         d.options.host, d.port, d.options.listen_backlog, std::strerror(errno));
  }
  d.engine.start_serving();
  d.listener = std::thread([&d] { d.http.listen_after_bind(); });
  // cpp-httplib's stop() does nothing before the listener runs: wait for it.
  while (!d.http.is_running() && d.listener.joinable()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

int Server::port() const {
  return impl_->port;
}

void Server::stop(std::chrono::milliseconds grace) {
  Impl& d = *impl_;
  if (d.stopping.exchange(true)) {
    wait();
    return;
  }
  // Running requests finish (or are cancelled after the grace); their handlers then return, and
  // the listener closes.
  d.engine.stop_serving(grace);
  {
    // Every request has ended; let their responses finish writing (a client that stopped reading
    // gets the socket closed after a few seconds).
    std::unique_lock lock(d.active_mutex);
    d.active_cv.wait_for(lock, std::chrono::seconds(5), [&] { return d.active == 0; });
  }
  d.http.stop();
  if (d.listener.joinable()) d.listener.join();
  {
    std::lock_guard lock(d.stop_mutex);
    d.stopped = true;
  }
  d.stopped_cv.notify_all();
}

void Server::wait() {
  Impl& d = *impl_;
  std::unique_lock lock(d.stop_mutex);
  d.stopped_cv.wait(lock, [&] { return d.stopped; });
}

}  // namespace conveyor::serve
