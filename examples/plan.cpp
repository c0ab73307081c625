// conveyor-plan: size a pipeline without weights — a config.json plus devices and a link type (or
// nodes of GPUs and the network between them) give the partition, memory per stage and simulated
// prefill/decode times for S = 1..16 and M sweeps.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include "cli_errors.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "conveyor/cost_model.hpp"
#include "conveyor/error.hpp"
#include "conveyor/observe.hpp"
#include "conveyor/partitioner.hpp"
#include "conveyor/schedule.hpp"
#include "conveyor/simulator.hpp"
#include "core/check.hpp"
#include "model/make_model.hpp"

namespace {

using namespace conveyor;

struct Args {
  std::string config;
  std::string preset;
  std::string devices = "h100";
  std::string link = "nvlink";  // between stages; inside a node with --nodes
  std::string nodes;            // "NxG": N nodes of G devices, stage s on node s / G
  std::string inter_node_link = "ib-ndr";
  std::string profile;
  std::string dtype = "bf16";
  int stages = 4;
  int max_stages = 16;
  bool stages_given = false;  // on the command line (else --nodes sets them)
  bool max_stages_given = false;
  bool inter_node_link_given = false;
  std::string partition;  // explicit: even, counts or layout
  std::string objective = "decode";
  double prefill_weight = 0.5;
  int32_t batch = 8;
  int64_t prompt_tokens = 2048;
  int64_t new_tokens = 128;
  int64_t max_context = 0;
  std::vector<int> microbatches = {1, 2, 4, 8, 16};
  std::string chunking = "auto";
  std::string decode_mode = "strict";  // of the timeline; the sweep shows both modes
  std::string json_out;
  std::string timeline_out;
};

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  size_t begin = 0;
  for (;;) {
    const size_t end = text.find(',', begin);
    out.push_back(text.substr(begin, end == std::string::npos ? end : end - begin));
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  return out;
}

// Devices for S stages: a single name repeats; a list must have S entries (or S = 1).
std::vector<DeviceSpec> devices_for(const std::vector<DeviceSpec>& listed, int n_stages) {
  if (listed.size() == 1) return {listed.front()};
  if (static_cast<int>(listed.size()) < n_stages) return {};
  return std::vector<DeviceSpec>(listed.begin(), listed.begin() + n_stages);
}

std::string ms(double s) {
  return fmt::format("{:.2f}", s * 1e3);
}

// --nodes NxG: n_nodes nodes of gpus_per_node devices each.
struct NodeLayout {
  int n_nodes = 0;
  int gpus_per_node = 0;

