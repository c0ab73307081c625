// ThreadPool: persistent workers woken per parallel_for by a generation counter; a short spin
// before sleeping on a futex keeps back-to-back ops (one decode step) from paying a system call
// each time.
#include "backend/cpu/thread_pool.hpp"

#include <algorithm>
#include <chrono>

#include "core/check.hpp"

namespace conveyor::cpu {
namespace {

// How long a thread spins on an atomic before it sleeps. Long enough to span the gaps between
// the ops of one step (a few small serial pieces), short enough that a pool whose stage waits
// for its next micro-batch soon stops using its cores.
constexpr auto kSpin = std::chrono::microseconds(200);

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

constexpr uint64_t kRangeBits = 8;
constexpr uint64_t kRangeMask = (uint64_t{1} << kRangeBits) - 1;

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads) {
  if (n_threads < 1 || n_threads > static_cast<int>(kRangeMask)) {
    fail(ErrorCode::kInvalidArgument,
         "ThreadPool needs 1 to {} threads but n_threads is {}; pass a count in that range",
         kRangeMask, n_threads);
  }
  workers_.reserve(static_cast<size_t>(n_threads - 1));
  for (int i = 0; i < n_threads - 1; ++i) {
    workers_.emplace_back([this, i] { worker_loop(i); });
  }
}

ThreadPool::~ThreadPool() {
  stopping_.store(true);
  const uint64_t state = state_.fetch_add(uint64_t{1} << kRangeBits);  // no ranges
  wake_.store(static_cast<uint32_t>((state >> kRangeBits) + 1));
  wake_.notify_all();
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
  ranges_.resize(static_cast<size_t>(n_ranges));
  for (int64_t r = 0; r < n_ranges; ++r)
    ranges_[static_cast<size_t>(r)] = {n * r / n_ranges, n * (r + 1) / n_ranges};
  job_ = &fn;
  pending_.store(static_cast<int>(n_ranges - 1));
  const uint64_t state = state_.load();
  // Publish: the next generation, with its range count. Sequentially consistent with the
  // sleepers' count: either a worker sees the new state before it sleeps, or we see it asleep.
  const uint64_t generation = (state >> kRangeBits) + 1;
  state_.store((generation << kRangeBits) | static_cast<uint64_t>(n_ranges));
  wake_.store(static_cast<uint32_t>(generation));
  if (sleeping_workers_.load() > 0) wake_.notify_all();

  std::exception_ptr own_error;
  t_active_pool = this;
  try {
    fn(ranges_[0].first, ranges_[0].second);
  } catch (...) {
    own_error = std::current_exception();
  }
  t_active_pool = nullptr;

  if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
    caller_sleeping_.store(true);
    for (int p; (p = pending_.load()) != 0;)
      pending_.wait(p);
    caller_sleeping_.store(false);
  }
  job_ = nullptr;
  std::exception_ptr error;
  {
    std::lock_guard lock(error_mutex_);
    error = own_error ? own_error : error_;
    error_ = nullptr;
  }
  if (error) std::rethrow_exception(error);
}

void ThreadPool::worker_loop(int index) {
  t_active_pool = this;
  const uint64_t my_range = static_cast<uint64_t>(index) + 1;
  // Generation 0 is the pool's state at construction; a worker that starts late must still
  // see the generations published before it ran.
  uint64_t seen = 0;
  for (;;) {
    uint64_t state = state_.load(std::memory_order_acquire);
    if ((state >> kRangeBits) == seen && !spin_until([&] {
          return (state_.load(std::memory_order_acquire) >> kRangeBits) != seen;
        })) {
      sleeping_workers_.fetch_add(1);
      while ((state_.load() >> kRangeBits) == seen)
        wake_.wait(static_cast<uint32_t>(seen));
      sleeping_workers_.fetch_sub(1);
    }
    state = state_.load(std::memory_order_acquire);
    seen = state >> kRangeBits;
    if (stopping_.load()) return;
    // A generation with fewer ranges than threads leaves this worker out; the caller only
    // waits for the workers it gave a range.
    if (my_range >= (state & kRangeMask)) continue;
    const auto [begin, end] = ranges_[my_range];
    std::exception_ptr error;
    try {
      (*job_)(begin, end);
    } catch (...) {
      error = std::current_exception();
    }
    if (error) {
      std::lock_guard lock(error_mutex_);
      if (!error_) error_ = std::move(error);
    }
    if (pending_.fetch_sub(1) == 1 && caller_sleeping_.load()) pending_.notify_one();
  }
}

}  // namespace conveyor::cpu
