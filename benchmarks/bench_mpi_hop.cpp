// The cost of one pipeline hop: a micro-batch's activations from a stage to the next, over the
// MPI link between two ranks (whatever transport mpirun picked: shared memory, TCP over
// loopback, TCP over a veth pair) against the in-process HostLink between two threads, measured
// in the same run. Ping-pong; one hop is half a round trip. Run: mpirun -np 2 bench_mpi_hop.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#include "backend/link.hpp"
#include "conveyor/process_group.hpp"
#include "dist/distributed.hpp"

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::chrono::milliseconds kTimeout{30'000};

conveyor::LinkMessage message(int64_t floats, int64_t step) {
  conveyor::LinkMessage m{.micro_batch = 0, .step = step};
  m.activations.host.assign(static_cast<size_t>(floats), 1.0f);
  return m;
}

// Median one-way microseconds of `rounds` round trips: `out` carries there, `back` returns.
double ping_pong(conveyor::Link& out, conveyor::Link& back, int64_t floats, int rounds) {
  std::vector<double> us;
  for (int r = 0; r < rounds; ++r) {
    const auto start = Clock::now();
    out.send(message(floats, r), kTimeout);
    back.recv(kTimeout);
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count() / 2);
  }
  std::nth_element(us.begin(), us.begin() + rounds / 2, us.end());
  return us[static_cast<size_t>(rounds / 2)];
}

void echo(conveyor::Link& in, conveyor::Link& out, int rounds) {
  for (int r = 0; r < rounds; ++r)
    out.send(in.recv(kTimeout), kTimeout);
}

}  // namespace

int main(int argc, char** argv) {
  auto world = conveyor::mpi_world(&argc, &argv);
  if (world->size() != 2) {
    fmt::print(stderr, "run with mpirun -np 2 (got {} ranks)\n", world->size());
    return 2;
  }
  const int rank = world->rank();
  auto dist = conveyor::dist::Distributed::create(*world, kTimeout);
  // Rank 0 sends on link 0 (stage 0 -> 1) and receives on link 1 (stage 1 -> 2): two links,
  // one per direction, as a pipeline of three stages would have.
  auto forward = dist->make_link(rank == 0 ? 0 : 0, 1 - rank, 2);
  auto backward = dist->make_link(1, 1 - rank, 2);
  // SmolLM2's hidden size: one decode token, a 128-token and a 1024-token prefill micro-batch.
  const std::vector<int64_t> tokens = {1, 8, 128, 1024};
  const int64_t hidden = 576;
  const int rounds = 200;
  if (rank == 0) {
    fmt::print("{} ({} <-> {})\n", world->transport(), world->host(), "rank 1");
    fmt::print("{:>8} {:>10} {:>14} {:>14} {:>8}\n", "tokens", "bytes", "in-process us",
               "MPI hop us", "ratio");
  }
  for (int64_t t : tokens) {
    const int64_t floats = t * hidden;
    const int n = t >= 1024 ? rounds / 4 : rounds;
    double mpi = 0;
    if (rank == 0) {
      ping_pong(*forward, *backward, floats, 10);  // warm-up
      mpi = ping_pong(*forward, *backward, floats, n);
    } else {
      echo(*forward, *backward, 10 + n);
    }
    if (rank == 0) {
      conveyor::HostLink there(2);
      conveyor::HostLink here(2);
      std::thread peer([&] { echo(there, here, 10 + n); });
      ping_pong(there, here, floats, 10);
      const double local = ping_pong(there, here, floats, n);
      peer.join();
      fmt::print("{:>8} {:>10} {:>14.1f} {:>14.1f} {:>8.1f}\n", t, floats * 4, local, mpi,
                 mpi / local);
    }
  }
  return 0;
}
