// Chrome trace event format export of a Trace (opens in Perfetto and chrome://tracing).
#include <nlohmann/json.hpp>

#include "conveyor/observe.hpp"
#include "core/check.hpp"
#include "core/file_io.hpp"

namespace conveyor {

namespace {

std::string event_name(const TraceEvent& event) {
  std::string name(to_string(event.kind));
  if (event.kind != OpKind::kCommit && event.micro_batch >= 0) {
    name += " mb" + std::to_string(event.micro_batch);
  }
  return name;
}

}  // namespace

std::string chrome_trace_json(const Trace& trace, int n_stages) {
  validate_trace(trace, n_stages);
  nlohmann::json events = nlohmann::json::array();
  events.push_back({{"name", "process_name"},
                    {"ph", "M"},
                    {"pid", 0},
                    {"tid", 0},
                    {"args", {{"name", "conveyor pipeline"}}}});
  for (int s = 0; s < n_stages; ++s) {
    events.push_back({{"name", "thread_name"},
                      {"ph", "M"},
                      {"pid", 0},
                      {"tid", s},
                      {"args", {{"name", "stage " + std::to_string(s)}}}});
    // Keeps the tracks in stage order whatever order the viewer would pick.
    events.push_back({{"name", "thread_sort_index"},
                      {"ph", "M"},
                      {"pid", 0},
                      {"tid", s},
                      {"args", {{"sort_index", s}}}});
  }
  for (const TraceEvent& event : trace) {
    events.push_back({{"name", event_name(event)},
                      {"cat", to_string(event.phase)},
                      {"ph", "X"},
                      {"pid", 0},
                      {"tid", event.stage},
                      {"ts", event.start_us},
                      {"dur", event.end_us - event.start_us},
                      {"args",
                       {{"step", event.step},
                        {"micro_batch", event.micro_batch},
                        {"n_tokens", event.n_tokens}}}});
  }
  nlohmann::json doc = {{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}};
  return doc.dump();
}

void write_chrome_trace(const std::filesystem::path& path, const Trace& trace, int n_stages) {
  const std::string text = chrome_trace_json(trace, n_stages);
  write_file(path, text, "Chrome trace");
}

}  // namespace conveyor
