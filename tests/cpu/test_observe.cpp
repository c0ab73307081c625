// Tests of the observability exports on hand-built traces with known numbers: balance report,
// Chrome trace JSON and SVG timeline.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/test_util.hpp"
#include "conveyor/error.hpp"
#include "conveyor/observe.hpp"

namespace conveyor {
namespace {

TraceEvent make_event(int stage, OpKind kind, int32_t micro_batch, double start_us, double end_us,
                      Phase phase = Phase::kPrefill, int64_t step = 0, int64_t n_tokens = 8) {
  TraceEvent event;
  event.stage = stage;
  event.kind = kind;
  event.micro_batch = kind == OpKind::kCommit ? -1 : micro_batch;
  event.step = step;
  event.phase = phase;
  event.n_tokens = kind == OpKind::kCommit ? 0 : n_tokens;
  event.start_us = start_us;
  event.end_us = end_us;
  return event;
}

// A perfect GPipe staircase: stage s computes micro-batch m in [(m+s)t, (m+s+1)t), hands it on
// with an instantaneous send/recv pair, and every stage commits at the end.
Trace gpipe_trace(int n_stages, int n_micro_batches, double t_us) {
  Trace trace;
  const double end = (n_micro_batches + n_stages - 1) * t_us;
  for (int s = 0; s < n_stages; ++s) {
    for (int m = 0; m < n_micro_batches; ++m) {
      const double start = (m + s) * t_us;
      if (s > 0) trace.push_back(make_event(s, OpKind::kRecv, m, start, start));
      trace.push_back(make_event(s, OpKind::kCompute, m, start, start + t_us));
      if (s + 1 < n_stages) {
        trace.push_back(make_event(s, OpKind::kSend, m, start + t_us, start + t_us));
      }
    }
    trace.push_back(make_event(s, OpKind::kCommit, -1, end, end));
  }
  return trace;
}

size_t count_substr(const std::string& text, const std::string& needle) {
  size_t count = 0;
  for (size_t pos = text.find(needle); pos != std::string::npos;
       pos = text.find(needle, pos + needle.size())) {
    ++count;
  }
  return count;
}

void expect_error(ErrorCode code, const std::string& needle, const auto& call) {
  try {
    call();
    ADD_FAILURE() << "expected conveyor::Error containing '" << needle << "'";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), code) << error.what();
    EXPECT_NE(std::string(error.what()).find(needle), std::string::npos) << error.what();
  }
}

// ---- balance report --------------------------------------------------------------------------

TEST(BalanceReport, GpipeStaircaseBubbleEqualsIdealExactly) {
  const BalanceReport report = balance_report(gpipe_trace(2, 4, 10.0), 2, 4);
  ASSERT_EQ(report.stages.size(), 2u);
  EXPECT_EQ(report.span_us, 50.0);
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(report.stages[s].stage, s);
    EXPECT_EQ(report.stages[s].busy_us, 40.0);
    EXPECT_EQ(report.stages[s].idle_us, 10.0);
    EXPECT_EQ(report.stages[s].n_compute, 4);
  }
  EXPECT_EQ(report.imbalance, 1.0);
  EXPECT_EQ(report.n_micro_batches, 4);
  EXPECT_EQ(report.ideal_bubble_fraction, 1.0 / 5.0);
  EXPECT_EQ(report.bubble_fraction, report.ideal_bubble_fraction);
}

TEST(BalanceReport, GpipeStaircaseMatchesIdealForManyShapes) {
  for (int n_stages : {1, 2, 3, 4, 8}) {
    for (int n_micro_batches : {1, 2, 5, 16}) {
      const BalanceReport report =
          balance_report(gpipe_trace(n_stages, n_micro_batches, 7.0), n_stages, n_micro_batches);
      const double ideal = static_cast<double>(n_stages - 1) / (n_micro_batches + n_stages - 1);
      EXPECT_EQ(report.ideal_bubble_fraction, ideal) << n_stages << "x" << n_micro_batches;
      EXPECT_EQ(report.bubble_fraction, ideal) << n_stages << "x" << n_micro_batches;
      EXPECT_EQ(report.imbalance, 1.0);
    }
  }
}

