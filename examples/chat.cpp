// conveyor-chat: an interactive, multi-turn chat on a terminal with a model's chat template,
// across S pipeline stages. The conversation is kept; each turn re-renders it and the engine
// reuses the KV cache of the prefix it already computed, so a turn costs its new tokens only.
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "backend/cpu/blas_kernels.hpp"
#include "cli_engine.hpp"
#include "cli_errors.hpp"
#include "conveyor/chat_template.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/error.hpp"
#include "conveyor/tokenizer.hpp"
#include "text/unicode.hpp"

namespace {

struct Args {
  conveyor::cli::EngineArgs engine_args;
  std::string system;
  std::string chat_template;
  int64_t max_new_tokens = 512;
  double temperature = 0.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
};

// Renders the conversation and drops the oldest turns until prompt + answer fit the context.
std::vector<int32_t> fit_prompt(std::vector<conveyor::ChatMessage>& messages,
                                const conveyor::ChatTemplate& chat,
                                const conveyor::Tokenizer& tokenizer, int64_t budget) {
  for (;;) {
    std::vector<int32_t> ids = conveyor::encode_chat(tokenizer, chat.render(messages, tokenizer));
    if (static_cast<int64_t>(ids.size()) <= budget) return ids;
    const size_t first = !messages.empty() && messages.front().role == "system" ? 1 : 0;
    if (messages.size() <= first + 1) {
      throw conveyor::Error(
          conveyor::ErrorCode::kInvalidArgument,
          fmt::format("the message needs {} tokens, more than the {} the context leaves for it; "
                      "shorten it, or raise --max-context / lower --max-new-tokens",
                      ids.size(), budget));
    }
    // Forget the oldest user + assistant pair.
    messages.erase(
        messages.begin() + static_cast<std::ptrdiff_t>(first),
        messages.begin() + static_cast<std::ptrdiff_t>(std::min(first + 2, messages.size() - 1)));
  }
}

int run(Args& args) {
  conveyor::EngineOptions options = conveyor::cli::engine_options(args.engine_args);
  options.capacity.max_batch = 1;
  const conveyor::Tokenizer tokenizer = conveyor::cli::open_tokenizer(args.engine_args);
  const conveyor::ChatTemplate chat =
      conveyor::ChatTemplate::for_tokenizer(tokenizer, args.chat_template);
  conveyor::Engine engine = conveyor::Engine::open(args.engine_args.model, options);
  if (conveyor::cli::follow_unless_leader(engine)) return 0;
  const bool terminal = ::isatty(STDOUT_FILENO) != 0;
  fmt::print("{} | {} stage(s), layers {} | chat format {}\n",
             conveyor::cli::load_summary(engine.load_stats()), engine.partition().n_stages(),
             engine.partition().to_string(), chat.describe());
  fmt::print("type a message; /reset starts over, /exit leaves\n");

  std::vector<conveyor::ChatMessage> messages;
  if (!args.system.empty()) messages.push_back({"system", args.system});
  const size_t fresh = messages.size();
  std::string line;
  for (;;) {
    fmt::print("{}> ", terminal ? "\n" : "");
    std::fflush(stdout);
    if (!std::getline(std::cin, line) || line == "/exit" || line == "/quit") break;
    if (line == "/reset") {
      messages.resize(fresh);
      fmt::print("(conversation cleared)\n");
      continue;
    }
    if (line.empty()) continue;
    messages.push_back({"user", line});
    std::vector<int32_t> prompt;
    try {
      prompt = fit_prompt(messages, chat, tokenizer, engine.max_context() - args.max_new_tokens);
    } catch (const conveyor::Error& e) {
      fmt::print("error: {}\n", e.what());
      messages.pop_back();
      continue;
    }
    conveyor::Request request{.prompt = prompt,
                              .max_new_tokens = args.max_new_tokens,
                              .sampling = {.temperature = args.temperature,
                                           .top_k = args.top_k,
                                           .top_p = args.top_p,
                                           .seed = args.seed},
                              .stop_token_ids = tokenizer.end_of_generation_ids()};
    conveyor::StreamDecoder stream(tokenizer, {.skip_special = true});
    conveyor::GenerateOptions gen{.reuse_cache = true};
    gen.on_token = conveyor::cli::stream_to_stdout(tokenizer, stream);
    const auto start = std::chrono::steady_clock::now();
    conveyor::GenerateResult result;
    try {
      result = engine.generate({request}, gen);
    } catch (const conveyor::Error& e) {
      fmt::print("\nerror: {}\n", e.what());
      messages.pop_back();
      continue;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print("{}\n", stream.finish());
    messages.push_back(
        {"assistant", conveyor::cli::answer_text(tokenizer, result.requests[0].tokens)});
    fmt::print(
        "[{} prompt tokens, {} reused from the cache; {} generated in {:.2f} s, {:.1f} tok/s]\n",
        prompt.size(), result.requests[0].reused_tokens, result.requests[0].tokens.size(), seconds,
        result.decode_seconds > 0
            ? static_cast<double>(result.decode_tokens) / result.decode_seconds
            : 0.0);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  conveyor::cpu::reexec_for_blas_kernels(argv);  // before OpenBLAS does any work
  Args args;
  CLI::App app{"conveyor-chat: interactive multi-turn chat with a Llama-family instruct model"};
  conveyor::cli::add_engine_options(app, args.engine_args);
  app.add_option("--system", args.system, "system message (default: the template's own, if any)");
  app.add_option("--chat-template", args.chat_template,
                 "chat format instead of the model's: chatml, llama3, llama3.1, llama2, "
                 "mistral-v1, mistral-v3");
  app.add_option("--max-new-tokens", args.max_new_tokens, "longest answer")->capture_default_str();
  app.add_option("--temperature", args.temperature, "0 = greedy")->capture_default_str();
  app.add_option("--top-k", args.top_k, "0 = off")->capture_default_str();
  app.add_option("--top-p", args.top_p, "1 = off")->capture_default_str();
  app.add_option("--seed", args.seed, "sampling seed")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  return conveyor::run_reporting_errors([&] { return run(args); });
}
