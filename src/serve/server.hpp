// Server: an OpenAI-compatible HTTP front of an Engine (cpp-httplib): /v1/completions and
// /v1/chat/completions (whole or streamed as server-sent events), /v1/models, /health and
// /metrics. The engine's scheduling loop runs requests as they arrive; a client that leaves
// mid-stream cancels its request; stop() drains gracefully.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "conveyor/chat_template.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/tokenizer.hpp"

namespace conveyor::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;         // 0: any free port (see Server::port())
  std::string model_name;  // the id clients name; empty: the model path's file name
  int http_threads = 64;   // connections served at once (streams hold one each)
  // While a stream waits for tokens, an SSE comment goes out this often: it keeps proxies from
  // timing out and tells the server when the client has gone.
  std::chrono::milliseconds heartbeat{1000};
  size_t max_body_bytes = size_t{16} << 20;
  // How long a connection may take to deliver its request (and, kept alive, the next one).
  // cpp-httplib's 5 s closed connections whose request was delayed by a full listen queue on a
  // loaded machine, which the client saw as a read error with no response.
  std::chrono::seconds request_timeout{30};
  // Connections the kernel queues before the server accepts them (capped by
  // net.core.somaxconn). cpp-httplib listens with 5: a burst of clients on a busy machine then
  // overflows the queue, and a connection whose handshake the kernel gave up on is reset when
  // its request arrives (the client sees a read error, the server never sees the request).
  int listen_backlog = 1024;
};

class Server {
 public:
  // `tokenizer` and `chat` may be null (token-id prompts only; no chat endpoint). All three must
  // outlive the server.
  Server(Engine& engine, const Tokenizer* tokenizer, const ChatTemplate* chat,
         ServerOptions options);
  ~Server();  // stop(0) if still running
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds the address, starts the engine's scheduling loop and serves on a background thread.
  // Throws conveyor::Error(kInvalidArgument) naming the address when it cannot be bound.
  void start();
  int port() const;
  // Stops taking requests (new ones get 503), lets running ones finish for up to `grace`,
  // cancels the rest, and closes the listening socket. Idempotent; thread-safe.
  void stop(std::chrono::milliseconds grace);
  // Blocks until stop() has finished.
  void wait();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace conveyor::serve