TEST(BalanceReport, UnbalancedStagesImbalanceExact) {
  // Per micro-batch compute takes 10, 20 and 30 us on stages 0, 1, 2; two micro-batches.
  const Trace trace = {
      make_event(0, OpKind::kCompute, 0, 0, 10),  make_event(0, OpKind::kCompute, 1, 10, 20),
      make_event(1, OpKind::kCompute, 0, 10, 30), make_event(1, OpKind::kCompute, 1, 30, 50),
      make_event(2, OpKind::kCompute, 0, 30, 60), make_event(2, OpKind::kCompute, 1, 60, 90),
  };
  const BalanceReport report = balance_report(trace, 3, 2);
  EXPECT_EQ(report.span_us, 90.0);
  EXPECT_EQ(report.stages[0].busy_us, 20.0);
  EXPECT_EQ(report.stages[1].busy_us, 40.0);
  EXPECT_EQ(report.stages[2].busy_us, 60.0);
  EXPECT_EQ(report.stages[0].idle_us, 70.0);
  EXPECT_EQ(report.stages[2].idle_us, 30.0);
  EXPECT_EQ(report.imbalance, 1.5);  // 60 / mean(20, 40, 60)
  EXPECT_EQ(report.bubble_fraction, 150.0 / 270.0);
  EXPECT_EQ(report.ideal_bubble_fraction, 0.5);  // (3-1)/(2+3-1)

  const std::string table = format_balance_report(report);
  EXPECT_NE(table.find("busy ms"), std::string::npos) << table;
  EXPECT_NE(table.find("idle ms"), std::string::npos) << table;
  EXPECT_NE(table.find("busy %"), std::string::npos) << table;
  EXPECT_NE(table.find("66.7%"), std::string::npos) << table;  // stage 2: 60 of 90 us
  EXPECT_NE(table.find("imbalance (max/mean busy): 1.500"), std::string::npos) << table;
  EXPECT_NE(table.find("measured 0.556, ideal (S-1)/(M+S-1) 0.500"), std::string::npos) << table;
  EXPECT_EQ(table.back(), '\n');
}

TEST(BalanceReport, SampleIsBusyCommunicationAndCommitAreNot) {
  const Trace trace = {
      make_event(0, OpKind::kRecv, 0, 0, 8),      make_event(0, OpKind::kCompute, 0, 8, 18),
      make_event(0, OpKind::kSample, 0, 18, 20),  make_event(0, OpKind::kSend, 0, 20, 30),
      make_event(0, OpKind::kCommit, -1, 30, 32),
  };
  const BalanceReport report = balance_report(trace, 1, 1);
  EXPECT_EQ(report.span_us, 32.0);
  EXPECT_EQ(report.stages[0].busy_us, 12.0);
  EXPECT_EQ(report.stages[0].idle_us, 20.0);
  EXPECT_EQ(report.stages[0].n_compute, 1);
  EXPECT_EQ(report.bubble_fraction, 20.0 / 32.0);
  EXPECT_EQ(report.ideal_bubble_fraction, 0.0);
}

TEST(BalanceReport, OverlappingBusyEventsCountOnce) {
  const Trace trace = {
      make_event(0, OpKind::kCompute, 0, 0, 10),
      make_event(0, OpKind::kCompute, 1, 5, 15),
      make_event(0, OpKind::kCompute, 2, 15, 20),  // touches the previous one
      make_event(0, OpKind::kCompute, 3, 30, 40),
  };
  const BalanceReport report = balance_report(trace, 1, 4);
  EXPECT_EQ(report.stages[0].busy_us, 30.0);
  EXPECT_EQ(report.stages[0].idle_us, 10.0);
  EXPECT_EQ(report.stages[0].n_compute, 4);
}

