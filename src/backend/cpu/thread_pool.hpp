// A fixed-size pool of worker threads owned by one pipeline stage (no global pool), so S stages
// with T threads each use S*T cores.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace conveyor::cpu {

// Thread safety: one thread at a time may call parallel_for (the stage that owns the pool).
// Idle workers spin for a few microseconds after a job, then sleep on a condition variable, so
// an idle pool costs no CPU.
class ThreadPool {
 public:
  // n_threads >= 1; the calling thread is one of them (n_threads - 1 workers are spawned).
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int n_threads() const { return n_threads_; }

  // Splits [0, n) into at most n_threads contiguous ranges of at least `grain` items and runs
  // fn(begin, end) on them, the caller taking one; returns when all are done. An exception in
  // any range is rethrown here (the first one). Not reentrant: fn must not call parallel_for.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void worker_loop(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable work_ready_;
  std::condition_variable work_done_;
  // Guarded by mutex_: the job of the current generation; ranges_[0] is the caller's, range
  // w + 1 belongs to worker w.
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  std::vector<std::pair<int64_t, int64_t>> ranges_;
  // Written under mutex_; atomic so that waiting threads can spin on them without the lock.
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  bool stopping_ = false;
  std::exception_ptr error_;
};

}  // namespace conveyor::cpu
