// ThreadPool: persistent workers woken per parallel_for by a generation counter; a short spin
// before sleeping keeps back-to-back ops (one decode step) from paying a futex wake each time.
#include "backend/cpu/thread_pool.hpp"

#include <algorithm>
#include <chrono>

#include "core/check.hpp"

namespace conveyor::cpu {
namespace {

// How long a thread spins on an atomic before it sleeps on a condition variable. Short: the
// machine may be shared with other stages, and idle workers must not burn their cores.
constexpr auto kSpin = std::chrono::microseconds(20);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Spins until done() or kSpin has elapsed; returns done().
template <typename Done>
bool spin_until(const Done& done) {
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return done();
  }
}

// The pool whose parallel_for this thread is inside (as caller or worker), to refuse nesting,
// which would deadlock.
thread_local const ThreadPool* t_active_pool = nullptr;

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads) {
  if (n_threads < 1) {
    fail(ErrorCode::kInvalidArgument,
         "ThreadPool needs at least 1 thread but n_threads is {}; pass n_threads >= 1", n_threads);
  }
  workers_.reserve(static_cast<size_t>(n_threads - 1));
  for (int i = 0; i < n_threads - 1; ++i) {
    workers_.emplace_back([this, i] { worker_loop(i); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    generation_.fetch_add(1, std::memory_order_release);
  }
  work_ready_.notify_all();
  for (auto& worker : workers_)
    worker.join();
}

void ThreadPool::parallel_for(int64_t n, int64_t grain,
                              const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (t_active_pool == this) {
    fail(ErrorCode::kInternal,
         "ThreadPool::parallel_for called from inside a parallel_for of the same pool; nested "
         "parallelism would deadlock, run the inner loop serially");
  }
  grain = std::max<int64_t>(grain, 1);
  const int64_t n_ranges = std::clamp<int64_t>(n / grain, 1, n_threads_);
  if (n_ranges == 1) {
    t_active_pool = this;
    try {
      fn(0, n);
    } catch (...) {
      t_active_pool = nullptr;
      throw;
    }
    t_active_pool = nullptr;
    return;
  }

  // Even split: every range gets floor(n / n_ranges) >= grain items or one more.
  std::pair<int64_t, int64_t> own;
  {
    std::lock_guard lock(mutex_);
    ranges_.resize(static_cast<size_t>(n_ranges));
    for (int64_t r = 0; r < n_ranges; ++r) {
      ranges_[static_cast<size_t>(r)] = {n * r / n_ranges, n * (r + 1) / n_ranges};
    }
    own = ranges_[0];
    job_ = &fn;
    error_ = nullptr;
    pending_.store(static_cast<int>(n_ranges - 1), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  work_ready_.notify_all();

  std::exception_ptr own_error;
  t_active_pool = this;
  try {
    fn(own.first, own.second);
  } catch (...) {
    own_error = std::current_exception();
  }
  t_active_pool = nullptr;

  spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; });
  std::exception_ptr error;
  {
    std::unique_lock lock(mutex_);
    work_done_.wait(lock, [this] { return pending_.load(std::memory_order_relaxed) == 0; });
    job_ = nullptr;
    error = own_error ? own_error : error_;
    error_ = nullptr;
  }
  if (error) std::rethrow_exception(error);
}

void ThreadPool::worker_loop(int index) {
  t_active_pool = this;
  uint64_t seen = 0;
  const size_t my_range = static_cast<size_t>(index) + 1;
  for (;;) {
    spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; });
    std::unique_lock lock(mutex_);
    work_ready_.wait(
        lock, [&] { return stopping_ || generation_.load(std::memory_order_relaxed) != seen; });
    if (stopping_) return;
    seen = generation_.load(std::memory_order_relaxed);
    // A generation with fewer ranges than threads leaves this worker out; skipping it is safe
    // because the caller only waits for the workers it gave a range.
    if (my_range >= ranges_.size()) continue;
    const auto [begin, end] = ranges_[my_range];
    const auto* job = job_;
    lock.unlock();

    std::exception_ptr error;
    try {
      (*job)(begin, end);
    } catch (...) {
      error = std::current_exception();
    }

    lock.lock();
    // Drop this thread's reference before reporting done: the caller may rethrow and free
    // the exception as soon as pending_ reaches zero.
    if (error && !error_) error_ = std::move(error);
    error = nullptr;
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      lock.unlock();
      work_done_.notify_one();
    }
  }
}

}  // namespace conveyor::cpu
