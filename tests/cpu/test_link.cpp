// HostLink: FIFO order, bounded capacity, cancellation and timeouts.
#include <gtest/gtest.h>

#include <thread>

#include "backend/link.hpp"
#include "conveyor/error.hpp"

namespace conveyor {
namespace {

using namespace std::chrono_literals;

TEST(HostLink, FifoAcrossThreads) {
  HostLink link(2);
  std::thread sender([&] {
    for (int32_t m = 0; m < 100; ++m)
      link.send({m, 0, {.host = std::vector<float>(3, float(m))}}, 5000ms);
  });
  for (int32_t m = 0; m < 100; ++m) {
    LinkMessage msg = link.recv(5000ms);
    EXPECT_EQ(msg.micro_batch, m);
    EXPECT_EQ(msg.activations.host[2], float(m));
  }
  sender.join();
}

TEST(HostLink, FullLinkTimesOutAndEmptyLinkTimesOut) {
  HostLink link(1);
  link.send({0, 0, {}}, 10ms);
  try {
    link.send({1, 0, {}}, 20ms);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kTimeout);
  }
  link.recv(10ms);
  try {
    link.recv(20ms);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kTimeout);
    EXPECT_NE(std::string(e.what()).find("link_timeout_ms"), std::string::npos);
  }
}

TEST(HostLink, CancelWakesBlockedReceiverAndResetRestores) {
  HostLink link(2);
  std::thread receiver([&] {
    try {
      link.recv(60000ms);
      ADD_FAILURE() << "recv returned after cancel";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kAborted);
    }
  });
  std::this_thread::sleep_for(20ms);
  link.cancel();
  receiver.join();
  EXPECT_THROW(link.send({0, 0, {}}, 10ms), Error);
  link.reset();
  link.send({5, 1, {}}, 10ms);
  EXPECT_EQ(link.recv(10ms).micro_batch, 5);
  EXPECT_THROW(HostLink(0), Error);
}

}  // namespace
}  // namespace conveyor
