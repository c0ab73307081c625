// NcclCommunicator with one rank: a grouped send to itself moves the bytes (also through a split
// rank); a receive nobody sends to ends in an error (timeout, or cancellation) and an aborted
// communicator instead of a hang; bad transfers are refused. With two GPUs, the engine over NCCL
// links. Skips without a device (or a second one), or when built without NCCL.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <numeric>
#include <thread>
#include <vector>

#include "common/faults.hpp"
#include "common/test_util.hpp"
#include "conveyor/error.hpp"
#include "gpu/gpu_test_util.hpp"

#include "conveyor/engine.hpp"
#include "model/make_model.hpp"

#if CONVEYOR_HAVE_NCCL
#include "backend/cuda/nccl_communicator.hpp"
#include "backend/cuda/nccl_link.hpp"
#endif

namespace conveyor {
namespace {

#if CONVEYOR_HAVE_NCCL

using namespace std::chrono_literals;
using cuda::NcclCommunicator;
using cuda::NcclTransfer;

// A stream of device 0, destroyed at the end of the test.
class Stream {
 public:
  Stream() { gpu_testing::cuda_ok(cudaStreamCreate(&stream_), "cudaStreamCreate"); }
  ~Stream() { cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const std::string reason = gpu_testing::no_device_reason(); !reason.empty()) {
      GTEST_SKIP() << reason;
    }
    gpu_testing::cuda_ok(cudaSetDevice(0), "cudaSetDevice");
  }
};

// Rank 0 sends `values` to itself through `comm` in one group; returns what arrived.
std::vector<int32_t> send_to_self(NcclCommunicator& comm, const std::vector<int32_t>& values) {
  gpu_testing::DeviceBuffer<int32_t> source(values);
  gpu_testing::DeviceBuffer<int32_t> target(values.size());
  target.poison();
  Stream stream;
  const size_t bytes = values.size() * sizeof(int32_t);
  const NcclTransfer transfers[] = {
      {.kind = NcclTransfer::Kind::kSend,
       .local_rank = 0,
       .peer = 0,
       .buffer = source.get(),
       .bytes = bytes,
       .stream = stream.get()},
      {.kind = NcclTransfer::Kind::kRecv,
       .local_rank = 0,
       .peer = 0,
       .buffer = target.get(),
       .bytes = bytes,
       .stream = stream.get()},
  };
  comm.run(transfers, 30s);
  return target.download();
}

TEST_F(NcclTest, OneRankSendsToItselfInAGroup) {
  NcclCommunicator comm = NcclCommunicator::init_all({0}, 60s);
  EXPECT_EQ(comm.world_size(), 1);
  EXPECT_EQ(comm.n_local_ranks(), 1);
  EXPECT_EQ(comm.global_rank(0), 0);
  std::vector<int32_t> values(1000);
  std::iota(values.begin(), values.end(), 17);
  EXPECT_EQ(send_to_self(comm, values), values);
  EXPECT_FALSE(comm.aborted());
  // Usable again for the next step.
  EXPECT_EQ(send_to_self(comm, values), values);
}

TEST_F(NcclTest, ReceiveWithoutSenderEndsInAnErrorNotAHang) {
  NcclCommunicator comm = NcclCommunicator::init_all({0}, 60s);
  gpu_testing::DeviceBuffer<int32_t> target(256);
  Stream stream;
  const NcclTransfer recv_only[] = {{.kind = NcclTransfer::Kind::kRecv,
                                     .local_rank = 0,
                                     .peer = 0,
                                     .buffer = target.get(),
                                     .bytes = 256 * sizeof(int32_t),
                                     .stream = stream.get()}};
  const auto start = std::chrono::steady_clock::now();
  try {
    comm.run(recv_only, 500ms);
    ADD_FAILURE() << "a receive with no matching send completed";
  } catch (const Error& e) {
    // NCCL may refuse the unmatched receive itself (kCommunication) or leave it pending until
    // the deadline (kTimeout); either way the message names the transfer.
    EXPECT_TRUE(e.code() == ErrorCode::kTimeout || e.code() == ErrorCode::kCommunication)
        << e.what();
    const std::string message = e.what();
    EXPECT_NE(message.find("1024 bytes"), std::string::npos) << message;
    EXPECT_NE(message.find("peer 0"), std::string::npos) << message;
    EXPECT_NE(message.find("aborted"), std::string::npos) << message;
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
  EXPECT_TRUE(comm.aborted());
  test::expect_error([&] { comm.run(recv_only, 500ms); }, ErrorCode::kCommunication,
                     {"aborted", "create a new one"});
}

TEST_F(NcclTest, RefusesBadTransfers) {
  NcclCommunicator comm = NcclCommunicator::init_all({0}, 60s);
  gpu_testing::DeviceBuffer<int32_t> buffer(16);
  Stream stream;
  const NcclTransfer bad_peer[] = {{.kind = NcclTransfer::Kind::kSend,
                                    .local_rank = 0,
                                    .peer = 3,
                                    .buffer = buffer.get(),
                                    .bytes = 64,
                                    .stream = stream.get()}};
  test::expect_invalid([&] { comm.run(bad_peer, 1s); }, {"peer 3", "1 rank"});
  const NcclTransfer bad_rank[] = {{.kind = NcclTransfer::Kind::kSend,
                                    .local_rank = 1,
                                    .peer = 0,
                                    .buffer = buffer.get(),
                                    .bytes = 64,
                                    .stream = stream.get()}};
  test::expect_invalid([&] { comm.run(bad_rank, 1s); }, {"local rank 1"});
  const NcclTransfer no_stream[] = {{.kind = NcclTransfer::Kind::kSend,
                                     .local_rank = 0,
                                     .peer = 0,
                                     .buffer = buffer.get(),
                                     .bytes = 64}};
  test::expect_invalid([&] { comm.run(no_stream, 1s); }, {"explicit stream"});
  EXPECT_FALSE(comm.aborted());  // refused before any NCCL call
}

TEST(NcclRanks, RefusesAnInvalidRank) {
  test::expect_invalid(
      [] { NcclCommunicator::init_rank(cuda::NcclUniqueId{}, 2, 2, 0, std::chrono::seconds(1)); },
      {"rank 2 of a world of 2"});
}

TEST_F(NcclTest, SplitRanksKeepTheWorldAndWork) {
  std::vector<NcclCommunicator> ranks = NcclCommunicator::init_all({0}, 60s).split();
  ASSERT_EQ(ranks.size(), 1u);
  EXPECT_EQ(ranks[0].world_size(), 1);
  EXPECT_EQ(ranks[0].global_rank(0), 0);
  EXPECT_EQ(ranks[0].device(0), 0);
  std::vector<int32_t> values(300);
  std::iota(values.begin(), values.end(), -5);
  EXPECT_EQ(send_to_self(ranks[0], values), values);
}

TEST_F(NcclTest, ACancelledWaitAbortsPromptly) {
  NcclCommunicator comm = NcclCommunicator::init_all({0}, 60s);
  gpu_testing::DeviceBuffer<int32_t> target(64);
  Stream stream;
  // The stream is held by a host function until the test lets it go: wait() sees work that does
  // not finish, as behind a transfer whose peer is gone. (No NCCL operation is enqueued: NCCL
  // refuses a receive from itself without a matching send right away.)
  std::atomic<bool> release{false};
  gpu_testing::cuda_ok(cudaLaunchHostFunc(
                           stream.get(),
                           [](void* flag) {
                             while (!static_cast<std::atomic<bool>*>(flag)->load())
                               std::this_thread::sleep_for(std::chrono::milliseconds(1));
                           },
                           &release),
                       "cudaLaunchHostFunc");
  const NcclTransfer pending[] = {{.kind = NcclTransfer::Kind::kRecv,
                                   .peer = 0,
                                   .buffer = target.get(),
                                   .bytes = 64 * sizeof(int32_t),
                                   .stream = stream.get()}};
  std::atomic<bool> cancelled{false};
  std::thread canceller([&] {
    std::this_thread::sleep_for(200ms);
    cancelled.store(true);
  });
  const auto start = std::chrono::steady_clock::now();
  test::expect_error([&] { comm.wait(pending, 60s, &cancelled); }, ErrorCode::kAborted,
                     {"recv of 256 bytes", "cancelled", "aborted"});
  const auto elapsed = std::chrono::steady_clock::now() - start;
  canceller.join();
  release.store(true);
  gpu_testing::cuda_ok(cudaStreamSynchronize(stream.get()), "cudaStreamSynchronize");
  EXPECT_GE(elapsed, 150ms);  // it did wait for the work ...
  EXPECT_LT(elapsed, 20s);    // ... and stopped at the cancel, far below the 60 s deadline
  EXPECT_TRUE(comm.aborted());
}

TEST(NcclWorld, RefusesStagesSharingAGpu) {
  // Checked before NCCL or the device is touched, so this runs everywhere.
  test::expect_invalid(
      [] {
        cuda::NcclWorld({0, 1, 0}, std::chrono::seconds(1));
      },
      {"one rank per GPU", "--devices 0,1,2,3", "local transport"});
}

#else

TEST(Nccl, NotBuilt) {
  GTEST_SKIP() << "conveyor was built without NCCL (CONVEYOR_HAVE_NCCL is off)";
}

#endif

}  // namespace
}  // namespace conveyor