TEST(BalanceReport, SpanCoversAllStepsAndPhaseReportSelectsOne) {
  Trace trace = gpipe_trace(2, 2, 10.0);  // prefill, span 0..30
  for (int s = 0; s < 2; ++s) {
    trace.push_back(
        make_event(s, OpKind::kCompute, 0, 100 + 4 * s, 104 + 4 * s, Phase::kDecode, 1));
  }
  const BalanceReport all = balance_report(trace, 2, 2);
  EXPECT_EQ(all.span_us, 108.0);
  EXPECT_EQ(all.stages[0].busy_us, 24.0);

  const BalanceReport prefill = balance_report_for_phase(trace, 2, 2, Phase::kPrefill);
  EXPECT_EQ(prefill.span_us, 30.0);
  EXPECT_EQ(prefill.bubble_fraction, prefill.ideal_bubble_fraction);

  const BalanceReport decode = balance_report_for_phase(trace, 2, 1, Phase::kDecode);
  EXPECT_EQ(decode.span_us, 8.0);
  EXPECT_EQ(decode.stages[1].busy_us, 4.0);
  EXPECT_EQ(decode.stages[1].n_compute, 1);
  EXPECT_EQ(decode.bubble_fraction, 0.5);
  EXPECT_EQ(decode.ideal_bubble_fraction, 0.5);
}

TEST(BalanceReport, EmptyTraceHasNoNanAndSaysSo) {
  const BalanceReport report = balance_report({}, 3, 4);
  ASSERT_EQ(report.stages.size(), 3u);
  for (int s = 0; s < 3; ++s) {
    EXPECT_EQ(report.stages[s].stage, s);
    EXPECT_EQ(report.stages[s].busy_us, 0.0);
    EXPECT_EQ(report.stages[s].idle_us, 0.0);
    EXPECT_EQ(report.stages[s].n_compute, 0);
  }
  EXPECT_EQ(report.span_us, 0.0);
  EXPECT_EQ(report.imbalance, 0.0);
  EXPECT_EQ(report.bubble_fraction, 0.0);
  EXPECT_EQ(report.ideal_bubble_fraction, 2.0 / 6.0);
  const std::string table = format_balance_report(report);
  EXPECT_NE(table.find("no timed events recorded"), std::string::npos) << table;
  EXPECT_EQ(table.find("nan"), std::string::npos) << table;
  EXPECT_EQ(table.find("inf"), std::string::npos) << table;
}

TEST(BalanceReport, CommunicationOnlyTraceIsAllBubble) {
  const Trace trace = {make_event(0, OpKind::kSend, 0, 0, 5),
                       make_event(1, OpKind::kRecv, 0, 0, 5)};
  const BalanceReport report = balance_report(trace, 2, 1);
  EXPECT_EQ(report.span_us, 5.0);
  EXPECT_EQ(report.imbalance, 0.0);
  EXPECT_EQ(report.bubble_fraction, 1.0);
  const std::string table = format_balance_report(report);
  EXPECT_NE(table.find("no compute recorded"), std::string::npos) << table;
}

TEST(BalanceReport, RejectsBadInput) {
  const Trace bad_stage = {make_event(0, OpKind::kCompute, 0, 0, 1),
                           make_event(5, OpKind::kCompute, 0, 0, 1)};
  expect_error(ErrorCode::kInvalidArgument, "trace event 1 has stage 5",
               [&] { balance_report(bad_stage, 2, 1); });
  const Trace negative_stage = {make_event(-1, OpKind::kCompute, 0, 0, 1)};
  expect_error(ErrorCode::kInvalidArgument, "stage -1",
               [&] { balance_report(negative_stage, 2, 1); });
  expect_error(ErrorCode::kInvalidArgument, "n_stages is 0", [&] { balance_report({}, 0, 1); });
  expect_error(ErrorCode::kInvalidArgument, "n_micro_batches is 0",
               [&] { balance_report({}, 2, 0); });
  const Trace backwards = {make_event(0, OpKind::kCompute, 0, 5, 1)};
  expect_error(ErrorCode::kInvalidArgument, "ends before it starts",
               [&] { balance_report(backwards, 1, 1); });
  const Trace not_finite = {make_event(0, OpKind::kCompute, 0, 0, std::nan(""))};
  expect_error(ErrorCode::kInvalidArgument, "non-finite",
               [&] { balance_report(not_finite, 1, 1); });
}

// ---- Chrome trace ----------------------------------------------------------------------------

