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
// Idle workers spin for a short while after a job (back-to-back ops of one step then cost no
// system call), then sleep on a futex (std::atomic::wait), so an idle pool costs no CPU.
class ThreadPool {
 public:
  // n_threads in [1, 255]; the calling thread is one of them (n_threads - 1 workers are spawned).
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
  // One word for a job's publication: (generation << 8) | number of ranges, so a worker reads
  // which generation it is in and whether it has a range with one load.
  std::atomic<uint64_t> state_{0};
  // The low 32 bits of the generation, the word sleeping workers wait on: a 4-byte atomic waits
  // on the futex itself (libstdc++ routes 8-byte waits through a shared proxy table). Workers check
  // state_ before they sleep, so its wrap-around cannot fool them.
  std::atomic<uint32_t> wake_{0};
  // Ranges of the job still running; the caller sleeps on it.
  std::atomic<int> pending_{0};
  std::atomic<int> sleeping_workers_{0};
  std::atomic<bool> caller_sleeping_{false};
  std::atomic<bool> stopping_{false};
  // Written by the caller before it publishes a generation, read by the workers with a range
  // after they see it; not touched again until all of them are done.
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  std::vector<std::pair<int64_t, int64_t>> ranges_;  // [0] the caller's, [w + 1] worker w's
  std::mutex error_mutex_;
  std::exception_ptr error_;
};

}  // namespace conveyor::cpu
