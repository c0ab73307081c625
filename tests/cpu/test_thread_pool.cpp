// Tests of cpu::ThreadPool: range coverage and sizes, exception propagation, reuse, nesting,
// and that an idle pool does not burn CPU.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <ctime>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "backend/cpu/thread_pool.hpp"
#include "conveyor/error.hpp"

namespace conveyor::cpu {
namespace {

TEST(ThreadPool, RejectsFewerThanOneThread) {
  for (int n_threads : {0, -1}) {
    try {
      ThreadPool pool(n_threads);
      FAIL() << "no error for n_threads = " << n_threads;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    }
  }
}

TEST(ThreadPool, CoversEveryIndexExactlyOnce) {
  for (int n_threads : {1, 2, 3, 4, 7}) {
    ThreadPool pool(n_threads);
    EXPECT_EQ(pool.n_threads(), n_threads);
    for (int64_t n : {0, 1, 2, 3, 5, 16, 17, 100, 1000, 4097}) {
      for (int64_t grain : {0, 1, 2, 3, 7, 64, 1000, 100000}) {
        SCOPED_TRACE(testing::Message()
                     << "n_threads=" << n_threads << " n=" << n << " grain=" << grain);
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        std::mutex mutex;
        std::vector<std::pair<int64_t, int64_t>> ranges;
        pool.parallel_for(n, grain, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i)
            hits[static_cast<size_t>(i)]++;
          std::lock_guard lock(mutex);
          ranges.emplace_back(begin, end);
        });
        for (int64_t i = 0; i < n; ++i)
          ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << i;
        if (n == 0) {
          EXPECT_TRUE(ranges.empty());
          continue;
        }
        EXPECT_LE(static_cast<int64_t>(ranges.size()), n_threads);
        if (ranges.size() > 1) {
          for (const auto& [begin, end] : ranges)
            EXPECT_GE(end - begin, std::max<int64_t>(grain, 1));
        }
        // Enough work for every thread gets every thread.
        if (n >= static_cast<int64_t>(n_threads) * std::max<int64_t>(grain, 1)) {
          EXPECT_EQ(static_cast<int>(ranges.size()), n_threads);
        }
      }
    }
  }
}

TEST(ThreadPool, RangesRunOnDistinctThreads) {
  ThreadPool pool(3);
  std::mutex mutex;
  std::vector<std::thread::id> ids;
  std::atomic<int> started{0};
  pool.parallel_for(3, 1, [&](int64_t, int64_t) {
    // Hold every range until all three have started: only possible if they run concurrently.
    started++;
    while (started.load() < 3)
      std::this_thread::yield();
    std::lock_guard lock(mutex);
    ids.push_back(std::this_thread::get_id());
  });
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_NE(ids[0], ids[1]);
  EXPECT_NE(ids[0], ids[2]);
  EXPECT_NE(ids[1], ids[2]);
}

TEST(ThreadPool, PropagatesExceptionsAndStaysUsable) {
  for (int n_threads : {1, 2, 3}) {
    ThreadPool pool(n_threads);
    // Throw from the caller's range (index 0) and from the last worker's range.
    for (int64_t bad : {int64_t{0}, int64_t{99}}) {
      SCOPED_TRACE(testing::Message() << "n_threads=" << n_threads << " bad=" << bad);
      std::atomic<int64_t> done{0};
      EXPECT_THROW(pool.parallel_for(100, 1,
                                     [&](int64_t begin, int64_t end) {
                                       for (int64_t i = begin; i < end; ++i) {
                                         if (i == bad) throw std::runtime_error("range failed");
                                         done++;
                                       }
                                     }),
                   std::runtime_error);
      // The pool works normally afterwards.
      std::atomic<int64_t> sum{0};
      pool.parallel_for(100, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          sum += i;
      });
      EXPECT_EQ(sum.load(), 4950);
    }
    // conveyor::Error keeps its type and code through the pool.
    try {
      pool.parallel_for(10, 1, [](int64_t, int64_t end) {
        if (end == 10) throw Error(ErrorCode::kTimeout, "late");
      });
      FAIL() << "no exception";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kTimeout);
    }
  }
}

TEST(ThreadPool, ReusableManyTimes) {
  ThreadPool pool(3);
  std::vector<int64_t> data(1000, 0);
  for (int iteration = 0; iteration < 3000; ++iteration) {
    const int64_t n = 1 + iteration % 1000;
    pool.parallel_for(n, 1 + iteration % 5, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        data[static_cast<size_t>(i)] += 1;
    });
  }
  int64_t total = 0;
  for (int64_t value : data)
    total += value;
  int64_t expected = 0;
  for (int iteration = 0; iteration < 3000; ++iteration)
    expected += 1 + iteration % 1000;
  EXPECT_EQ(total, expected);
}

TEST(ThreadPool, RefusesNestedParallelFor) {
  ThreadPool pool(2);
  for (int64_t n : {1, 100}) {
    try {
      pool.parallel_for(
          n, 1, [&](int64_t, int64_t) { pool.parallel_for(4, 1, [](int64_t, int64_t) {}); });
      FAIL() << "nested parallel_for did not throw";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInternal);
    }
  }
  int calls = 0;
  pool.parallel_for(1, 1, [&](int64_t, int64_t) { calls++; });
  EXPECT_EQ(calls, 1);
}

TEST(ThreadPool, IdlePoolDoesNotSpin) {
  ThreadPool pool(3);
  pool.parallel_for(300, 1, [](int64_t, int64_t) {});
  const std::clock_t cpu_before = std::clock();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const double cpu_seconds = static_cast<double>(std::clock() - cpu_before) / CLOCKS_PER_SEC;
  // Spinning workers would use ~0.4 s of CPU time in 0.2 s of wall time.
  EXPECT_LT(cpu_seconds, 0.05);
}

}  // namespace
}  // namespace conveyor::cpu
