// bench_serving: a load generator for any OpenAI-compatible server (conveyor-serve,
// llama-server). Streams /v1/completions requests that arrive all at once (a fixed number of
// concurrent clients) or at a fixed rate, and reports throughput, time to first token and
// inter-token latency percentiles, as a table and as JSON.
#include <fmt/format.h>
#include <httplib.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <regex>
#include <thread>
#include <vector>

#include "core/stats.hpp"

namespace {

using conveyor::Clock;
using nlohmann::json;

struct Args {
  std::string url = "http://127.0.0.1:8000";
  std::string model;
  std::string label;
  int clients = 16;   // concurrent requests (all-at-once mode)
  int requests = 0;   // total (0: one per client)
  double rate = 0.0;  // requests per second; 0: all at once with --clients in flight
  int64_t max_tokens = 64;
  int prompt_words = 8;
  bool ignore_eos = true;
  int warmup = 2;
  std::string json_out;
};

struct Sample {
  double start = 0.0;  // seconds since the run began
  double ttft = 0.0;
  double end = 0.0;
  std::vector<double> itl;
  int64_t tokens = 0;  // chunks with a token (each carries one)
  int64_t usage_tokens = -1;
  bool ok = false;
  std::string error;
};

// A deterministic, varied prompt of about `words` words.
std::string prompt_for(int i, int words) {
  static const char* kWords[] = {"river",  "mountain", "quiet", "ancient", "bright", "city",
                                 "forest", "machine",  "story", "winter",  "harbor", "letter",
                                 "garden", "signal",   "echo",  "lantern"};
  std::string text = fmt::format("Request {}: tell me about", i);
  for (int w = 0; w < words; ++w)
    text += fmt::format(" {}", kWords[(i * 7 + w * 3) % 16]);
  return text + ".";
}

Sample run_one(const std::string& host, int port, const Args& args, int i,
               Clock::time_point epoch) {
  Sample s;
  httplib::Client client(host, port);
  client.set_read_timeout(600, 0);
  json body = {{"prompt", prompt_for(i, args.prompt_words)},
               {"max_tokens", args.max_tokens},
               {"temperature", 0},
               {"stream", true},
               {"stream_options", {{"include_usage", true}}}};
  if (!args.model.empty()) body["model"] = args.model;
  if (args.ignore_eos) body["ignore_eos"] = true;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.headers.emplace("Content-Type", "application/json");
  const auto t0 = Clock::now();
  s.start = std::chrono::duration<double>(t0 - epoch).count();
  std::optional<Clock::time_point> last;
  std::string buffer;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    buffer.append(data, n);
    for (size_t end; (end = buffer.find("\n\n")) != std::string::npos;) {
      const std::string event = buffer.substr(0, end);
      buffer.erase(0, end + 2);
      if (event.rfind("data: ", 0) != 0 || event == "data: [DONE]") continue;
      const json e = json::parse(event.substr(6), nullptr, false);
      if (e.is_discarded()) continue;
      if (e.contains("usage") && e["usage"].is_object()) {
        s.usage_tokens = e["usage"].value("completion_tokens", int64_t{-1});
      }
      if (!e.contains("choices") || e["choices"].empty()) continue;
      const json& c = e["choices"][0];
      if (!c.contains("text") || !c["finish_reason"].is_null()) continue;
      const auto now = Clock::now();
      if (last) {
        s.itl.push_back(std::chrono::duration<double>(now - *last).count());
      } else {
        s.ttft = std::chrono::duration<double>(now - t0).count();
      }
      last = now;
      ++s.tokens;
    }
    return true;
  };
  const httplib::Result r = client.send(req);
  s.end = std::chrono::duration<double>(Clock::now() - epoch).count();
  s.ok = r && r->status == 200 && s.tokens > 0;
  if (!s.ok) s.error = r ? fmt::format("HTTP {}", r->status) : httplib::to_string(r.error());
  return s;
}

json percentiles(const std::vector<double>& v) {
  return {{"p50", conveyor::percentile(v, 0.50)},
          {"p90", conveyor::percentile(v, 0.90)},
          {"p99", conveyor::percentile(v, 0.99)},
          {"mean", v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / v.size()}};
}

