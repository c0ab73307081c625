// conveyor-serve: an OpenAI-compatible HTTP server for a Llama-family model across S pipeline
// stages — /v1/completions, /v1/chat/completions (streamed as server-sent events on request),
// /v1/models, /health and /metrics. SIGINT/SIGTERM stop it gracefully.
#include <fmt/format.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <optional>
#include <thread>

#include "backend/cpu/blas_kernels.hpp"
#include "cli_engine.hpp"
#include "cli_errors.hpp"
#include "conveyor/chat_template.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/error.hpp"
#include "conveyor/tokenizer.hpp"
#include "serve/server.hpp"

namespace {

struct Args {
  conveyor::cli::EngineArgs engine_args;
  conveyor::serve::ServerOptions server;
  std::string chat_template;
  double grace_seconds = 10.0;
  std::string log_level = "info";
};

// SIGINT/SIGTERM: the handler (whichever thread the kernel picks, OpenBLAS's included) only
// writes the signal number to a pipe; a waiting thread starts the graceful stop. A second signal
// during the stop exits at once.
int signal_pipe[2] = {-1, -1};
std::atomic<int> signals_seen{0};

extern "C" void on_signal(int signal) {
  if (signals_seen.fetch_add(1) > 0) _exit(128 + signal);
  const char byte = static_cast<char>(signal);
  [[maybe_unused]] const ssize_t n = write(signal_pipe[1], &byte, 1);
}

void install_signal_handlers() {
  if (pipe(signal_pipe) != 0) {
    throw conveyor::Error(conveyor::ErrorCode::kInternal, "cannot create the signal pipe");
  }
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

int run(Args& args) {
  install_signal_handlers();
  conveyor::EngineOptions options = conveyor::cli::engine_options(args.engine_args);
  std::optional<conveyor::Tokenizer> tokenizer;
  std::optional<conveyor::ChatTemplate> chat;
  try {
    tokenizer.emplace(conveyor::cli::open_tokenizer(args.engine_args));
    chat.emplace(conveyor::ChatTemplate::for_tokenizer(*tokenizer, args.chat_template));
  } catch (const conveyor::Error& e) {
    spdlog::warn("{}: {}", tokenizer ? "no chat endpoint" : "no tokenizer (token-id prompts only)",
                 e.what());
  }
  conveyor::Engine engine = conveyor::Engine::open(args.engine_args.model, options);
  if (conveyor::cli::follow_unless_leader(engine)) return 0;
  if (args.server.model_name.empty()) {
    args.server.model_name = std::filesystem::path(args.engine_args.model).filename().string();
  }
  conveyor::serve::Server server(engine, tokenizer ? &*tokenizer : nullptr, chat ? &*chat : nullptr,
                                 args.server);
  server.start();
  fmt::print("{} | {} stage(s), layers {} | {} KV slots of {} tokens, decode {}\n",
             conveyor::cli::load_summary(engine.load_stats()), engine.partition().n_stages(),
             engine.partition().to_string(), engine.options().capacity.max_batch,
             engine.max_context(), to_string(engine.options().schedule.decode_mode));
  fmt::print("serving '{}' on http://{}:{} (chat: {})\n", args.server.model_name, args.server.host,
             server.port(), chat ? chat->describe() : "none");
  std::fflush(stdout);

  std::thread waiter([&] {
    char byte = 0;
    while (read(signal_pipe[0], &byte, 1) < 0 && errno == EINTR) {
    }
    const int signal = byte;
    fmt::print("{} received: finishing running requests (grace {:.1f} s)\n",
               signal == SIGINT ? "SIGINT" : "SIGTERM", args.grace_seconds);
    std::fflush(stdout);
    server.stop(std::chrono::milliseconds(static_cast<int64_t>(args.grace_seconds * 1000)));
  });
  server.wait();
  waiter.join();
  fmt::print("stopped\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  conveyor::cpu::reexec_for_blas_kernels(argv);  // before OpenBLAS does any work
  Args args;
  CLI::App app{"conveyor-serve: an OpenAI-compatible server for a Llama-family model"};
  conveyor::cli::add_engine_options(app, args.engine_args);
  app.add_option("--host", args.server.host, "address to listen on")->capture_default_str();
  app.add_option("--port", args.server.port, "port (0: any free one)")->capture_default_str();
  app.add_option("--model-name", args.server.model_name,
                 "the model id clients send (default: the model file or directory name)");
  app.add_option("--chat-template", args.chat_template,
                 "chat format instead of the model's: chatml, llama3, llama3.1, llama2, "
                 "mistral-v1, mistral-v3");
  app.add_option("--http-threads", args.server.http_threads,
                 "connections served at once (each stream holds one)")
      ->capture_default_str();
  app.add_option("--listen-backlog", args.server.listen_backlog,
                 "connections the kernel queues before they are accepted (capped by "
                 "net.core.somaxconn)")
      ->capture_default_str();
  app.add_option("--grace", args.grace_seconds,
                 "seconds running requests may finish after SIGINT/SIGTERM before cancellation")
      ->capture_default_str();
  app.add_option("--log-level", args.log_level, "trace, debug, info, warn, error")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::from_str(args.log_level));
  return conveyor::run_reporting_errors([&] { return run(args); });
}
