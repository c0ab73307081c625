// Tests of multi-node planning: the inter-node link presets, node_topology() (which link leaves
// each stage) and what the network costs a 70B pipeline over two nodes in the simulator.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "common/test_util.hpp"
#include "conveyor/cost_model.hpp"
#include "conveyor/error.hpp"
#include "conveyor/hardware.hpp"
#include "conveyor/partitioner.hpp"
#include "conveyor/simulator.hpp"

namespace conveyor {
namespace {

LinkSpec named_link(const std::string& name, double bandwidth, double latency_s) {
  LinkSpec l;
  l.name = name;
  l.bandwidth = bandwidth;
  l.latency_s = latency_s;
  return l;
}

// The message of `call`'s conveyor::Error (kInvalidArgument), or a failure when it does not
// throw one.
template <typename Call>
std::string invalid_argument_message(Call&& call) {
  try {
    call();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no conveyor::Error thrown";
  return "";
}

// The links leaving each stage, by name.
std::vector<std::string> link_names(const Topology& topology, int n_stages) {
  std::vector<std::string> names;
  for (int s = 0; s + 1 < n_stages; ++s)
    names.push_back(topology.link(s).name);
  return names;
}

TEST(NodeTopology, InterLinkExactlyAtNodeBoundaries) {
  const DeviceSpec h100 = device_preset("h100");
  const LinkSpec intra = named_link("intra", 400e9, 5e-6);
  const LinkSpec inter = named_link("inter", 45e9, 6e-6);

  // 2 x 8: only the link from stage 7 (node 0) to stage 8 (node 1) leaves the node.
  const Topology two_by_eight = node_topology(h100, 16, 8, intra, inter);
  EXPECT_NO_THROW(two_by_eight.validate(16));
  ASSERT_EQ(two_by_eight.links.size(), 15u);
  for (int s = 0; s < 15; ++s)
    EXPECT_EQ(two_by_eight.link(s).name, s == 7 ? "inter" : "intra") << "stage " << s;
  EXPECT_EQ(two_by_eight.device(15).name, "h100");

  // A last node only partly used: 10 stages on nodes of 4 cross after stages 3 and 7.
  const Topology partial = node_topology(h100, 10, 4, intra, inter);
  EXPECT_EQ(link_names(partial, 10),
            (std::vector<std::string>{"intra", "intra", "intra", "inter", "intra", "intra", "intra",
                                      "inter", "intra"}));

  // One GPU per node: every link crosses; one node holding all stages: none does.
  EXPECT_EQ(link_names(node_topology(h100, 4, 1, intra, inter), 4),
            (std::vector<std::string>{"inter", "inter", "inter"}));
  EXPECT_EQ(link_names(node_topology(h100, 4, 8, intra, inter), 4),
            (std::vector<std::string>{"intra", "intra", "intra"}));
  // One stage has no link at all.
  EXPECT_TRUE(node_topology(h100, 1, 8, intra, inter).links.empty());
}

TEST(NodeTopology, RejectsInvalidArgumentsNamingTheValue) {
  const DeviceSpec h100 = device_preset("h100");
  const LinkSpec nvlink = link_preset("nvlink");
  const LinkSpec ib = link_preset("ib-ndr");

  std::string message = invalid_argument_message([&] { node_topology(h100, 0, 8, nvlink, ib); });
  EXPECT_NE(message.find("n_stages is 0"), std::string::npos) << message;
  EXPECT_NE(message.find("at least 1"), std::string::npos) << message;

  message = invalid_argument_message([&] { node_topology(h100, 16, -2, nvlink, ib); });
  EXPECT_NE(message.find("gpus_per_node is -2"), std::string::npos) << message;
  EXPECT_NE(message.find("at least 1"), std::string::npos) << message;

  message = invalid_argument_message(
      [&] { node_topology(h100, 16, 8, nvlink, named_link("broken", -1.0, 1e-6)); });
  EXPECT_NE(message.find("\"broken\""), std::string::npos) << message;

  DeviceSpec no_rates;
  no_rates.name = "mystery";
  message = invalid_argument_message([&] { node_topology(no_rates, 16, 8, nvlink, ib); });
  EXPECT_NE(message.find("\"mystery\""), std::string::npos) << message;

  message = invalid_argument_message([] { link_preset("ib-xdr"); });
  EXPECT_NE(message.find("ib-xdr"), std::string::npos) << message;
  EXPECT_NE(message.find("ib-ndr"), std::string::npos) << message;  // lists the presets
}

TEST(LinkPresets, InterNodePresetsExistAndAreOrdered) {
  const std::vector<std::string> names = link_preset_names();
  for (const char* name :
       {"ib-hdr100", "ib-hdr", "ib-ndr", "ethernet-100g", "ethernet-25g", "ethernet-10g"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), name), names.end()) << name;
    const LinkSpec l = link_preset(name);
    EXPECT_EQ(l.name, name);
    EXPECT_NO_THROW(l.validate());
    EXPECT_GT(l.bandwidth, 0.0) << name;
  }
  const auto bw = [](const char* name) { return link_preset(name).bandwidth; };
  const auto latency = [](const char* name) { return link_preset(name).latency_s; };
  // Faster generations of InfiniBand, roughly doubling; none beats NVLink.
  EXPECT_GT(bw("ib-ndr"), 1.5 * bw("ib-hdr"));
  EXPECT_GT(bw("ib-hdr"), 1.5 * bw("ib-hdr100"));
  EXPECT_LT(bw("ib-ndr"), bw("nvlink"));
  // Effective bandwidth below the line rate (bits / 8), but not far below.
  EXPECT_LT(bw("ib-ndr"), 400e9 / 8);
  EXPECT_GT(bw("ib-ndr"), 0.8 * 400e9 / 8);
  EXPECT_LT(bw("ethernet-10g"), 10e9 / 8);
  EXPECT_GT(bw("ethernet-10g"), 0.8 * 10e9 / 8);
  // Ethernet: slower than InfiniBand of the same or a lower rate, and TCP's latency is higher.
  EXPECT_LT(bw("ethernet-100g"), bw("ib-hdr100"));
  EXPECT_LT(bw("ethernet-25g"), bw("ethernet-100g"));
  EXPECT_LT(bw("ethernet-10g"), bw("ethernet-25g"));
  for (const char* ib : {"ib-hdr100", "ib-hdr", "ib-ndr"}) {
    EXPECT_LT(latency(ib), 10e-6) << ib;
    for (const char* eth : {"ethernet-100g", "ethernet-25g", "ethernet-10g"})
      EXPECT_GT(latency(eth), latency(ib)) << eth << " vs " << ib;
  }
  // A one-token decode message (16 KiB of 70B bf16 activations) and a 2048-token prefill message.
  for (const int64_t bytes : {int64_t{16} << 10, int64_t{32} << 20}) {
    EXPECT_LT(link_preset("ib-ndr").seconds(bytes), link_preset("ib-hdr").seconds(bytes));
    EXPECT_LT(link_preset("ib-hdr100").seconds(bytes), link_preset("ethernet-100g").seconds(bytes));
  }
  // The old name still works and means NDR.
  const LinkSpec alias = link_preset("infiniband");
  EXPECT_EQ(alias.name, "ib-ndr");
  EXPECT_EQ(alias.bandwidth, bw("ib-ndr"));
  EXPECT_EQ(alias.latency_s, latency("ib-ndr"));
}

// Llama 3 70B over two nodes of eight H100s: prefill sends 32 MiB per sequence between stages 7
// and 8, which 10 Gb/s Ethernet takes tens of ms for and NDR InfiniBand under one.
TEST(NodeTopology, SeventyBOverTwoNodesIsSlowerOnTenGigabitEthernet) {
  const CostModel model(ModelConfig::load(std::filesystem::path(CONVEYOR_SOURCE_DIR) / "configs" /
                                          "llama-3-70b.json"));
  const DeviceSpec h100 = device_preset("h100");
  const LinkSpec nvlink = link_preset("nvlink");
  constexpr int kStages = 16;
  constexpr int32_t kSeqs = 8;
  constexpr int64_t kPrompt = 2048;

  auto predict = [&](const std::string& inter) {
    PartitionerOptions o;
    o.n_stages = kStages;
    o.topology = node_topology(h100, kStages, 8, nvlink, link_preset(inter));
    o.prefill = Workload::prefill({.tokens_per_seq = kPrompt});
    o.decode = Workload::decode(1, kPrompt + 16);
    o.max_context = kPrompt + 16;
    o.max_batch = kSeqs;
    const PartitionPlan plan = balanced_partition(model, o);
    const SimulatorOptions sim{.topology = o.topology};
    const GenerationShape shape{
        .n_seqs = kSeqs,
        .prompt_tokens = kPrompt,
        .new_tokens = 16,
        .policy = {.prefill_micro_batches = kStages, .decode_mode = DecodeMode::kStrict}};
    return simulate_generation(shape, plan.partition, model, sim);
  };
  const SimulatedGeneration ib = predict("ib-ndr");
  const SimulatedGeneration ethernet = predict("ethernet-10g");
  ASSERT_GT(ib.prefill_seconds, 0.0);
  ASSERT_GT(ib.decode_seconds, 0.0);
  const double prefill_tokens_per_s_ib = kSeqs * kPrompt / ib.prefill_seconds;
  const double prefill_tokens_per_s_eth = kSeqs * kPrompt / ethernet.prefill_seconds;
  // At least one 32 MiB message per sequence at ~1.2 GB/s (~28 ms) enters the critical path.
  EXPECT_LT(prefill_tokens_per_s_eth, prefill_tokens_per_s_ib);
  EXPECT_GT(ethernet.prefill_seconds - ib.prefill_seconds, 0.02)
      << "ib " << ib.prefill_seconds << " s, ethernet " << ethernet.prefill_seconds << " s";
  // Decode messages are small: Ethernet costs its latency per step, so decode is not faster.
  EXPECT_GE(ethernet.decode_seconds, ib.decode_seconds);
}

}  // namespace
}  // namespace conveyor