TEST(ChromeTrace, ParsesBackWithOneCompleteEventPerTraceEvent) {
  Trace trace = gpipe_trace(3, 4, 10.0);
  trace.push_back(make_event(2, OpKind::kSample, 3, 60, 61, Phase::kDecode, 7, 1));
  const nlohmann::json doc = nlohmann::json::parse(chrome_trace_json(trace, 3));
  EXPECT_EQ(doc.at("displayTimeUnit"), "ms");
  const nlohmann::json& events = doc.at("traceEvents");
  ASSERT_TRUE(events.is_array());

  size_t n_complete = 0;
  std::set<int> tids;
  std::set<std::string> thread_names;
  for (const nlohmann::json& event : events) {
    EXPECT_EQ(event.at("pid"), 0);
    if (event.at("ph") == "X") {
      ++n_complete;
      tids.insert(event.at("tid").get<int>());
      EXPECT_GE(event.at("dur").get<double>(), 0.0);
      EXPECT_TRUE(event.at("args").contains("step"));
      EXPECT_TRUE(event.at("args").contains("micro_batch"));
      EXPECT_TRUE(event.at("args").contains("n_tokens"));
    } else if (event.at("ph") == "M" && event.at("name") == "thread_name") {
      thread_names.insert(event.at("args").at("name").get<std::string>());
      EXPECT_EQ(event.at("args").at("name"), "stage " + std::to_string(event.at("tid").get<int>()));
    }
  }
  EXPECT_EQ(n_complete, trace.size());
  EXPECT_EQ(tids, (std::set<int>{0, 1, 2}));
  EXPECT_EQ(thread_names, (std::set<std::string>{"stage 0", "stage 1", "stage 2"}));

  // The events appear in trace order after the metadata; check a few by content.
  std::vector<nlohmann::json> complete;
  for (const nlohmann::json& event : events) {
    if (event.at("ph") == "X") complete.push_back(event);
  }
  for (size_t i = 0; i < trace.size(); ++i) {
    EXPECT_EQ(complete[i].at("tid"), trace[i].stage);
    EXPECT_EQ(complete[i].at("ts").get<double>(), trace[i].start_us);
    EXPECT_EQ(complete[i].at("dur").get<double>(), trace[i].end_us - trace[i].start_us);
  }
  const nlohmann::json& first = complete[0];  // stage 0 compute of micro-batch 0
  EXPECT_EQ(first.at("name"), "compute mb0");
  EXPECT_EQ(first.at("cat"), "prefill");
  EXPECT_EQ(first.at("args").at("micro_batch"), 0);
  EXPECT_EQ(first.at("args").at("n_tokens"), 8);
  EXPECT_EQ(complete[1].at("name"), "send mb0");
  const nlohmann::json& sample = complete.back();
  EXPECT_EQ(sample.at("name"), "sample mb3");
  EXPECT_EQ(sample.at("cat"), "decode");
  EXPECT_EQ(sample.at("args").at("step"), 7);
  EXPECT_EQ(sample.at("ts").get<double>(), 60.0);
  EXPECT_EQ(sample.at("dur").get<double>(), 1.0);
  size_t n_commit = 0;
  for (const nlohmann::json& event : complete) {
    if (event.at("name") == "commit") {
      ++n_commit;
      EXPECT_EQ(event.at("args").at("micro_batch"), -1);
    }
  }
  EXPECT_EQ(n_commit, 3u);
}

TEST(ChromeTrace, EmptyTraceHasOnlyTrackNames) {
  const nlohmann::json doc = nlohmann::json::parse(chrome_trace_json({}, 2));
  size_t n_complete = 0;
  size_t n_thread_names = 0;
  for (const nlohmann::json& event : doc.at("traceEvents")) {
    if (event.at("ph") == "X") ++n_complete;
    if (event.at("name") == "thread_name") ++n_thread_names;
  }
  EXPECT_EQ(n_complete, 0u);
  EXPECT_EQ(n_thread_names, 2u);
}

