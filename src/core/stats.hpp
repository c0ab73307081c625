// Timing and summary helpers shared by the engine, the profiler and the benchmarks.
#pragma once

#include <chrono>
#include <vector>

namespace conveyor {

using Clock = std::chrono::steady_clock;

// Seconds from `start` to now on the steady clock.
double seconds_since(Clock::time_point start);

// The median of `v` (the mean of the middle two for an even count); 0 for none.
double median(std::vector<double> v);

// The nearest-rank percentile of `v`, p in (0, 1] (0.5: median-ish, 0.99: p99); 0 for none.
double percentile(std::vector<double> v, double p);

}  // namespace conveyor
