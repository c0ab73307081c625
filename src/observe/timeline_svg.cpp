// SVG timeline of a Trace: stages as rows, time on the x axis, one rectangle per event; the idle
// gaps between them are the pipeline bubbles.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "conveyor/observe.hpp"
#include "core/check.hpp"
#include "core/file_io.hpp"

namespace conveyor {

namespace {

constexpr double kMarginLeft = 72.0;   // stage labels
constexpr double kMarginRight = 24.0;  // room for the last tick label
constexpr double kPlotTop = 56.0;      // below the title and subtitle
constexpr double kLegendItemWidth = 132.0;
constexpr double kLegendRowHeight = 20.0;

struct KindStyle {
  const char* label;
  const char* fill;
  double opacity;
};

// Legend order; also the index returned by style_index.
constexpr std::array<KindStyle, 6> kStyles = {{
    {"compute (prefill)", "#4e79a7", 1.0},
    {"compute (decode)", "#59a14f", 1.0},
    {"sample", "#f28e2b", 1.0},
    {"send", "#b07aa1", 0.55},
    {"recv", "#9d9d9d", 0.55},
    {"commit", "#e15759", 1.0},
}};

size_t style_index(const TraceEvent& event) {
  switch (event.kind) {
    case OpKind::kCompute:
      return event.phase == Phase::kPrefill ? 0 : 1;
    case OpKind::kSample:
      return 2;
    case OpKind::kSend:
      return 3;
    case OpKind::kRecv:
      return 4;
    case OpKind::kCommit:
      return 5;
  }
  return 0;
}

// Communication underneath, compute on top of it, commit markers above everything.
int draw_layer(OpKind kind) {
  switch (kind) {
    case OpKind::kRecv:
    case OpKind::kSend:
      return 0;
    case OpKind::kCompute:
    case OpKind::kSample:
      return 1;
    case OpKind::kCommit:
      return 2;
  }
  return 1;
}

// Text content and attribute values; characters XML 1.0 forbids become '?'.
std::string xml_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r') {
          out += '?';
        } else {
          out += c;
        }
    }
  }
  return out;
}

// A 1/2/5 x 10^k step giving about `target` intervals over `span`.
double nice_step(double span, int target) {
  const double raw = span / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double normalized = raw / magnitude;
  const double factor = normalized < 1.5   ? 1.0
                        : normalized < 3.5 ? 2.0
                        : normalized < 7.5 ? 5.0
                                           : 10.0;
  return factor * magnitude;
}

}  // namespace

void TimelineOptions::validate() const {
  if (width_px < 200 || width_px > 100000) {
    fail(ErrorCode::kInvalidArgument,
         "TimelineOptions::width_px is {} but must be in [200, 100000]", width_px);
  }
  if (row_height_px < 8 || row_height_px > 1000) {
    fail(ErrorCode::kInvalidArgument,
         "TimelineOptions::row_height_px is {} but must be in [8, 1000]", row_height_px);
  }
}