TEST(ChromeTrace, RejectsUnknownStage) {
  const Trace trace = {make_event(2, OpKind::kCompute, 0, 0, 1)};
  expect_error(ErrorCode::kInvalidArgument, "has stage 2 but the pipeline has 2 stages",
               [&] { chrome_trace_json(trace, 2); });
}

TEST(ChromeTrace, WritesFileAndNamesAnUnwritablePath) {
  const test::TempDir dir("conveyor-observe");
  const Trace trace = gpipe_trace(2, 2, 5.0);
  const std::filesystem::path path = dir.path() / "trace.json";
  write_chrome_trace(path, trace, 2);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_EQ(text.str(), chrome_trace_json(trace, 2));

  const std::filesystem::path bad = dir.path() / "no-such-dir" / "trace.json";
  expect_error(ErrorCode::kInvalidArgument, bad.string(),
               [&] { write_chrome_trace(bad, trace, 2); });
}

// ---- SVG timeline ----------------------------------------------------------------------------

// Checks that every element opened is closed in order and that '&' only starts an entity.
void expect_well_formed(const std::string& svg) {
  std::vector<std::string> open;
  for (size_t pos = svg.find('<'); pos != std::string::npos; pos = svg.find('<', pos + 1)) {
    const size_t end = svg.find('>', pos);
    ASSERT_NE(end, std::string::npos) << "unterminated tag at " << pos;
    const std::string tag = svg.substr(pos + 1, end - pos - 1);
    ASSERT_FALSE(tag.empty());
    if (tag.back() == '/') continue;  // self-closing
    const size_t name_end = tag.find_first_of(" \t\n/");
    if (tag[0] == '/') {
      ASSERT_FALSE(open.empty()) << "closing " << tag << " with nothing open";
      EXPECT_EQ("/" + open.back(), tag);
      open.pop_back();
    } else {
      open.push_back(tag.substr(0, name_end));
    }
  }
  EXPECT_TRUE(open.empty()) << open.size() << " elements left open";
  for (size_t pos = svg.find('&'); pos != std::string::npos; pos = svg.find('&', pos + 1)) {
    const size_t semi = svg.find(';', pos);
    ASSERT_NE(semi, std::string::npos);
    const std::string entity = svg.substr(pos, semi - pos + 1);
    EXPECT_TRUE(entity == "&amp;" || entity == "&lt;" || entity == "&gt;" || entity == "&quot;" ||
                entity == "&apos;")
        << entity;
  }
}

// A coordinate or label printed from a NaN or an infinity ("nan", "-inf") as an attribute value or
// text content.
bool has_non_finite_number(const std::string& svg) {
  for (const char* start : {"\"", ">"}) {
    for (const char* value : {"nan", "-nan", "inf", "-inf"}) {
      if (svg.find(std::string(start) + value) != std::string::npos) return true;
    }
  }
  return false;
}

constexpr size_t kLegendEntries = 6;