int run(const Args& args) {
  std::smatch m;
  if (!std::regex_match(args.url, m, std::regex(R"(http://([^:/]+):(\d+)/?)"))) {
    fmt::print(stderr, "--url {} is not http://HOST:PORT\n", args.url);
    return 1;
  }
  const std::string host = m[1];
  const int port = std::stoi(m[2]);
  const int total = args.requests > 0 ? args.requests : args.clients;

  // Warm-up requests (page in weights, grow buffers), not measured.
  for (int i = 0; i < args.warmup; ++i) {
    const Sample w = run_one(host, port, args, 100000 + i, Clock::now());
    if (!w.ok) {
      fmt::print(stderr, "warm-up request failed: {}\n", w.error);
      return 1;
    }
  }

  std::vector<Sample> samples(static_cast<size_t>(total));
  const auto epoch = Clock::now();
  std::vector<std::thread> threads;
  if (args.rate > 0.0) {
    // Open loop: request i starts at i / rate, whatever the others do.
    for (int i = 0; i < total; ++i) {
      threads.emplace_back([&, i] {
        std::this_thread::sleep_until(epoch + std::chrono::duration_cast<Clock::duration>(
                                                  std::chrono::duration<double>(i / args.rate)));
        samples[static_cast<size_t>(i)] = run_one(host, port, args, i, epoch);
      });
    }
  } else {
    // Closed loop: `clients` workers take the next request as soon as theirs ends.
    std::atomic<int> next{0};
    for (int c = 0; c < std::min(args.clients, total); ++c) {
      threads.emplace_back([&] {
        for (int i; (i = next.fetch_add(1)) < total;)
          samples[static_cast<size_t>(i)] = run_one(host, port, args, i, epoch);
      });
    }
  }
  for (std::thread& t : threads)
    t.join();

  std::vector<double> ttft, itl, latency;
  int64_t tokens = 0;
  int failed = 0;
  double last_end = 0.0;
  for (const Sample& s : samples) {
    if (!s.ok) {
      ++failed;
      fmt::print(stderr, "request failed: {}\n", s.error);
      continue;
    }
    ttft.push_back(s.ttft);
    itl.insert(itl.end(), s.itl.begin(), s.itl.end());
    latency.push_back(s.end - s.start);
    tokens += s.usage_tokens >= 0 ? s.usage_tokens : s.tokens;
    last_end = std::max(last_end, s.end);
  }
  const double throughput = last_end > 0 ? static_cast<double>(tokens) / last_end : 0.0;
  fmt::print(
      "{:<28} {:>4} req {:>7} tok {:>8.1f} tok/s | ttft p50 {:.3f} p90 {:.3f} p99 {:.3f} s | "
      "itl p50 {:.1f} p90 {:.1f} p99 {:.1f} ms | {} failed\n",
      args.label.empty() ? args.url : args.label, total, tokens, throughput,
      conveyor::percentile(ttft, 0.5), conveyor::percentile(ttft, 0.9),
      conveyor::percentile(ttft, 0.99), 1e3 * conveyor::percentile(itl, 0.5),
      1e3 * conveyor::percentile(itl, 0.9), 1e3 * conveyor::percentile(itl, 0.99), failed);
  if (!args.json_out.empty()) {
    const json out = {{"label", args.label},
                      {"url", args.url},
                      {"clients", args.clients},
                      {"requests", total},
                      {"rate", args.rate},
                      {"max_tokens", args.max_tokens},
                      {"prompt_words", args.prompt_words},
                      {"failed", failed},
                      {"tokens", tokens},
                      {"seconds", last_end},
                      {"tokens_per_s", throughput},
                      {"ttft_s", percentiles(ttft)},
                      {"itl_s", percentiles(itl)},
                      {"latency_s", percentiles(latency)}};
    std::ofstream(args.json_out) << out.dump(2) << "\n";
  }
  return failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  CLI::App app{"bench_serving: streamed /v1/completions load against an OpenAI-compatible server"};
  app.add_option("--url", args.url, "http://HOST:PORT of the server")->capture_default_str();
  app.add_option("--model", args.model, "model name to send (default: none)");
  app.add_option("--label", args.label, "name of this run in the output");
  app.add_option("--clients", args.clients, "concurrent requests (without --rate)")
      ->capture_default_str();
  app.add_option("--requests", args.requests, "requests in all (0: one per client)")
      ->capture_default_str();
  app.add_option("--rate", args.rate, "arrivals per second (0: all at once)")
      ->capture_default_str();
  app.add_option("--max-tokens", args.max_tokens, "tokens per request")->capture_default_str();
  app.add_option("--prompt-words", args.prompt_words, "words per prompt")->capture_default_str();
  app.add_flag("!--stop-at-eos", args.ignore_eos, "let a request end at its end-of-text token");
  app.add_option("--warmup", args.warmup, "unmeasured requests first")->capture_default_str();
  app.add_option("--json", args.json_out, "write the figures as JSON");
  CLI11_PARSE(app, argc, argv);
  return run(args);
}
