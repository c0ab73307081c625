// CostModel: per-unit FLOPs and bytes, roofline and profile times, device and link presets,
// and the JSON form of a measured Profile.
#include "conveyor/cost_model.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/check.hpp"

namespace conveyor {

namespace {

int64_t bytes_of(DType dtype) {
  return static_cast<int64_t>(dtype_size(dtype));
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& name : names) {
    if (!out.empty()) out += ", ";
    out += name;
  }
  return out;
}

// Solves the least-squares problem min ||A c - t|| for up to 3 columns by the normal equations;
// a column that is (numerically) dependent on the earlier ones is dropped (its coefficient 0).
std::array<double, 3> least_squares(const std::vector<std::array<double, 3>>& rows,
                                    const std::vector<double>& t, int n_cols) {
  std::array<double, 3> coef{0.0, 0.0, 0.0};
  // Scale columns so the normal matrix is well conditioned.
  std::array<double, 3> scale{1.0, 1.0, 1.0};
  for (int c = 0; c < n_cols; ++c) {
    double m = 0.0;
    for (const auto& r : rows)
      m = std::max(m, std::abs(r[static_cast<size_t>(c)]));
    scale[static_cast<size_t>(c)] = m > 0.0 ? m : 1.0;
  }
  std::vector<int> used;
  for (int c = 0; c < n_cols; ++c) {
    double m = 0.0;
    for (const auto& r : rows)
      m = std::max(m, std::abs(r[static_cast<size_t>(c)]));
    if (m > 0.0) used.push_back(c);
  }
  // Try with all non-zero columns, then drop the last ones until the system is solvable.
  while (!used.empty()) {
    const size_t k = used.size();
    std::vector<double> a(k * k, 0.0), b(k, 0.0);
    for (size_t i = 0; i < rows.size(); ++i) {
      for (size_t p = 0; p < k; ++p) {
        const double xp =
            rows[i][static_cast<size_t>(used[p])] / scale[static_cast<size_t>(used[p])];
        b[p] += xp * t[i];
        for (size_t q = 0; q < k; ++q) {
          a[p * k + q] +=
              xp * rows[i][static_cast<size_t>(used[q])] / scale[static_cast<size_t>(used[q])];
        }
      }
    }
    // Gaussian elimination with partial pivoting.
    bool singular = false;
    for (size_t col = 0; col < k && !singular; ++col) {
      size_t pivot = col;
      for (size_t r = col + 1; r < k; ++r) {
        if (std::abs(a[r * k + col]) > std::abs(a[pivot * k + col])) pivot = r;
      }
      if (std::abs(a[pivot * k + col]) < 1e-12 * static_cast<double>(rows.size())) {
        singular = true;
        break;
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
    if (!singular && rows.size() >= k) {
      for (size_t p = 0; p < k; ++p) {
        coef[static_cast<size_t>(used[p])] =
            b[p] / a[p * k + p] / scale[static_cast<size_t>(used[p])];
      }
      return coef;
    }
    used.pop_back();
  }
  return coef;
}

TimeFit fit_samples(const std::vector<ProfileSample>& samples, UnitKind unit, Phase phase,
                    bool with_pairs) {
  std::vector<std::array<double, 3>> rows;
  std::vector<double> t;
  for (const ProfileSample& s : samples) {
    if (s.unit != unit || s.phase != phase) continue;
    rows.push_back({1.0, static_cast<double>(s.x), with_pairs ? static_cast<double>(s.y) : 0.0});
    t.push_back(s.seconds);
  }
  if (rows.empty()) return {};
  const auto c = least_squares(rows, t, 3);
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

std::string_view to_string(UnitKind kind) {
  switch (kind) {
    case UnitKind::kEmbedding:
      return "embedding";
    case UnitKind::kDecoderLayer:
      return "layer";
    case UnitKind::kHead:
      return "head";
  }
  return "?";
}

// ---- workloads -------------------------------------------------------------------------------

Workload Workload::prefill(int64_t tokens_per_seq, int64_t n_seqs, int64_t past, bool all_logits) {
  if (tokens_per_seq < 1 || n_seqs < 1 || past < 0) {
    fail(ErrorCode::kInvalidArgument,
         "prefill workload needs tokens_per_seq >= 1, n_seqs >= 1 and past >= 0; got {}, {}, {}",
         tokens_per_seq, n_seqs, past);
  }
  const int64_t t = tokens_per_seq;
  return Workload{.phase = Phase::kPrefill,
                  .n_tokens = t * n_seqs,
                  .attention_pairs = n_seqs * (t * past + t * (t + 1) / 2),
                  .kv_tokens_read = n_seqs * (past + t),
                  .n_head_rows = all_logits ? t * n_seqs : n_seqs};
}

Workload Workload::decode(int64_t n_seqs, int64_t context) {
  if (n_seqs < 1 || context < 1) {
    fail(ErrorCode::kInvalidArgument,
         "decode workload needs n_seqs >= 1 and context >= 1; got {} and {}", n_seqs, context);
  }
  return Workload{.phase = Phase::kDecode,
                  .n_tokens = n_seqs,
                  .attention_pairs = n_seqs * context,
                  .kv_tokens_read = n_seqs * context,
                  .n_head_rows = n_seqs};
}

Workload Workload::of(const MicroBatch& mb, Phase phase, bool all_logits) {
  Workload w;
  w.phase = phase;
  for (const SeqChunk& c : mb.chunks) {
    const int64_t t = c.n_tokens();
    w.n_tokens += t;
    // Row p attends to positions [0, p].
    w.attention_pairs += t * c.begin + t * (t + 1) / 2;
    w.kv_tokens_read += c.end;
    if (all_logits) {
      w.n_head_rows += t;
    } else if (c.sample) {
      w.n_head_rows += 1;
    }
  }
  return w;
}

// ---- profile ---------------------------------------------------------------------------------

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

// ---- devices and links -----------------------------------------------------------------------

void DeviceSpec::validate() const {
  if (profile) return;  // times come from the profile; rates are only informative
  if (!(peak_flops > 0.0) || !(memory_bandwidth > 0.0)) {
    fail(ErrorCode::kInvalidArgument,
         "device \"{}\" has peak_flops {} and memory_bandwidth {}; both must be > 0 (or give it "
         "a measured profile)",
         name, peak_flops, memory_bandwidth);
  }
  if (!(flops_efficiency > 0.0 && flops_efficiency <= 1.0) ||
      !(bandwidth_efficiency > 0.0 && bandwidth_efficiency <= 1.0)) {
    fail(ErrorCode::kInvalidArgument,
         "device \"{}\": efficiencies must lie in (0, 1]; got flops {} and bandwidth {}", name,
         flops_efficiency, bandwidth_efficiency);
  }
  if (memory_bytes < 0 || unit_overhead_s < 0.0) {
    fail(ErrorCode::kInvalidArgument,
         "device \"{}\": memory_bytes ({}) and unit_overhead_s ({}) must be >= 0", name,
         memory_bytes, unit_overhead_s);
  }
}

double LinkSpec::seconds(int64_t bytes) const {
  return latency_s + (bandwidth > 0.0 ? static_cast<double>(bytes) / bandwidth : 0.0);
}

void LinkSpec::validate() const {
  if (!(bandwidth >= 0.0) || !(latency_s >= 0.0)) {
    fail(ErrorCode::kInvalidArgument,
         "link \"{}\" has bandwidth {} and latency {} s; both must be >= 0", name, bandwidth,
         latency_s);
  }
}

namespace {

// Peak dense rates from the vendors' data sheets (bf16 tensor cores on GPUs); efficiencies are
// typical achieved fractions for large GEMMs and streaming reads.
struct DevicePreset {
  const char* name;
  double peak_flops;
  double memory_bandwidth;
  int64_t memory_bytes;
  double flops_efficiency;
  double bandwidth_efficiency;
  double unit_overhead_s;
};
constexpr int64_t kGiB = int64_t{1} << 30;
constexpr DevicePreset kDevicePresets[] = {
    // One core of this machine (AVX2 FMA fp32, ~2.5 GHz) per stage; use a profile for accuracy.
    {"cpu", 80e9, 20e9, 16 * kGiB, 0.5, 0.7, 20e-6},
    {"h100", 989e12, 3.35e12, 80 * kGiB, 0.6, 0.85, 5e-6},
    {"h100-pcie", 756e12, 2.0e12, 80 * kGiB, 0.6, 0.85, 5e-6},
    {"h200", 989e12, 4.8e12, 141'000'000'000, 0.6, 0.85, 5e-6},
    {"a100", 312e12, 2.039e12, 80 * kGiB, 0.65, 0.85, 6e-6},
    {"a100-40gb", 312e12, 1.555e12, 40 * kGiB, 0.65, 0.85, 6e-6},
};

struct LinkPreset {
  const char* name;
  double bandwidth;
  double latency_s;
};
constexpr LinkPreset kLinkPresets[] = {
    {"host", 0.0, 20e-6},     // the host link moves the buffer; cost is waking the peer
    {"nvlink", 400e9, 5e-6},  // NVLink 4: 450 GB/s per direction, ~90 % achieved
    {"pcie4", 25e9, 10e-6},  {"pcie5", 50e9, 10e-6}, {"infiniband", 45e9, 15e-6},  // NDR 400 Gb/s
};

}  // namespace

std::vector<std::string> device_preset_names() {
  std::vector<std::string> names;
  for (const DevicePreset& p : kDevicePresets)
    names.emplace_back(p.name);
  return names;
}

DeviceSpec device_preset(std::string_view name) {
  for (const DevicePreset& p : kDevicePresets) {
    if (name != p.name) continue;
    DeviceSpec d;
    d.name = p.name;
    d.peak_flops = p.peak_flops;
    d.memory_bandwidth = p.memory_bandwidth;
    d.memory_bytes = p.memory_bytes;
    d.flops_efficiency = p.flops_efficiency;
    d.bandwidth_efficiency = p.bandwidth_efficiency;
    d.unit_overhead_s = p.unit_overhead_s;
    return d;
  }
  fail(ErrorCode::kInvalidArgument, "unknown device preset \"{}\"; presets are {}", name,
       join(device_preset_names()));
}

std::vector<std::string> link_preset_names() {
  std::vector<std::string> names;
  for (const LinkPreset& p : kLinkPresets)
    names.emplace_back(p.name);
  return names;
}

LinkSpec link_preset(std::string_view name) {
  for (const LinkPreset& p : kLinkPresets) {
    if (name != p.name) continue;
    LinkSpec l;
    l.name = p.name;
    l.bandwidth = p.bandwidth;
    l.latency_s = p.latency_s;
    return l;
  }
  fail(ErrorCode::kInvalidArgument, "unknown link preset \"{}\"; presets are {}", name,
       join(link_preset_names()));
}

// ---- cost model ------------------------------------------------------------------------------

CostModel::CostModel(ModelConfig config, const CostModelOptions& options)
    : config_(std::move(config)), options_(options) {
  config_.validate();
}

int64_t CostModel::layer_weight_bytes() const {
  return config_.layer_params() * bytes_of(options_.weight_dtype);
}

int64_t CostModel::embedding_weight_bytes() const {
  return config_.vocab_size * config_.hidden_size * bytes_of(options_.weight_dtype);
}

int64_t CostModel::head_weight_bytes() const {
  return (config_.vocab_size * config_.hidden_size + config_.hidden_size) *
         bytes_of(options_.weight_dtype);
}

int64_t CostModel::kv_bytes_per_token_per_layer() const {
  return 2 * config_.kv_dim() * bytes_of(options_.kv_dtype);
}

int64_t CostModel::activation_bytes(const Workload& work) const {
  return work.n_tokens * config_.hidden_size * bytes_of(options_.activation_dtype);
}

UnitCost CostModel::cost(UnitKind unit, const Workload& work) const {
  const ModelConfig& c = config_;
  const double act = static_cast<double>(bytes_of(options_.activation_dtype));
  const double n = static_cast<double>(work.n_tokens);
  UnitCost out;
  out.activation_bytes = activation_bytes(work);
  switch (unit) {
    case UnitKind::kEmbedding:
      out.weight_bytes = embedding_weight_bytes();
      out.flops = 0.0;
      out.bytes_moved = n * static_cast<double>(c.hidden_size) *
                        (static_cast<double>(bytes_of(options_.weight_dtype)) + act);
      break;
    case UnitKind::kDecoderLayer: {
      const double matmul_params =
          static_cast<double>(c.hidden_size * (c.q_dim() + 2 * c.kv_dim()) +
                              c.q_dim() * c.hidden_size + 3 * c.hidden_size * c.intermediate_size);
      out.weight_bytes = layer_weight_bytes();
      out.kv_bytes_per_token = kv_bytes_per_token_per_layer();
      out.flops = 2.0 * n * matmul_params +
                  4.0 * static_cast<double>(c.q_dim()) * static_cast<double>(work.attention_pairs);
      const double rows = n * static_cast<double>(2 * c.hidden_size + c.q_dim() + 2 * c.kv_dim() +
                                                  3 * c.intermediate_size);
      out.bytes_moved = static_cast<double>(out.weight_bytes) +
                        static_cast<double>(work.kv_tokens_read + work.n_tokens) *
                            static_cast<double>(out.kv_bytes_per_token) +
                        rows * act;
      break;
    }
    case UnitKind::kHead: {
      const double rows = static_cast<double>(work.n_head_rows);
      out.weight_bytes = head_weight_bytes();
      out.flops = 2.0 * rows * static_cast<double>(c.hidden_size * c.vocab_size) +
                  4.0 * rows * static_cast<double>(c.hidden_size);
      out.bytes_moved = static_cast<double>(out.weight_bytes) +
                        rows * static_cast<double>(c.vocab_size) * 4.0 +
                        rows * static_cast<double>(c.hidden_size) * act;
      break;
    }
  }
  return out;
}

void CostModel::check_profile(const Profile& profile) const {
  const std::string key = model_shape_key(config_);
  // The layer count may differ (one layer's time does not depend on how many there are).
  auto strip_layers = [](const std::string& k) {
    const size_t l = k.find("-l");
    const size_t next = k.find('-', l + 1);
    return l == std::string::npos || next == std::string::npos ? k
                                                               : k.substr(0, l) + k.substr(next);
  };
  if (strip_layers(profile.model_shape) != strip_layers(key)) {
    fail(ErrorCode::kInvalidArgument,
         "profile was measured on a model of shape {} but this model is {}; profile this model "
         "with conveyor-bench --profile, or use device rates",
         profile.model_shape, key);
  }
}

double CostModel::seconds(UnitKind unit, const Workload& work, const DeviceSpec& device) const {
  if (device.profile) {
    const TimeFit& f = device.profile->fit_for(unit, work.phase);
    double t = 0.0;
    switch (unit) {
      case UnitKind::kEmbedding:
        t = f.at(static_cast<double>(work.n_tokens));
        break;
      case UnitKind::kDecoderLayer:
        t = f.at(static_cast<double>(work.n_tokens), static_cast<double>(work.attention_pairs));
        break;
      case UnitKind::kHead:
        if (work.n_head_rows == 0) return 0.0;
        t = f.at(static_cast<double>(work.n_head_rows));
        break;
    }
    return std::max(t, 0.0);
  }
  if (unit == UnitKind::kHead && work.n_head_rows == 0) return 0.0;
  const UnitCost c = cost(unit, work);
  const double compute = c.flops / (device.peak_flops * device.flops_efficiency);
  const double memory = c.bytes_moved / (device.memory_bandwidth * device.bandwidth_efficiency);
  return std::max(compute, memory) + device.unit_overhead_s;
}

double CostModel::stage_seconds(int64_t n_layers, bool with_embedding, bool with_head,
                                const Workload& work, const DeviceSpec& device) const {
  double t = static_cast<double>(n_layers) * seconds(UnitKind::kDecoderLayer, work, device);
  if (with_embedding) t += seconds(UnitKind::kEmbedding, work, device);
  if (with_head) t += seconds(UnitKind::kHead, work, device);
  return t;
}

double CostModel::send_seconds(const Workload& work, const LinkSpec& link,
                               const DeviceSpec& device) const {
  const int64_t bytes = activation_bytes(work);
  if (device.profile) {
    return device.profile->link_latency_s +
           device.profile->link_s_per_byte * static_cast<double>(bytes);
  }
  return link.seconds(bytes);
}

}  // namespace conveyor