  int node_of(int stage) const { return stage / gpus_per_node; }
};

NodeLayout parse_nodes(const std::string& text) {
  NodeLayout layout;
  char x = 0;
  char rest = 0;
  if (std::sscanf(text.c_str(), "%d%c%d%c", &layout.n_nodes, &x, &layout.gpus_per_node, &rest) !=
          3 ||
      (x != 'x' && x != 'X')) {
    fail(ErrorCode::kInvalidArgument,
         "--nodes \"{}\" is not NODESxGPUS; write e.g. 2x8 for two nodes of eight GPUs", text);
  }
  if (layout.n_nodes < 1 || layout.gpus_per_node < 1) {
    fail(ErrorCode::kInvalidArgument,
         "--nodes {} has {} nodes of {} GPUs; both must be at least 1 (e.g. 2x8)", text,
         layout.n_nodes, layout.gpus_per_node);
  }
  return layout;
}

// Stages a..b and the decoder layers they hold, e.g. "stages 0-7 (layers 0-39 + embedding)".
std::string describe_stages(const Partition& partition, int first, int last) {
  const int64_t first_layer = partition.range(first).first;
  const int64_t last_layer = partition.range(last - 1).last - 1;
  return fmt::format("stages {}-{} (layers {}-{}{}{})", first, last - 1, first_layer, last_layer,
                     partition.has_embedding(first) ? " + embedding" : "",
                     partition.has_head(last - 1) ? " + head" : "");
}

// Which node holds which stages and layers under `partition`.
std::string describe_nodes(const NodeLayout& layout, const Partition& partition) {
  std::string out;
  const int n_stages = partition.n_stages();
  for (int first = 0; first < n_stages; first += layout.gpus_per_node) {
    const int last = std::min(first + layout.gpus_per_node, n_stages);
    out += fmt::format("  node {}: {}\n", layout.node_of(first),
                       describe_stages(partition, first, last));
  }
  return out;
}

// The engine's plans for the batch: prefill with about m micro-batches (sequence groups while
// m <= batch; automatic chunking beyond), decode strict or in cohorts.
GenerationShape shape_for(const Args& args, int prefill_m, DecodeMode mode, int64_t new_tokens) {
  return GenerationShape{.n_seqs = args.batch,
                         .prompt_tokens = args.prompt_tokens,
                         .new_tokens = new_tokens,
                         .policy = {.prefill_micro_batches = prefill_m,
                                    .chunking = Chunking::parse(args.chunking),
                                    .decode_mode = mode}};
}

// A simulated phase of the whole batch: its micro-batches, time and token rate.
struct Prediction {
  int micro_batches = 0;
  double seconds = 0.0;
  double tokens_per_s = 0.0;
};

// The prefill of the whole batch with about m micro-batches.

Prediction predict_prefill(const Args& args, int m, const Partition& partition,
                           const CostModel& model, const SimulatorOptions& sim) {
  const auto gen =
      simulate_generation(shape_for(args, m, DecodeMode::kStrict, 1), partition, model, sim);
  return {gen.prefill_micro_batches, gen.prefill_seconds,
          static_cast<double>(args.batch * args.prompt_tokens) / gen.prefill_seconds};
}

// Decode tokens per second of the whole batch, strict or with one cohort per stage.

Prediction predict_decode(const Args& args, DecodeMode mode, const Partition& partition,
                          const CostModel& model, const SimulatorOptions& sim) {
  const auto gen = simulate_generation(shape_for(args, partition.n_stages(), mode, args.new_tokens),
                                       partition, model, sim);
  const double tokens = static_cast<double>(args.batch) *
                        static_cast<double>(std::max<int64_t>(args.new_tokens - 1, 0));
  return {gen.decode_micro_batches, gen.decode_seconds,
          gen.decode_seconds > 0 ? tokens / gen.decode_seconds : 0.0};
}

nlohmann::json to_json(const Prediction& p) {
  return {
      {"micro_batches", p.micro_batches}, {"seconds", p.seconds}, {"tokens_per_s", p.tokens_per_s}};
}

int run(Args args) {
  if (args.config.empty() == args.preset.empty()) {
    fail(ErrorCode::kInvalidArgument, "give exactly one of --config FILE and --preset NAME");
  }
  const ModelConfig config =
      args.config.empty() ? preset_config(args.preset) : ModelConfig::load(args.config);
  DType dtype = DType::kBF16;
  if (!parse_dtype(args.dtype, dtype)) {
    fail(ErrorCode::kInvalidArgument, "--dtype {} is not f32, f16 or bf16", args.dtype);
  }
  const CostModel model(config,
                        {.weight_dtype = dtype, .kv_dtype = dtype, .activation_dtype = dtype});
  std::vector<DeviceSpec> listed;
  for (const std::string& name : split_list(args.devices))
    listed.push_back(device_preset(name));
  if (!args.profile.empty()) {
    const Profile profile = Profile::load(args.profile);
    model.check_profile(profile);
    for (DeviceSpec& d : listed)
      d.profile = profile;
  }
  const LinkSpec link = link_preset(args.link);
  std::optional<NodeLayout> nodes;
  std::optional<LinkSpec> inter_link;
  if (!args.nodes.empty()) {
    nodes = parse_nodes(args.nodes);
    inter_link = link_preset(args.inter_node_link);
    const int n_gpus = nodes->n_nodes * nodes->gpus_per_node;
    if (!args.stages_given) args.stages = n_gpus;
    if (args.stages < 1) {
      fail(ErrorCode::kInvalidArgument, "--stages is {} but must be at least 1", args.stages);
    }
    if (args.stages > n_gpus) {
      fail(ErrorCode::kInvalidArgument,
           "--stages {} needs more GPUs than --nodes {} holds ({}); raise --nodes or lower "
           "--stages",
           args.stages, args.nodes, n_gpus);
    }
    if (args.stages <= (nodes->n_nodes - 1) * nodes->gpus_per_node) {
      fail(ErrorCode::kInvalidArgument,
           "--stages {} leaves node {} of --nodes {} without a stage (stage s runs on node s / "
           "{}); use --nodes {}x{} or raise --stages",
           args.stages, nodes->n_nodes - 1, args.nodes, nodes->gpus_per_node,
           nodes->node_of(args.stages - 1) + 1, nodes->gpus_per_node);
    }
    if (!args.max_stages_given) args.max_stages = n_gpus;
    if (!args.profile.empty()) {
      fail(ErrorCode::kInvalidArgument,
           "--profile holds the links of the machine it was measured on, which would replace "
           "the inter-node link; drop --profile or --nodes");
    }
  } else if (args.inter_node_link_given) {
    fail(ErrorCode::kInvalidArgument,
         "--inter-node-link {} needs --nodes (e.g. --nodes 2x8); without it every stage uses "
         "--link",
         args.inter_node_link);
  }
  const int64_t max_context =
      args.max_context > 0 ? args.max_context : args.prompt_tokens + args.new_tokens;

  auto options_for = [&](int n_stages) {
    PartitionerOptions o;
    o.n_stages = n_stages;
    if (nodes) {
      o.topology = node_topology(listed.front(), n_stages, nodes->gpus_per_node, link, *inter_link);
      if (listed.size() > 1) o.topology.devices = devices_for(listed, n_stages);
    } else {
      o.topology.devices = devices_for(listed, n_stages);
      o.topology.links = {link};
    }
    o.objective = parse_objective(args.objective);
    o.prefill_weight = args.prefill_weight;
    o.prefill = Workload::prefill({.tokens_per_seq = args.prompt_tokens});
    o.decode =
        Workload::decode(std::max<int32_t>(1, args.batch / std::max(1, n_stages)), max_context);
    o.max_context = max_context;
    o.max_batch = args.batch;
    return o;
  };

  fmt::print(
      "model {}: {} layers, hidden {}, intermediate {}, heads {}/{}, vocab {}, {:.2f}B params "
      "({} weights)\n",
      args.config.empty() ? args.preset : args.config, config.n_layers, config.hidden_size,
      config.intermediate_size, config.n_heads, config.n_kv_heads, config.vocab_size,
      static_cast<double>(config.n_params()) / 1e9, dtype_name(dtype));
  const std::string links =
      nodes ? fmt::format("nodes {} x {} | links {} inside a node, {} between nodes",
                          nodes->n_nodes, nodes->gpus_per_node, link.name, inter_link->name)
            : fmt::format("link {}", link.name);
  fmt::print("devices {} | {} | batch {} x {} prompt tokens, {} new tokens, max_context {}\n\n",
             args.devices, links, args.batch, args.prompt_tokens, args.new_tokens, max_context);

  nlohmann::json out;
  out["model"] = args.config.empty() ? args.preset : args.config;
  out["devices"] = args.devices;
  out["link"] = link.name;
  out["objective"] = args.objective;

  // With --nodes: one message of activations over each kind of link, for a decode micro-batch
  // and a prefill micro-batch (the workloads the partitioner prices).
  if (nodes) {
    const PartitionerOptions o = options_for(args.stages);
    const DeviceSpec& device = listed.front();
    fmt::print("per-hop send of one micro-batch of activations ({}):\n", dtype_name(dtype));
    auto column = [&](const char* phase, const Workload& work) {
      const int64_t bytes = model.activation_bytes(work);
      return fmt::format("{}: {} tok, {}", phase, work.n_tokens,
                         bytes >= (int64_t{1} << 20) ? fmt::format("{} MiB", bytes >> 20)
                                                     : fmt::format("{} KiB", bytes >> 10));
    };
    fmt::print("  {:<26} {:>24} {:>26}\n", "link", column("decode", o.decode),
               column("prefill", o.prefill));
    nlohmann::json hops = nlohmann::json::object();
    for (const auto& [role, spec] : {std::pair{"intra", link}, std::pair{"inter", *inter_link}}) {
      const double decode_s = model.send_seconds(o.decode, spec, device);
      const double prefill_s = model.send_seconds(o.prefill, spec, device);
      fmt::print("  {:<26} {:>21.1f} us {:>23.1f} us\n",
                 fmt::format("{} ({}-node)", spec.name, role), decode_s * 1e6, prefill_s * 1e6);
      hops[role] = {{"link", spec.name}, {"decode_s", decode_s}, {"prefill_s", prefill_s}};
    }
    fmt::print("\n");
    out["nodes"] = {{"n_nodes", nodes->n_nodes},
                    {"gpus_per_node", nodes->gpus_per_node},
                    {"inter_node_link", inter_link->name},
                    {"hop", hops},
                    {"decode_activation_bytes", model.activation_bytes(o.decode)},
                    {"prefill_activation_bytes", model.activation_bytes(o.prefill)}};
  }

  // The chosen S: even (or explicit) vs balanced.
  {
    const PartitionerOptions o = options_for(args.stages);
    if (o.topology.devices.empty()) {
      fail(ErrorCode::kInvalidArgument, "--devices lists {} devices but --stages is {}",
           listed.size(), args.stages);
    }
    const Partition baseline =
        args.partition.empty() ? Partition::even(config.n_layers, args.stages)
                               : parse_partition_spec(args.partition, config.n_layers, args.stages);
    const PartitionPlan base = evaluate_partition(model, baseline, o);
    fmt::print("{} partition, S = {}:\n{}\n", args.partition.empty() ? "even" : "given",
               args.stages, base.describe());
    std::optional<PartitionPlan> best;
    try {
      best = balanced_partition(model, o);
      fmt::print("balanced partition ({}), S = {}:\n{}\n", args.objective, args.stages,
                 best->describe());
    } catch (const Error& e) {
      fmt::print("balanced partition, S = {}: {}\n\n", args.stages, e.what());
    }
    out["chosen"] = {{"stages", args.stages},
                     {"baseline", base.partition.to_string()},
                     {"baseline_imbalance", base.imbalance},
                     {"balanced", best ? best->partition.to_string() : ""},
                     {"balanced_imbalance", best ? best->imbalance : 0.0}};
    if (nodes && best) {
      // The same stages with the intra-node link everywhere: what the network costs.
      PartitionerOptions one_domain = o;
      one_domain.topology.links = {link};
      const SimulatorOptions sim{.topology = o.topology};
      const SimulatorOptions sim_one{.topology = one_domain.topology};
      const Prediction prefill = predict_prefill(args, args.stages, best->partition, model, sim);
      const Prediction prefill_one =
          predict_prefill(args, args.stages, best->partition, model, sim_one);
      fmt::print("nodes of the balanced partition:\n{}", describe_nodes(*nodes, best->partition));
      fmt::print("predicted, balanced partition ({} between nodes; all-{} in brackets):\n",
                 inter_link->name, link.name);
      fmt::print("  prefill M={}: {} ms, {:.0f} tok/s ({:.0f})\n", prefill.micro_batches,
                 ms(prefill.seconds), prefill.tokens_per_s, prefill_one.tokens_per_s);
      nlohmann::json predicted{{"prefill", to_json(prefill)}};
      for (const DecodeMode mode : {DecodeMode::kStrict, DecodeMode::kCohorts}) {
        const Prediction decode = predict_decode(args, mode, best->partition, model, sim);
        const Prediction decode_one = predict_decode(args, mode, best->partition, model, sim_one);
        fmt::print("  decode {:<7}: {:.1f} tok/s ({:.1f})\n", to_string(mode), decode.tokens_per_s,
                   decode_one.tokens_per_s);
        predicted[std::string(to_string(mode))] = to_json(decode);
      }
      fmt::print("\n");
      out["chosen"]["predicted"] = predicted;
      nlohmann::json stage_nodes = nlohmann::json::array();
      for (int s = 0; s < args.stages; ++s)
        stage_nodes.push_back(nodes->node_of(s));
      out["nodes"]["stage_nodes"] = stage_nodes;
    }
    if (!args.timeline_out.empty() && best) {
      SimulatorOptions sim{.topology = o.topology};
      const auto gen =
          simulate_generation(shape_for(args, args.stages, parse_decode_mode(args.decode_mode),
                                        std::min<int64_t>(args.new_tokens, 4)),
                              best->partition, model, sim);
      write_timeline_svg(args.timeline_out, gen.trace, args.stages,
                         {.title = fmt::format("predicted: {} on {} x S={}, partition {}",
                                               out["model"].get<std::string>(), args.devices,
                                               args.stages, best->partition.to_string())});
      fmt::print("wrote predicted timeline (prefill + 3 decode steps) to {}\n\n",
                 args.timeline_out);
    }
  }

  // Sweep: S = 1..max_stages, balanced partition, simulated prefill per M and decode.
  fmt::print("{:>3} {:>24} {:>7} {:>8} {:>10}", "S", "partition", "max/mn", "even", "KV tok");
  for (int m : args.microbatches)
    fmt::print(" {:>9}", fmt::format("pf M={}", m));
  fmt::print(" {:>11} {:>11}\n", "dec strict", "dec cohorts");
  nlohmann::json rows = nlohmann::json::array();
  const int top = std::min<int64_t>(args.max_stages, config.n_layers);
  for (int S = 1; S <= top; ++S) {
    const PartitionerOptions o = options_for(S);
    if (o.topology.devices.empty()) continue;
    nlohmann::json row{{"stages", S}};
    PartitionPlan plan;
    try {
      plan = balanced_partition(model, o);
    } catch (const Error& e) {
      fmt::print("{:>3} does not fit: {}\n", S, e.what());
      row["error"] = e.what();
      rows.push_back(row);
      continue;
    }
    const PartitionPlan even = evaluate_partition(model, Partition::even(config.n_layers, S), o);
    const std::string counts = plan.partition.to_string();
    fmt::print("{:>3} {:>24} {:>7.3f} {:>8.3f} {:>10}", S,
               counts.size() > 24 ? counts.substr(0, 21) + "..." : counts, plan.imbalance,
               even.imbalance, plan.kv_capacity_tokens);
    row["partition"] = counts;
    row["imbalance"] = plan.imbalance;
    row["even_imbalance"] = even.imbalance;
    row["even_fits"] = even.fits();
    row["kv_capacity_tokens"] = plan.kv_capacity_tokens;
    SimulatorOptions sim{.topology = o.topology};
    nlohmann::json prefill = nlohmann::json::array();
    for (int m : args.microbatches) {
      const Prediction p = predict_prefill(args, m, plan.partition, model, sim);
      fmt::print(" {:>9}", ms(p.seconds));
      prefill.push_back(to_json(p));
    }
    row["prefill"] = prefill;
    nlohmann::json decode = nlohmann::json::object();
    for (const DecodeMode mode : {DecodeMode::kStrict, DecodeMode::kCohorts}) {
      const Prediction p = predict_decode(args, mode, plan.partition, model, sim);
      fmt::print(" {:>11.1f}", p.tokens_per_s);
      decode[std::string(to_string(mode))] = to_json(p);
    }
    fmt::print("\n");
    row["decode"] = decode;
    rows.push_back(row);
  }
  out["sweep"] = rows;
  fmt::print(
      "\npf: simulated prefill of the whole batch in ms (M micro-batches; M > batch chunks "
      "the prompts); dec: decode tokens/s of the batch, strict (one step at a time) and with one "
      "cohort per stage in flight{}\n",
      nodes ? fmt::format("; with --nodes, stage s runs on node s / {}", nodes->gpus_per_node)
            : "");
  if (!args.json_out.empty()) {
    std::ofstream file(args.json_out);
    file << out.dump(2) << "\n";
    if (!file) fail(ErrorCode::kInvalidArgument, "cannot write {}", args.json_out);
    fmt::print("wrote {}\n", args.json_out);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  CLI::App app{"conveyor-plan: partition and simulated timelines for a config.json, no weights"};
  app.add_option("--config", args.config,
                 "config.json of the model (e.g. configs/llama-3-8b.json)");
  app.add_option("--preset", args.preset, "or a built-in shape: tiny, small");
  app.add_option("--devices", args.devices,
                 "device preset, or one per stage comma-separated (cpu, h100, h100-pcie, h200, "
                 "a100, a100-40gb)")
      ->capture_default_str();
  app.add_option("--link", args.link,
                 fmt::format("link between stages, inside a node with --nodes: {}",
                             fmt::join(link_preset_names(), ", ")))
      ->capture_default_str();
  app.add_option("--nodes", args.nodes,
                 "NODESxGPUS, e.g. 2x8: stage s runs on node s / GPUS, --link inside a node and "
                 "--inter-node-link between nodes; --stages defaults to NODES*GPUS and the sweep "
                 "to as many");
  CLI::Option* inter = app.add_option("--inter-node-link", args.inter_node_link,
                                      "link between nodes with --nodes: ib-hdr100, ib-hdr, "
                                      "ib-ndr, ethernet-100g, ethernet-25g, ethernet-10g")
                           ->capture_default_str();
  app.add_option("--profile", args.profile, "unit times measured by conveyor-bench --profile");
  app.add_option("--dtype", args.dtype, "weights, KV and activations: bf16, f16, f32")
      ->capture_default_str();
  CLI::Option* stages = app.add_option("--stages", args.stages, "stages of the detailed report")
                            ->capture_default_str();
  CLI::Option* max_stages =
      app.add_option("--max-stages", args.max_stages, "sweep S = 1..this")->capture_default_str();
  app.add_option("--partition", args.partition,
                 "baseline instead of even: counts 8,8,8,8 or layout emb,0-7|8-15|...,head");
  app.add_option("--objective", args.objective, "prefill, decode, mixed, kv")
      ->capture_default_str();
  app.add_option("--prefill-weight", args.prefill_weight, "weight of prefill for --objective mixed")
      ->capture_default_str();
  app.add_option("--batch", args.batch, "sequences")->capture_default_str();
  app.add_option("--prompt-tokens", args.prompt_tokens, "tokens per prompt")->capture_default_str();
  app.add_option("--new-tokens", args.new_tokens, "generated tokens per sequence")
      ->capture_default_str();
  app.add_option("--max-context", args.max_context,
                 "KV positions reserved per sequence (0: prompt + new)")
      ->capture_default_str();
  app.add_option("--microbatches", args.microbatches, "prefill micro-batch counts to sweep")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--chunking", args.chunking, "prefill chunking: auto, never or a chunk size")
      ->capture_default_str();
  app.add_option("--decode-mode", args.decode_mode,
                 "decode of the --timeline: strict or cohorts (the sweep shows both)")
      ->capture_default_str();
  app.add_option("--json", args.json_out, "write the results as JSON");
  app.add_option("--timeline", args.timeline_out, "write the predicted SVG timeline of --stages");
  CLI11_PARSE(app, argc, argv);
  args.stages_given = stages->count() > 0;
  args.max_stages_given = max_stages->count() > 0;
  args.inter_node_link_given = inter->count() > 0;
  spdlog::set_level(spdlog::level::warn);
  return run_reporting_errors([&] { return run(args); });
}