TEST(TimelineSvg, OneRectPerEventPlusBackgroundRowsAndLegend) {
  Trace trace = gpipe_trace(3, 4, 1000.0);
  trace.push_back(make_event(2, OpKind::kSample, 3, 6000, 6200, Phase::kDecode, 1, 1));
  const std::string svg = timeline_svg(trace, 3);
  ASSERT_EQ(svg.rfind("<svg", 0), 0u) << svg.substr(0, 80);
  EXPECT_NE(svg.find("xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  expect_well_formed(svg);
  EXPECT_EQ(count_substr(svg, "<rect class=\"ev\""), trace.size());
  EXPECT_EQ(count_substr(svg, "<rect"), trace.size() + 1 + 3 + kLegendEntries);
  for (int s = 0; s < 3; ++s) {
    EXPECT_EQ(count_substr(svg, ">stage " + std::to_string(s) + "</text>"), 1u) << s;
  }
  EXPECT_NE(svg.find("conveyor pipeline timeline"), std::string::npos);
  EXPECT_NE(svg.find("compute (prefill)"), std::string::npos);
  EXPECT_NE(svg.find("compute (decode)"), std::string::npos);
  EXPECT_NE(svg.find("time (ms)"), std::string::npos);
  // 1 ms boxes on a ~1100 px wide plot of 6.2 ms are wide enough for their micro-batch number.
  EXPECT_EQ(count_substr(svg, "fill=\"#ffffff\" text-anchor=\"middle\""), 12u);
  EXPECT_NE(svg.find(">3</text>"), std::string::npos);
  // Tick labels in ms: the span is 6.2 ms, so the ticks are 0, 1, ..., 6.
  EXPECT_NE(svg.find(">0</text>"), std::string::npos);
  EXPECT_NE(svg.find(">6</text>"), std::string::npos);
  EXPECT_EQ(svg.find(">7</text>"), std::string::npos);
}

TEST(TimelineSvg, NarrowBoxesHaveNoNumbers) {
  Trace trace = gpipe_trace(2, 200, 10.0);
  TimelineOptions options;
  options.width_px = 400;
  const std::string svg = timeline_svg(trace, 2, options);
  expect_well_formed(svg);
  EXPECT_EQ(count_substr(svg, "<rect class=\"ev\""), trace.size());
  EXPECT_EQ(count_substr(svg, "fill=\"#ffffff\" text-anchor=\"middle\""), 0u);
}

TEST(TimelineSvg, EscapesTitle) {
  TimelineOptions options;
  options.title = "a <&> \"b\" 'c'";
  const std::string svg = timeline_svg(gpipe_trace(2, 2, 10.0), 2, options);
  expect_well_formed(svg);
  EXPECT_EQ(svg.find("<&>"), std::string::npos);
  EXPECT_NE(svg.find("a &lt;&amp;&gt; &quot;b&quot; &apos;c&apos;"), std::string::npos);
}

TEST(TimelineSvg, EmptyTraceIsValidAndSaysSo) {
  const std::string svg = timeline_svg({}, 2);
  ASSERT_EQ(svg.rfind("<svg", 0), 0u);
  expect_well_formed(svg);
  EXPECT_EQ(count_substr(svg, "<rect class=\"ev\""), 0u);
  EXPECT_NE(svg.find("no events recorded"), std::string::npos);
  EXPECT_FALSE(has_non_finite_number(svg));
}

TEST(TimelineSvg, InstantaneousEventsOnlyStillDraw) {
  const Trace trace = {make_event(0, OpKind::kCommit, -1, 5, 5),
                       make_event(1, OpKind::kCommit, -1, 5, 5)};
  const std::string svg = timeline_svg(trace, 2);
  expect_well_formed(svg);
  EXPECT_EQ(count_substr(svg, "<rect class=\"ev\""), 2u);
  EXPECT_FALSE(has_non_finite_number(svg));
}

TEST(TimelineSvg, RejectsUnknownStageAndBadOptions) {
  const Trace trace = {make_event(3, OpKind::kCompute, 0, 0, 1)};
  expect_error(ErrorCode::kInvalidArgument, "has stage 3", [&] { timeline_svg(trace, 2); });
  TimelineOptions narrow;
  narrow.width_px = 10;
  expect_error(ErrorCode::kInvalidArgument, "width_px is 10", [&] { timeline_svg({}, 1, narrow); });
  TimelineOptions flat;
  flat.row_height_px = 0;
  expect_error(ErrorCode::kInvalidArgument, "row_height_px is 0",
               [&] { timeline_svg({}, 1, flat); });
}

TEST(TimelineSvg, WritesFileAndNamesAnUnwritablePath) {
  const test::TempDir dir("conveyor-observe");
  const Trace trace = gpipe_trace(2, 3, 10.0);
  const TimelineOptions options{.width_px = 800, .row_height_px = 24, .title = "run 1"};
  const std::filesystem::path path = dir.path() / "timeline.svg";
  write_timeline_svg(path, trace, 2, options);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_EQ(text.str(), timeline_svg(trace, 2, options));
  EXPECT_NE(text.str().find("width=\"800\""), std::string::npos);

  const std::filesystem::path bad = dir.path() / "no-such-dir" / "timeline.svg";
  expect_error(ErrorCode::kInvalidArgument, bad.string(),
               [&] { write_timeline_svg(bad, trace, 2, options); });
}

}  // namespace
}  // namespace conveyor
