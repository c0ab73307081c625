// Serving metrics in the Prometheus text format: the engine's counters and gauges plus the
// server's own latency histograms (time to first token, inter-token latency, request duration)
// and HTTP outcomes.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "conveyor/engine.hpp"

namespace conveyor::serve {

// A cumulative histogram with fixed upper bounds (seconds), as Prometheus keeps them.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  // "# HELP/# TYPE" lines and the _bucket/_sum/_count series of `name`.
  std::string render(const std::string& name, const std::string& help) const;
  int64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;  // per bound, not cumulative; the last is +Inf
  double sum_ = 0.0;
  int64_t count_ = 0;
};

// Thread-safe: HTTP handler threads record, /metrics renders.
class ServeMetrics {
 public:
  ServeMetrics();
  void time_to_first_token(double seconds);
  void inter_token(double seconds);
  void request_done(double seconds, std::string_view outcome);  // "stop", "length", "error", ...
  void http_response(std::string_view endpoint, int status);
  // Everything, with `engine` for the engine's side.
  std::string render(const EngineMetrics& engine) const;

 private:
  mutable std::mutex mutex_;
  Histogram ttft_, itl_, duration_;
  std::map<std::string, int64_t> outcomes_;
  std::map<std::pair<std::string, int>, int64_t> http_;
};

}  // namespace conveyor::serve
