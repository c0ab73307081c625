// conveyor-generate: run a model across S pipeline stages on text prompts (optionally through
// the model's chat template; the answer streams to the terminal) or token ids, and print timings
// and the stage balance; optionally write logits (.npy), a Chrome trace and a timeline.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "backend/cpu/blas_kernels.hpp"
#include "cli_engine.hpp"
#include "cli_errors.hpp"
#include "conveyor/chat_template.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/error.hpp"
#include "conveyor/observe.hpp"
#include "conveyor/tokenizer.hpp"
#include "core/int_list.hpp"
#include "observe/npy.hpp"
#include "text/unicode.hpp"

namespace {

struct Args {
  conveyor::cli::EngineArgs engine_args;
  std::vector<std::string> prompts;     // text, repeatable: one request each
  std::string prompt_file;              // one text prompt, the whole file
  bool chat = false;                    // through the model's chat template
  std::string system;                   // system message (implies --chat)
  std::string chat_template;            // override of the detected format
  bool parse_special = false;           // control tokens written in the prompt text are parsed
  std::vector<std::string> prompt_ids;  // repeatable: one request each
  std::string prompt_ids_file;
  std::string batch;  // "1,2,3;4,5": several prompts
  int64_t max_new_tokens = 16;
  double temperature = 0.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
  bool ignore_eos = false;
  std::string logits_out;
  bool all_logits = false;
  std::string trace_out;
  std::string timeline_out;
  bool quiet = false;
  bool max_new_tokens_given = false;
};

bool text_mode(const Args& args) {
  return !args.prompts.empty() || !args.prompt_file.empty();
}

// Text prompts as token ids: raw (BOS as the tokenizer adds it) or through the chat template.
std::vector<std::vector<int32_t>> encode_text_prompts(const Args& args,
                                                      const conveyor::Tokenizer& tokenizer,
                                                      std::string& mode) {
  std::vector<std::string> texts = args.prompts;
  if (!args.prompt_file.empty()) {
    std::ifstream in(args.prompt_file, std::ios::binary);
    if (!in) {
      throw conveyor::Error(conveyor::ErrorCode::kInvalidArgument,
                            fmt::format("cannot read --prompt-file {}", args.prompt_file));
    }
    std::ostringstream text;
    text << in.rdbuf();
    texts.push_back(text.str());
  }
  std::vector<std::vector<int32_t>> prompts;
  if (args.chat || !args.system.empty()) {
    const auto chat = conveyor::ChatTemplate::for_tokenizer(tokenizer, args.chat_template);
    mode = fmt::format("chat, {}", chat.describe());
    for (const std::string& text : texts) {
      std::vector<conveyor::ChatMessage> messages;
      if (!args.system.empty()) messages.push_back({"system", args.system});
      messages.push_back({"user", text});
      prompts.push_back(
          conveyor::encode_chat(tokenizer, chat.render(messages, tokenizer), args.parse_special));
    }
  } else {
    mode = "raw text";
    for (const std::string& text : texts) {
      prompts.push_back(tokenizer.encode(text, {.parse_special = args.parse_special}));
      if (prompts.back().empty()) {
        throw conveyor::Error(conveyor::ErrorCode::kInvalidArgument,
                              "the prompt is empty; give some text");
      }
    }
  }
  return prompts;
}

std::vector<std::vector<int32_t>> collect_prompts(const Args& args) {
  std::vector<std::vector<int32_t>> prompts;
  for (const std::string& text : args.prompt_ids) {
    prompts.push_back(conveyor::parse_token_ids(text, "--prompt-ids"));
  }
  if (!args.batch.empty()) {
    size_t begin = 0;
    for (;;) {
      const size_t end = args.batch.find(';', begin);
      prompts.push_back(conveyor::parse_token_ids(
          std::string_view(args.batch).substr(begin, end - begin), "--batch"));
      if (end == std::string::npos) break;
      begin = end + 1;
    }
  }
  if (!args.prompt_ids_file.empty()) {
    auto more = conveyor::read_token_ids_file(args.prompt_ids_file);
    prompts.insert(prompts.end(), more.begin(), more.end());
  }
  if (prompts.empty()) {
    throw conveyor::Error(conveyor::ErrorCode::kInvalidArgument,
                          "no prompt given: pass --prompt TEXT (with --chat for an instruct "
                          "model), --prompt-file FILE, --prompt-ids 1,2,3, --batch '1,2;3,4' or "
                          "--prompt-ids-file FILE");
  }
  return prompts;
}

int run(Args& args) {
  conveyor::EngineOptions options = conveyor::cli::engine_options(args.engine_args);
  const bool text = text_mode(args);
  if (text && (!args.prompt_ids.empty() || !args.batch.empty() || !args.prompt_ids_file.empty())) {
    throw conveyor::Error(conveyor::ErrorCode::kInvalidArgument,
                          "pass text prompts (--prompt, --prompt-file) or token ids (--prompt-ids, "
                          "--batch, --prompt-ids-file), not both");
  }
  if (!text && (args.chat || !args.system.empty())) {
    throw conveyor::Error(conveyor::ErrorCode::kInvalidArgument,
                          "--chat and --system apply to text prompts; add --prompt TEXT");
  }
  if (text && !args.max_new_tokens_given) args.max_new_tokens = 256;  // answers, not a few ids
  std::optional<conveyor::Tokenizer> tokenizer;
  std::string mode = "token ids";
  std::vector<std::vector<int32_t>> prompts;
  // Under mpirun only rank 0 reads the prompts (their files need exist on its host alone); the
  // other ranks run the steps it plans.
  const bool follower = options.processes && options.processes->rank() != 0;
  if (!follower && text) {
    tokenizer = conveyor::cli::open_tokenizer(args.engine_args);
    prompts = encode_text_prompts(args, *tokenizer, mode);
  } else if (!follower) {
    prompts = collect_prompts(args);
  }
  if (static_cast<int64_t>(prompts.size()) > options.capacity.max_batch) {
    throw conveyor::Error(
        conveyor::ErrorCode::kInvalidArgument,
        fmt::format("{} prompts but --max-batch is {}; raise --max-batch or pass fewer prompts",
                    prompts.size(), options.capacity.max_batch));
  }

  conveyor::Engine engine = conveyor::Engine::open(args.engine_args.model, options);
  if (conveyor::cli::follow_unless_leader(engine)) return 0;
  const conveyor::ModelConfig& config = engine.config();
  const auto& partition = engine.partition();
  fmt::print("model {}: {}, {} layers, hidden {}, vocab {}, {:.1f}M params\n",
             args.engine_args.model, conveyor::architecture_name(config.architecture),
             config.n_layers, config.hidden_size, config.vocab_size,
             static_cast<double>(config.n_params()) / 1e6);
  fmt::print("{}\n", conveyor::cli::load_summary(engine.load_stats()));
  fmt::print("pipeline: {} stage(s), layers {}, max_context {}\n", partition.n_stages(),
             partition.to_string(), engine.max_context());
  for (const std::string& line : engine.stage_reports())
    fmt::print("  {}\n", line);
  if (tokenizer) {
    fmt::print("tokenizer: {}\n", tokenizer->description());
    for (size_t r = 0; r < prompts.size(); ++r)
      fmt::print("prompt {}: {} tokens ({})\n", r, prompts[r].size(), mode);
  }

  std::vector<conveyor::Request> requests;
  for (const auto& prompt : prompts) {
    conveyor::Request req;
    req.prompt = prompt;
    req.max_new_tokens = args.max_new_tokens;
    req.sampling = {.temperature = args.temperature,
                    .top_k = args.top_k,
                    .top_p = args.top_p,
                    .seed = args.seed};
    req.stop_at_eos = !args.ignore_eos;
    if (tokenizer && !args.ignore_eos) req.stop_token_ids = tokenizer->end_of_generation_ids();
    requests.push_back(std::move(req));
  }
  conveyor::GenerateOptions gen;
  gen.record_trace = true;  // the balance report needs the events
  gen.return_logits = !args.logits_out.empty();
  gen.all_logits = args.all_logits;
  if (args.all_logits && args.logits_out.empty()) {
    throw conveyor::Error(conveyor::ErrorCode::kInvalidArgument,
                          "--all-logits needs --logits-out FILE.npy");
  }
  // One text request streams to the terminal as it is generated; several print at the end.
  std::optional<conveyor::StreamDecoder> stream;
  if (tokenizer && requests.size() == 1) {
    stream.emplace(*tokenizer, conveyor::DecodeOptions{.skip_special = true});
    fmt::print("--- answer ---\n");
    std::fflush(stdout);
    gen.on_token = conveyor::cli::stream_to_stdout(*tokenizer, *stream);
  }
  conveyor::GenerateResult result = engine.generate(requests, gen);

  for (size_t r = 0; r < result.requests.size(); ++r) {
    const auto& out = result.requests[r];
    const char* stop = out.finish == conveyor::FinishReason::kStopToken ? "  [stop token]" : "";
    if (!tokenizer) {
      fmt::print("request {}: {}{}\n", r, fmt::join(out.tokens, " "), stop);
      continue;
    }
    if (stream) {
      fmt::print("{}\n--- {} tokens{} ---\n", stream->finish(), out.tokens.size(), stop);
      continue;
    }
    fmt::print("--- answer {} ({} tokens{}) ---\n{}\n", r, out.tokens.size(), stop,
               conveyor::cli::answer_text(*tokenizer, out.tokens));
  }
  auto rate = [](int64_t tokens, double seconds) {
    return seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0;
  };
  fmt::print(
      "load {:.3f} s | prefill {} tok in {:.3f} s = {:.1f} tok/s | decode {} tok in {:.3f} s "
      "= {:.1f} tok/s\n",
      engine.load_seconds(), result.prefill_tokens, result.prefill_seconds,
      rate(result.prefill_tokens, result.prefill_seconds), result.decode_tokens,
      result.decode_seconds, rate(result.decode_tokens, result.decode_seconds));

  const int n_stages = partition.n_stages();
  if (!args.quiet) {
    // The ideal bubble (S-1)/(M+S-1) describes one pipelined step, so report per phase.
    for (conveyor::Phase phase : {conveyor::Phase::kPrefill, conveyor::Phase::kDecode}) {
      int m = 0;
      for (const auto& step : result.steps) {
        if (step.phase == phase) m = std::max(m, step.n_micro_batches);
      }
      if (m == 0) continue;
      fmt::print("{} stage balance:\n{}", conveyor::to_string(phase),
                 conveyor::format_balance_report(
                     conveyor::balance_report_for_phase(result.trace, n_stages, m, phase)));
    }
  }
  if (!args.logits_out.empty()) {
    std::vector<float> all;
    int64_t rows = 0;
    for (const auto& out : result.requests) {
      all.insert(all.end(), out.logits.begin(), out.logits.end());
      rows += out.logits_rows;
    }
    conveyor::write_npy_f32(args.logits_out, all, rows, config.vocab_size);
    fmt::print("wrote logits [{}, {}] to {}\n", rows, config.vocab_size, args.logits_out);
  }
  if (!args.trace_out.empty()) {
    conveyor::write_chrome_trace(args.trace_out, result.trace, n_stages);
    fmt::print("wrote Chrome trace to {} (open in Perfetto)\n", args.trace_out);
  }
  if (!args.timeline_out.empty()) {
    conveyor::write_timeline_svg(
        args.timeline_out, result.trace, n_stages,
        {.title = fmt::format("{}: {} stages", args.engine_args.model, n_stages)});
    fmt::print("wrote timeline to {}\n", args.timeline_out);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  conveyor::cpu::reexec_for_blas_kernels(argv);  // before OpenBLAS does any work
  Args args;
  CLI::App app{"conveyor-generate: pipeline-parallel generation with a Llama-family model"};
  conveyor::cli::add_engine_options(app, args.engine_args);
  app.add_option("--prompt", args.prompts, "prompt text (repeatable: one request each)");
  app.add_option("--prompt-file", args.prompt_file, "a file holding one text prompt");
  app.add_flag("--chat", args.chat,
               "wrap each prompt as a user message in the model's chat template");
  app.add_option("--system", args.system, "system message (implies --chat)");
  app.add_option("--chat-template", args.chat_template,
                 "chat format instead of the model's: chatml, llama3, llama3.1, llama2, "
                 "mistral-v1, mistral-v3");
  app.add_flag("--parse-special", args.parse_special,
               "parse control tokens (<|im_start|> ...) written in the prompt text");
  app.add_option("--prompt-ids", args.prompt_ids, "prompt token ids, e.g. 1,2,3 (repeatable)");
  app.add_option("--prompt-ids-file", args.prompt_ids_file, "file with one prompt per line");
  app.add_option("--batch", args.batch, "several prompts separated by ';', e.g. '1,2,3;4,5'");
  app.add_option("--max-new-tokens", args.max_new_tokens,
                 "tokens to generate per prompt (default 16 for token ids, 256 for text)");
  app.add_option("--temperature", args.temperature, "0 = greedy")->capture_default_str();
  app.add_option("--top-k", args.top_k, "0 = off")->capture_default_str();
  app.add_option("--top-p", args.top_p, "1 = off")->capture_default_str();
  app.add_option("--seed", args.seed, "sampling seed")->capture_default_str();
  app.add_flag("--ignore-eos", args.ignore_eos,
               "do not stop at the model's end-of-generation tokens");
  app.add_option("--logits-out", args.logits_out, "write float32 logits [rows, vocab] as .npy");
  app.add_flag("--all-logits", args.all_logits,
               "with --logits-out: one row per prompt position too, not only per generated token");
  app.add_option("--trace", args.trace_out, "write a Chrome trace JSON (Perfetto)");
  app.add_option("--timeline", args.timeline_out, "write an SVG timeline of the stages");
  app.add_flag("--quiet", args.quiet, "omit the stage-balance report");
  CLI11_PARSE(app, argc, argv);
  args.max_new_tokens_given = app.count("--max-new-tokens") > 0;
  spdlog::set_level(spdlog::level::warn);
  return conveyor::run_reporting_errors([&] { return run(args); });
}
