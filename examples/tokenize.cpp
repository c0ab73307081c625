// conveyor-tokenize: text -> token ids (one line, space-separated) or, with --decode, ids -> text,
// with the tokenizer of a GGUF file (a vocabulary-only one works), a model directory, or a
// directory holding only tokenizer.json (+ tokenizer_config.json).
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <fstream>
#include <sstream>

#include "cli_errors.hpp"
#include "conveyor/error.hpp"
#include "conveyor/tokenizer.hpp"
#include "core/int_list.hpp"

namespace {

struct Args {
  std::string model;
  std::string text;
  std::string text_file;
  std::string decode;
  bool no_bos = false;
  bool parse_special = false;
  bool show_pieces = false;
};

int run(const Args& args) {
  const conveyor::Tokenizer tokenizer = conveyor::Tokenizer::open(args.model);
  if (!args.decode.empty()) {
    const std::vector<int32_t> ids = conveyor::parse_token_ids(args.decode, "--decode");
    fmt::print("{}\n", tokenizer.decode(ids));
    return 0;
  }
  std::string text = args.text;
  if (!args.text_file.empty()) {
    std::ifstream in(args.text_file, std::ios::binary);
    if (!in) {
      throw conveyor::Error(conveyor::ErrorCode::kInvalidArgument,
                            fmt::format("cannot read --text-file {}", args.text_file));
    }
    std::ostringstream content;
    content << in.rdbuf();
    text = content.str();
  }
  const std::vector<int32_t> ids =
      tokenizer.encode(text, {.add_special = !args.no_bos, .parse_special = args.parse_special});
  fmt::print("{}\n", fmt::join(ids, " "));
  if (args.show_pieces) {
    for (int32_t id : ids)
      fmt::print(stderr, "{:>8} {}\n", id, tokenizer.token_text(id));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  CLI::App app{"conveyor-tokenize: token ids of a text, or the text of token ids"};
  app.add_option("--model", args.model,
                 "a .gguf file (vocabulary-only works), a directory holding one, or a directory "
                 "with tokenizer.json")
      ->required();
  auto* text = app.add_option("--text", args.text, "text to tokenize");
  auto* file = app.add_option("--text-file", args.text_file, "file whose content to tokenize");
  auto* decode = app.add_option("--decode", args.decode, "ids to turn into text, e.g. 1,2,3");
  text->excludes(file)->excludes(decode);
  file->excludes(decode);
  app.add_flag("--no-bos", args.no_bos, "do not add the BOS (or EOS) the tokenizer would add");
  app.add_flag("--parse-special", args.parse_special,
               "match control tokens (<|im_start|> ...) written in the text");
  app.add_flag("--pieces", args.show_pieces, "also list each token's vocabulary entry on stderr");
  CLI11_PARSE(app, argc, argv);
  if (app.count("--text") + app.count("--text-file") + app.count("--decode") == 0) {
    fmt::print(stderr, "error: pass --text TEXT, --text-file FILE or --decode IDS\n");
    return 2;
  }
  spdlog::set_level(spdlog::level::warn);
  return conveyor::run_reporting_errors([&] { return run(args); });
}
