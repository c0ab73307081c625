#include "serve/metrics.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <iterator>

namespace conveyor::serve {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  const auto it = std::lower_bound(bounds_.begin(), bounds_.end(), value);
  ++counts_[static_cast<size_t>(it - bounds_.begin())];
  sum_ += value;
  ++count_;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::string out;
  auto it = std::back_inserter(out);
  fmt::format_to(it, "# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  int64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    fmt::format_to(it, "{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cumulative);
  }
  fmt::format_to(it, "{}_bucket{{le=\"+Inf\"}} {}\n", name, count_);
  fmt::format_to(it, "{}_sum {}\n{}_count {}\n", name, sum_, name, count_);
  return out;
}

ServeMetrics::ServeMetrics()
    : ttft_({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}),
      itl_({0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5}),
      duration_({0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}) {}

void ServeMetrics::time_to_first_token(double seconds) {
  std::lock_guard lock(mutex_);
  ttft_.observe(seconds);
}

void ServeMetrics::inter_token(double seconds) {
  std::lock_guard lock(mutex_);
  itl_.observe(seconds);
}

void ServeMetrics::request_done(double seconds, std::string_view outcome) {
  std::lock_guard lock(mutex_);
  duration_.observe(seconds);
  ++outcomes_[std::string(outcome)];
}

void ServeMetrics::http_response(std::string_view endpoint, int status) {
  std::lock_guard lock(mutex_);
  ++http_[{std::string(endpoint), status}];
}

std::string ServeMetrics::render(const EngineMetrics& e) const {
  std::string out;
  auto it = std::back_inserter(out);
  auto gauge = [&](const char* name, const char* help, double value) {
    fmt::format_to(it, "# HELP {} {}\n# TYPE {} gauge\n{} {}\n", name, help, name, name, value);
  };
  auto counter = [&](const char* name, const char* help, double value) {
    fmt::format_to(it, "# HELP {} {}\n# TYPE {} counter\n{} {}\n", name, help, name, name, value);
  };
  gauge("conveyor_requests_running", "Requests holding a KV slot.",
        static_cast<double>(e.requests_running));
  gauge("conveyor_requests_waiting", "Requests waiting for a KV slot.",
        static_cast<double>(e.requests_waiting));
  gauge("conveyor_kv_slots", "KV cache slots (--max-batch).", e.kv_slots);
  gauge("conveyor_kv_slots_used", "KV cache slots in use.", e.kv_slots_used);
  counter("conveyor_prompt_tokens_total", "Prompt tokens computed (reused ones not counted).",
          static_cast<double>(e.prompt_tokens));
  counter("conveyor_generation_tokens_total", "Tokens generated.",
          static_cast<double>(e.generated_tokens));
  counter("conveyor_steps_total", "Pipeline steps run.", static_cast<double>(e.steps));
  fmt::format_to(it,
                 "# HELP conveyor_engine_requests_total Requests the engine ended, by outcome.\n"
                 "# TYPE conveyor_engine_requests_total counter\n"
                 "conveyor_engine_requests_total{{outcome=\"finished\"}} {}\n"
                 "conveyor_engine_requests_total{{outcome=\"cancelled\"}} {}\n"
                 "conveyor_engine_requests_total{{outcome=\"failed\"}} {}\n",
                 e.requests_finished, e.requests_cancelled, e.requests_failed);
  fmt::format_to(it,
                 "# HELP conveyor_stage_busy_seconds_total Compute and sample time per stage.\n"
                 "# TYPE conveyor_stage_busy_seconds_total counter\n");
  for (size_t s = 0; s < e.stage_busy_seconds.size(); ++s) {
    fmt::format_to(it, "conveyor_stage_busy_seconds_total{{stage=\"{}\"}} {}\n", s,
                   e.stage_busy_seconds[s]);
  }
  fmt::format_to(it,
                 "# HELP conveyor_stage_busy_fraction Busy time per stage over the time since "
                 "the model was opened.\n# TYPE conveyor_stage_busy_fraction gauge\n");
  for (size_t s = 0; s < e.stage_busy_seconds.size(); ++s) {
    fmt::format_to(it, "conveyor_stage_busy_fraction{{stage=\"{}\"}} {}\n", s,
                   e.seconds > 0 ? e.stage_busy_seconds[s] / e.seconds : 0.0);
  }
  std::lock_guard lock(mutex_);
  out += ttft_.render("conveyor_time_to_first_token_seconds",
                      "From the request's arrival to its first generated token.");
  out += itl_.render("conveyor_inter_token_latency_seconds",
                     "Between consecutive generated tokens of a request.");
  out += duration_.render("conveyor_request_duration_seconds",
                          "From the request's arrival to its last token.");
  fmt::format_to(it,
                 "# HELP conveyor_requests_total Generation requests by how they ended.\n"
                 "# TYPE conveyor_requests_total counter\n");
  for (const auto& [outcome, n] : outcomes_)
    fmt::format_to(it, "conveyor_requests_total{{outcome=\"{}\"}} {}\n", outcome, n);
  fmt::format_to(it,
                 "# HELP conveyor_http_responses_total HTTP responses by endpoint and status.\n"
                 "# TYPE conveyor_http_responses_total counter\n");
  for (const auto& [key, n] : http_) {
    fmt::format_to(it, "conveyor_http_responses_total{{endpoint=\"{}\",status=\"{}\"}} {}\n",
                   key.first, key.second, n);
  }
  return out;
}

}  // namespace conveyor::serve
