// Profile: per-unit times measured on a machine, their least-squares fits, and the JSON form.
#include "conveyor/profile.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/check.hpp"

namespace conveyor {
namespace {

using Row = std::array<double, 3>;

// Solves min ||A c - t|| over the columns in `cols` only (the others stay 0) by the normal
// equations, columns scaled to their largest magnitude so the system is well conditioned.
// Returns nothing when the chosen columns are (numerically) dependent.
std::optional<Row> solve_columns(const std::vector<Row>& rows, const std::vector<double>& t,
                                 const std::vector<size_t>& cols) {
  const size_t k = cols.size();
  Row scale{1.0, 1.0, 1.0};
  for (size_t c : cols) {
    double m = 0.0;
    for (const Row& r : rows)
      m = std::max(m, std::abs(r[c]));
    if (m == 0.0) return std::nullopt;  // an all-zero column says nothing
    scale[c] = m;
  }
  std::vector<double> a(k * k, 0.0), b(k, 0.0);
  for (size_t i = 0; i < rows.size(); ++i) {
    for (size_t p = 0; p < k; ++p) {
      const double xp = rows[i][cols[p]] / scale[cols[p]];
      b[p] += xp * t[i];
      for (size_t q = 0; q < k; ++q)
        a[p * k + q] += xp * rows[i][cols[q]] / scale[cols[q]];
    }
  }
  // Gauss-Jordan elimination with partial pivoting.
  for (size_t col = 0; col < k; ++col) {
    size_t pivot = col;
    for (size_t r = col + 1; r < k; ++r) {
      if (std::abs(a[r * k + col]) > std::abs(a[pivot * k + col])) pivot = r;
    }
    if (std::abs(a[pivot * k + col]) < 1e-12 * static_cast<double>(rows.size())) {
      return std::nullopt;
    }
    for (size_t q = 0; q < k; ++q)
      std::swap(a[col * k + q], a[pivot * k + q]);
    std::swap(b[col], b[pivot]);
    for (size_t r = 0; r < k; ++r) {
      if (r == col) continue;
      const double f = a[r * k + col] / a[col * k + col];
      for (size_t q = 0; q < k; ++q)
        a[r * k + q] -= f * a[col * k + q];
      b[r] -= f * b[col];
    }
  }
  Row coef{0.0, 0.0, 0.0};
  for (size_t p = 0; p < k; ++p)
    coef[cols[p]] = b[p] / a[p * k + p] / scale[cols[p]];
  return coef;
}

// Non-negative least squares: min ||A c - t|| subject to c >= 0. A time has no negative part, and
// an unconstrained fit of noisy samples can trade a negative per-token cost against a large
// per-pair one and predict negative times outside the sampled range. With at most three columns
// the exact answer is found by trying every subset of free columns: the optimum is the
// unconstrained fit on its own support, with every coefficient >= 0.
Row nonnegative_least_squares(const std::vector<Row>& rows, const std::vector<double>& t,
                              size_t n_cols) {
  Row best{0.0, 0.0, 0.0};
  double best_residual = 0.0;
  for (double v : t)
    best_residual += v * v;  // all coefficients 0
  for (unsigned mask = 1; mask < (1u << n_cols); ++mask) {
    std::vector<size_t> cols;
    for (size_t c = 0; c < n_cols; ++c) {
      if (mask & (1u << c)) cols.push_back(c);
    }
    if (cols.size() > rows.size()) continue;
    const std::optional<Row> coef = solve_columns(rows, t, cols);
    if (!coef || std::any_of(coef->begin(), coef->end(), [](double c) { return c < 0.0; })) {
      continue;
    }
    double residual = 0.0;
    for (size_t i = 0; i < rows.size(); ++i) {
      double e = -t[i];
      for (size_t c = 0; c < n_cols; ++c)
        e += rows[i][c] * (*coef)[c];
      residual += e * e;
    }
    if (residual < best_residual) {
      best_residual = residual;
      best = *coef;
    }
  }
  return best;
}

TimeFit fit_samples(const std::vector<ProfileSample>& samples, UnitKind unit, Phase phase,
                    bool with_pairs) {
  std::vector<Row> rows;
  std::vector<double> t;
  for (const ProfileSample& s : samples) {
    if (s.unit != unit || s.phase != phase) continue;
    rows.push_back({1.0, static_cast<double>(s.x), with_pairs ? static_cast<double>(s.y) : 0.0});
    t.push_back(s.seconds);
  }
  if (rows.empty()) return {};
  const Row c = nonnegative_least_squares(rows, t, with_pairs ? 3 : 2);
  return TimeFit{.base_s = c[0], .per_token_s = c[1], .per_pair_s = c[2]};
}

TimeFit& mutable_fit(Profile& p, UnitKind unit, Phase phase) {
  const bool prefill = phase == Phase::kPrefill;
  switch (unit) {
    case UnitKind::kEmbedding:
      return prefill ? p.embedding_prefill : p.embedding_decode;
    case UnitKind::kDecoderLayer:
      return prefill ? p.layer_prefill : p.layer_decode;
    case UnitKind::kHead:
      break;
  }
  return prefill ? p.head_prefill : p.head_decode;
}

const char* phase_key(Phase phase) {
  return phase == Phase::kPrefill ? "prefill" : "decode";
}

nlohmann::json fit_json(const TimeFit& f) {
  return {{"base_s", f.base_s}, {"per_token_s", f.per_token_s}, {"per_pair_s", f.per_pair_s}};
}

}  // namespace

void Profile::fit() {
  embedding_prefill = fit_samples(samples, UnitKind::kEmbedding, Phase::kPrefill, false);
  layer_prefill = fit_samples(samples, UnitKind::kDecoderLayer, Phase::kPrefill, true);
  head_prefill = fit_samples(samples, UnitKind::kHead, Phase::kPrefill, false);
  embedding_decode = fit_samples(samples, UnitKind::kEmbedding, Phase::kDecode, false);
  layer_decode = fit_samples(samples, UnitKind::kDecoderLayer, Phase::kDecode, true);
  head_decode = fit_samples(samples, UnitKind::kHead, Phase::kDecode, false);
}

const TimeFit& Profile::fit_for(UnitKind unit, Phase phase) const {
  const bool prefill = phase == Phase::kPrefill;
  switch (unit) {
    case UnitKind::kEmbedding:
      return prefill ? embedding_prefill : embedding_decode;
    case UnitKind::kDecoderLayer:
      return prefill ? layer_prefill : layer_decode;
    case UnitKind::kHead:
      return prefill ? head_prefill : head_decode;
  }
  return layer_prefill;
}

std::string Profile::to_json() const {
  nlohmann::json j;
  j["format"] = "conveyor-profile";
  j["version"] = 1;
  j["device"] = device;
  j["model_shape"] = model_shape;
  j["link"] = {{"latency_s", link_latency_s}, {"s_per_byte", link_s_per_byte}};
  j["step_overhead_s"] = step_overhead_s;
  j["host_cores"] = host_cores;
  nlohmann::json fits;
  for (UnitKind unit : {UnitKind::kEmbedding, UnitKind::kDecoderLayer, UnitKind::kHead}) {
    for (Phase phase : {Phase::kPrefill, Phase::kDecode}) {
      fits[std::string(to_string(unit))][phase_key(phase)] = fit_json(fit_for(unit, phase));
    }
  }
  j["fits"] = fits;
  nlohmann::json list = nlohmann::json::array();
  for (const ProfileSample& s : samples) {
    list.push_back({{"unit", to_string(s.unit)},
                    {"phase", phase_key(s.phase)},
                    {"x", s.x},
                    {"y", s.y},
                    {"seconds", s.seconds}});
  }
  j["samples"] = list;
  return j.dump(2) + "\n";
}

Profile Profile::from_json(std::string_view text, std::string_view origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(ErrorCode::kModelFormat, "{}: not valid JSON ({}); write it with conveyor-bench --profile",
         origin, e.what());
  }
  auto need = [&](const nlohmann::json& obj, const char* key, const std::string& where) {
    if (!obj.is_object() || !obj.contains(key)) {
      fail(ErrorCode::kModelFormat, "{}: missing field \"{}\" in {}", origin, key, where);
    }
    return obj.at(key);
  };
  auto number = [&](const nlohmann::json& obj, const char* key, const std::string& where) {
    const nlohmann::json v = need(obj, key, where);
    if (!v.is_number() || !std::isfinite(v.get<double>())) {
      fail(ErrorCode::kModelFormat, "{}: field \"{}\" in {} must be a finite number", origin, key,
           where);
    }
    return v.get<double>();
  };
  if (!j.is_object() || j.value("format", std::string()) != "conveyor-profile") {
    fail(ErrorCode::kModelFormat,
         "{}: not a conveyor profile (\"format\" must be \"conveyor-profile\"); write one with "
         "conveyor-bench --profile",
         origin);
  }
  try {
    Profile p;
    p.device = j.value("device", std::string());
    p.model_shape = need(j, "model_shape", "the top level").get<std::string>();
    const nlohmann::json link = need(j, "link", "the top level");
    p.link_latency_s = number(link, "latency_s", "link");
    p.link_s_per_byte = number(link, "s_per_byte", "link");
    p.step_overhead_s =
        j.contains("step_overhead_s") ? number(j, "step_overhead_s", "top level") : 0.0;
    p.host_cores = j.contains("host_cores") ? number(j, "host_cores", "top level") : 0.0;
    const nlohmann::json fits = need(j, "fits", "the top level");
    for (UnitKind unit : {UnitKind::kEmbedding, UnitKind::kDecoderLayer, UnitKind::kHead}) {
      const std::string u(to_string(unit));
      const nlohmann::json fu = need(fits, u.c_str(), "fits");
      for (Phase phase : {Phase::kPrefill, Phase::kDecode}) {
        const std::string where = fmt::format("fits.{}.{}", u, phase_key(phase));
        const nlohmann::json f = need(fu, phase_key(phase), "fits." + u);
        TimeFit& out = mutable_fit(p, unit, phase);
        out = TimeFit{.base_s = number(f, "base_s", where),
                      .per_token_s = number(f, "per_token_s", where),
                      .per_pair_s = number(f, "per_pair_s", where)};
      }
    }
    if (j.contains("samples")) {
      for (const nlohmann::json& s : j.at("samples")) {
        ProfileSample sample;
        const std::string unit = need(s, "unit", "a sample").get<std::string>();
        if (unit == "embedding") {
          sample.unit = UnitKind::kEmbedding;
        } else if (unit == "layer") {
          sample.unit = UnitKind::kDecoderLayer;
        } else if (unit == "head") {
          sample.unit = UnitKind::kHead;
        } else {
          fail(ErrorCode::kModelFormat, "{}: sample unit \"{}\" is not embedding, layer or head",
               origin, unit);
        }
        sample.phase = need(s, "phase", "a sample").get<std::string>() == "decode"
                           ? Phase::kDecode
                           : Phase::kPrefill;
        sample.x = need(s, "x", "a sample").get<int64_t>();
        sample.y = need(s, "y", "a sample").get<int64_t>();
        sample.seconds = number(s, "seconds", "a sample");
        p.samples.push_back(sample);
      }
    }
    return p;
  } catch (const nlohmann::json::exception& e) {
    fail(ErrorCode::kModelFormat, "{}: ill-typed field ({})", origin, e.what());
  }
}

Profile Profile::load(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    fail(ErrorCode::kInvalidArgument,
         "cannot read profile {}; write one with conveyor-bench --profile FILE", path.string());
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return from_json(buffer.str(), path.string());
}

void Profile::save(const std::filesystem::path& path) const {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << to_json();
  if (!out) fail(ErrorCode::kInvalidArgument, "cannot write profile {}", path.string());
}

std::string model_shape_key(const ModelConfig& c) {
  return fmt::format("h{}-i{}-l{}-q{}-kv{}-d{}-v{}", c.hidden_size, c.intermediate_size, c.n_layers,
                     c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size);
}

}  // namespace conveyor
