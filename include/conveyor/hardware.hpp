// The hardware a pipeline runs on: DeviceSpec (rates, memory, or a measured Profile), LinkSpec
// (latency, bandwidth), their presets, and Topology — which device and link each stage has.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/profile.hpp"

namespace conveyor {

// One pipeline device. Times are a roofline: max(flops / (peak * flops_efficiency),
// bytes / (bandwidth * bandwidth_efficiency)) + unit_overhead_s, unless `profile` is set, in
// which case its fits are used (the profile must come from a model of the same shape).
struct DeviceSpec {
  std::string name = "device";
  double peak_flops = 0.0;        // FLOP/s at the compute dtype (dense)
  double memory_bandwidth = 0.0;  // bytes/s
  int64_t memory_bytes = 0;       // capacity available to one stage
  double flops_efficiency = 1.0;  // achievable fraction of peak, (0, 1]
  double bandwidth_efficiency = 1.0;
  double unit_overhead_s = 0.0;  // launch / dispatch cost per unit pass
  std::optional<Profile> profile;

  void validate() const;
};

// The link from stage s to s+1: a message of b bytes takes latency_s + b / bandwidth.
struct LinkSpec {
  std::string name = "link";
  double bandwidth = 0.0;  // bytes/s; 0 = moves a pointer (host link), no per-byte cost
  double latency_s = 0.0;

  double seconds(int64_t bytes) const;
  void validate() const;
};

// Presets: "cpu" (this 2-core machine's fp32 backend, one thread per stage), "h100" (SXM, 80 GB),
// "h100-pcie", "h200" (141 GB), "a100" (SXM, 80 GB), "a100-40gb". Throws
// conveyor::Error(kInvalidArgument) listing the presets for any other name.
DeviceSpec device_preset(std::string_view name);
std::vector<std::string> device_preset_names();
// Presets inside a node: "host" (threads in one process), "nvlink" (NVLink 4), "pcie4", "pcie5".
// Between nodes: "ib-hdr100" (100 Gb/s InfiniBand), "ib-hdr" (200 Gb/s), "ib-ndr" (400 Gb/s;
// "infiniband" is an alias), "ethernet-100g", "ethernet-25g", "ethernet-10g" (TCP sockets).
// Throws kInvalidArgument listing the presets otherwise.
LinkSpec link_preset(std::string_view name);
std::vector<std::string> link_preset_names();

// Which device each stage runs on and which link leaves it: one entry per stage (per link), or a
// single one that every stage (link) shares. No links means "host" (stages as threads).
struct Topology {
  std::vector<DeviceSpec> devices;
  std::vector<LinkSpec> links;

  // Throws conveyor::Error(kInvalidArgument) when the counts fit neither rule for `n_stages`, or
  // a device or link is invalid.
  void validate(int n_stages) const;
  const DeviceSpec& device(int stage) const;
  LinkSpec link(int stage) const;  // the link leaving `stage` (stage < n_stages - 1)
};

// A pipeline over nodes of `gpus_per_node` devices each: stage s runs on node
// s / gpus_per_node, and the link leaving stage s is `inter` when stage s + 1 is on another node,
// else `intra`. Every stage gets `device`. Throws conveyor::Error(kInvalidArgument) when n_stages
// or gpus_per_node is below 1, or the device or a link is invalid.
Topology node_topology(const DeviceSpec& device, int n_stages, int gpus_per_node,
                       const LinkSpec& intra, const LinkSpec& inter);

}  // namespace conveyor
