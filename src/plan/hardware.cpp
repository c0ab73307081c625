// DeviceSpec, LinkSpec and their presets (vendors' data sheets), and Topology: which device and
// link each stage uses.
#include "conveyor/hardware.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <utility>

#include "core/check.hpp"

namespace conveyor {

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
// Bandwidth is what one direction achieves for large messages; latency is one small message,
// GPU to GPU, through the communication library.
// - InfiniBand line rates (HDR100, HDR, NDR) are 12.5, 25 and 50 GB/s per direction; perftest's
//   ib_write_bw and nccl-tests reach about 90-92 % of them. The verbs' one-way latency is 1-2 us
//   (OSU osu_latency); NCCL's proxy and GPUDirect RDMA bring a GPU-to-GPU send to a few us.
// - Ethernet goes through the kernel's TCP stack (NCCL's socket transport): iperf3 shows ~94 %
//   of line rate on 10 and 25 GbE and ~80 % on 100 GbE with several streams; netperf TCP_RR
//   round trips of 30-60 us give one-way latencies of 15-30 us.
constexpr LinkPreset kLinkPresets[] = {
    {"host", 0.0, 20e-6},     // the host link moves the buffer; cost is waking the peer
    {"nvlink", 400e9, 5e-6},  // NVLink 4: 450 GB/s per direction, ~90 % achieved
    {"pcie4", 25e9, 10e-6},
    {"pcie5", 50e9, 10e-6},
    {"ib-hdr100", 11.5e9, 6e-6},  // 100 Gb/s
    {"ib-hdr", 23e9, 6e-6},       // 200 Gb/s
    {"ib-ndr", 45e9, 6e-6},       // 400 Gb/s
    {"ethernet-100g", 10e9, 20e-6},
    {"ethernet-25g", 2.9e9, 25e-6},
    {"ethernet-10g", 1.17e9, 30e-6},
};
// Older names that stay accepted: the name on the left gives the preset on the right.
constexpr std::pair<std::string_view, std::string_view> kLinkAliases[] = {
    {"infiniband", "ib-ndr"},
};

template <typename Preset, size_t N>
std::vector<std::string> preset_names(const Preset (&table)[N]) {
  std::vector<std::string> names;
  for (const Preset& p : table)
    names.emplace_back(p.name);
  return names;
}

template <typename Preset, size_t N>
const Preset& find_preset(const Preset (&table)[N], std::string_view name, std::string_view kind) {
  for (const Preset& p : table) {
    if (name == p.name) return p;
  }
  fail(ErrorCode::kInvalidArgument, "unknown {} preset \"{}\"; presets are {}", kind, name,
       fmt::join(preset_names(table), ", "));
}

}  // namespace

std::vector<std::string> device_preset_names() {
  return preset_names(kDevicePresets);
}

DeviceSpec device_preset(std::string_view name) {
  const DevicePreset& p = find_preset(kDevicePresets, name, "device");
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

std::vector<std::string> link_preset_names() {
  return preset_names(kLinkPresets);
}

LinkSpec link_preset(std::string_view name) {
  for (const auto& [alias, target] : kLinkAliases) {
    if (name == alias) name = target;
  }
  const LinkPreset& p = find_preset(kLinkPresets, name, "link");
  LinkSpec l;
  l.name = p.name;
  l.bandwidth = p.bandwidth;
  l.latency_s = p.latency_s;
  return l;
}

// ---- topology ------------------------------------------------------------------------------

void Topology::validate(int n_stages) const {
  if (devices.size() != 1 && devices.size() != static_cast<size_t>(n_stages)) {
    fail(ErrorCode::kInvalidArgument,
         "{} devices for {} stages; give one device per stage or a single one for all",
         devices.size(), n_stages);
  }
  for (const DeviceSpec& d : devices)
    d.validate();
  if (!links.empty() && links.size() != 1 && links.size() != static_cast<size_t>(n_stages - 1)) {
    fail(ErrorCode::kInvalidArgument,
         "{} links for {} stages; give n_stages - 1 = {} links (one per boundary), a single one "
         "for all, or none (host links)",
         links.size(), n_stages, n_stages - 1);
  }
  for (const LinkSpec& l : links)
    l.validate();
}

const DeviceSpec& Topology::device(int stage) const {
  CONVEYOR_ASSERT(!devices.empty());
  return devices.size() == 1 ? devices.front() : devices.at(static_cast<size_t>(stage));
}

LinkSpec Topology::link(int stage) const {
  if (links.empty()) return link_preset("host");
  return links.size() == 1 ? links.front() : links.at(static_cast<size_t>(stage));
}

Topology node_topology(const DeviceSpec& device, int n_stages, int gpus_per_node,
                       const LinkSpec& intra, const LinkSpec& inter) {
  if (n_stages < 1) {
    fail(ErrorCode::kInvalidArgument,
         "node_topology: n_stages is {} but must be at least 1; give one stage per device",
         n_stages);
  }
  if (gpus_per_node < 1) {
    fail(ErrorCode::kInvalidArgument,
         "node_topology: gpus_per_node is {} but must be at least 1; give the devices each node "
         "holds (e.g. 8)",
         gpus_per_node);
  }
  device.validate();
  intra.validate();
  inter.validate();
  Topology topology;
  topology.devices = {device};
  for (int stage = 0; stage + 1 < n_stages; ++stage) {
    const bool crosses = (stage + 1) / gpus_per_node != stage / gpus_per_node;
    topology.links.push_back(crosses ? inter : intra);
  }
  return topology;
}

}  // namespace conveyor