std::string timeline_svg(const Trace& trace, int n_stages, const TimelineOptions& options) {
  validate_trace(trace, n_stages);
  options.validate();

  const double width = options.width_px;
  const double row_height = options.row_height_px;
  const double plot_width = width - kMarginLeft - kMarginRight;
  const double plot_bottom = kPlotTop + n_stages * row_height;
  const int legend_per_row =
      std::max(1, static_cast<int>((width - kMarginLeft) / kLegendItemWidth));
  const int legend_rows = (static_cast<int>(kStyles.size()) + legend_per_row - 1) / legend_per_row;
  const double legend_top = plot_bottom + 46.0;
  const double height = legend_top + legend_rows * kLegendRowHeight + 8.0;

  double t0 = std::numeric_limits<double>::infinity();
  double t1 = -std::numeric_limits<double>::infinity();
  for (const TraceEvent& event : trace) {
    t0 = std::min(t0, event.start_us);
    t1 = std::max(t1, event.end_us);
  }
  const bool empty = trace.empty();
  const double span_us = empty ? 0.0 : t1 - t0;
  // A trace of instantaneous events still needs a scale.
  const double scale_us = span_us > 0.0 ? span_us : 1.0;
  auto x_of = [&](double t_us) { return kMarginLeft + (t_us - t0) / scale_us * plot_width; };

  const std::string title =
      options.title.empty() ? std::string("conveyor pipeline timeline") : options.title;
  std::string out;
  out += fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0:.0f}\" height=\"{1:.0f}\" "
      "viewBox=\"0 0 {0:.0f} {1:.0f}\" font-family=\"sans-serif\">\n",
      width, height);
  out += fmt::format("<title>{}</title>\n", xml_escape(title));
  out += fmt::format(
      "<rect class=\"bg\" x=\"0\" y=\"0\" width=\"{:.0f}\" height=\"{:.0f}\" fill=\"#ffffff\"/>\n",
      width, height);
  out +=
      fmt::format("<text x=\"{:.0f}\" y=\"24\" font-size=\"16\" font-weight=\"bold\">{}</text>\n",
                  kMarginLeft, xml_escape(title));
  out += fmt::format(
      "<text x=\"{:.0f}\" y=\"42\" font-size=\"11\" fill=\"#555555\">{} stage{}, {} event{}, span "
      "{:.3f} ms (time from the first event)</text>\n",
      kMarginLeft, n_stages, n_stages == 1 ? "" : "s", trace.size(), trace.size() == 1 ? "" : "s",
      span_us / 1000.0);

  // Stage rows.
  for (int s = 0; s < n_stages; ++s) {
    const double y = kPlotTop + s * row_height;
    out += fmt::format(
        "<rect class=\"row\" x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" "
        "fill=\"{}\"/>\n",
        kMarginLeft, y, plot_width, row_height, s % 2 == 0 ? "#f4f4f4" : "#fafafa");
    out += fmt::format(
        "<text x=\"{:.2f}\" y=\"{:.2f}\" font-size=\"12\" text-anchor=\"end\" "
        "dominant-baseline=\"middle\">stage {}</text>\n",
        kMarginLeft - 8.0, y + row_height / 2.0, s);
  }

  // Time axis: ticks in ms from the first event, with grid lines through the rows.
  out += fmt::format(
      "<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{2:.2f}\" y2=\"{1:.2f}\" stroke=\"#333333\"/>\n",
      kMarginLeft, plot_bottom, kMarginLeft + plot_width);
  if (span_us >= 1e-3) {  // below a nanosecond there is nothing to label
    const double span_ms = span_us / 1000.0;
    const double step_ms = nice_step(span_ms, 8);
    const int decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step_ms) + 1e-9)));
    for (int i = 0; i <= 100 && i * step_ms <= span_ms * (1.0 + 1e-9); ++i) {
      const double x = kMarginLeft + (i * step_ms) / span_ms * plot_width;
      out += fmt::format(
          "<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{0:.2f}\" y2=\"{2:.2f}\" "
          "stroke=\"#dddddd\"/>\n",
          x, kPlotTop, plot_bottom);
      out += fmt::format(
          "<line x1=\"{0:.2f}\" y1=\"{1:.2f}\" x2=\"{0:.2f}\" y2=\"{2:.2f}\" "
          "stroke=\"#333333\"/>\n",
          x, plot_bottom, plot_bottom + 4.0);
      out += fmt::format(
          "<text x=\"{:.2f}\" y=\"{:.2f}\" font-size=\"10\" "
          "text-anchor=\"middle\">{:.{}f}</text>\n",
          x, plot_bottom + 16.0, i * step_ms, decimals);
    }
  }
  out += fmt::format(
      "<text x=\"{:.2f}\" y=\"{:.2f}\" font-size=\"11\" text-anchor=\"middle\">time (ms)</text>\n",
      kMarginLeft + plot_width / 2.0, plot_bottom + 32.0);
  if (empty) {
    out += fmt::format(
        "<text x=\"{:.2f}\" y=\"{:.2f}\" font-size=\"12\" text-anchor=\"middle\" "
        "fill=\"#555555\">no events recorded</text>\n",
        kMarginLeft + plot_width / 2.0, (kPlotTop + plot_bottom) / 2.0);
  }

  // Events, layer by layer so compute is never hidden under a send or recv.
  std::vector<const TraceEvent*> order;
  order.reserve(trace.size());
  for (const TraceEvent& event : trace)
    order.push_back(&event);
  std::stable_sort(order.begin(), order.end(), [](const TraceEvent* a, const TraceEvent* b) {
    return draw_layer(a->kind) < draw_layer(b->kind);
  });
  const double thin = std::max(2.0, std::round(row_height * 0.2));
  for (const TraceEvent* event : order) {
    const KindStyle& style = kStyles[style_index(*event)];
    const double row_y = kPlotTop + event->stage * row_height;
    double x = x_of(event->start_us);
    double w = std::max(0.5, x_of(event->end_us) - x);
    double y = row_y + 3.0;
    double h = row_height - 6.0;
    switch (event->kind) {
      case OpKind::kRecv:
        y = row_y + 1.0;
        h = thin;
        break;
      case OpKind::kSend:
        y = row_y + row_height - 1.0 - thin;
        h = thin;
        break;
      case OpKind::kCommit:
        x = x_of(event->end_us) - 1.0;
        w = 2.0;
        y = row_y + 1.0;
        h = row_height - 2.0;
        break;
      default:
        break;
    }
    std::string name(to_string(event->kind));
    if (event->kind != OpKind::kCommit && event->micro_batch >= 0) {
      name += fmt::format(" mb{}", event->micro_batch);
    }
    const std::string tooltip = fmt::format(
        "stage {}: {}, {} step {}, {} tokens, {:.3f}-{:.3f} ms ({:.3f} ms)", event->stage, name,
        to_string(event->phase), event->step, event->n_tokens, (event->start_us - t0) / 1000.0,
        (event->end_us - t0) / 1000.0, (event->end_us - event->start_us) / 1000.0);
    out += fmt::format(
        "<rect class=\"ev\" x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" "
        "fill=\"{}\"{}{}><title>{}</title></rect>\n",
        x, y, w, h, style.fill,
        style.opacity < 1.0 ? fmt::format(" fill-opacity=\"{:.2f}\"", style.opacity) : "",
        // A hairline keeps back-to-back micro-batches apart.
        draw_layer(event->kind) == 1 ? " stroke=\"#ffffff\" stroke-width=\"0.5\"" : "",
        xml_escape(tooltip));
    if (event->kind == OpKind::kCompute && event->micro_batch >= 0 && row_height >= 16.0) {
      const std::string label = std::to_string(event->micro_batch);
      if (w >= 7.0 * static_cast<double>(label.size()) + 4.0) {
        out += fmt::format(
            "<text x=\"{:.2f}\" y=\"{:.2f}\" font-size=\"11\" fill=\"#ffffff\" "
            "text-anchor=\"middle\" dominant-baseline=\"middle\">{}</text>\n",
            x + w / 2.0, row_y + row_height / 2.0, label);
      }
    }
  }

  // Legend.
  for (size_t i = 0; i < kStyles.size(); ++i) {
    const KindStyle& style = kStyles[i];
    const double x = kMarginLeft + static_cast<double>(i % legend_per_row) * kLegendItemWidth;
    const double y = legend_top + static_cast<double>(i / legend_per_row) * kLegendRowHeight;
    out += fmt::format(
        "<rect class=\"legend\" x=\"{:.2f}\" y=\"{:.2f}\" width=\"12\" height=\"12\" "
        "fill=\"{}\"{}/>\n",
        x, y, style.fill,
        style.opacity < 1.0 ? fmt::format(" fill-opacity=\"{:.2f}\"", style.opacity) : "");
    out += fmt::format("<text x=\"{:.2f}\" y=\"{:.2f}\" font-size=\"11\">{}</text>\n", x + 17.0,
                       y + 10.0, style.label);
  }
  out += "</svg>\n";
  return out;
}

void write_timeline_svg(const std::filesystem::path& path, const Trace& trace, int n_stages,
                        const TimelineOptions& options) {
  const std::string text = timeline_svg(trace, n_stages, options);
  write_file(path, text, "timeline SVG");
}

}  // namespace conveyor
