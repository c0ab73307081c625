#include "backend/cpu/blas_kernels.hpp"

#include <cblas.h>

#include <unistd.h>

#include <cstdlib>
#include <string_view>

namespace conveyor::cpu {

std::string blas_core() {
  const char* name = openblas_get_corename();
  return name != nullptr ? name : "";
}

std::string blas_core_hint() {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return {};
#if defined(__x86_64__)
  const std::string core = blas_core();
  auto in = [&](std::initializer_list<std::string_view> names) {
    for (std::string_view n : names) {
      if (core == n) return true;
    }
    return false;
  };
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx512 && !in({"SkylakeX", "Cooperlake", "SapphireRapids"})) return "SkylakeX";
  if (avx2 && !avx512 && !in({"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"})) {
    return "Haswell";
  }
#endif
  return {};
}

void reexec_for_blas_kernels(char** argv) {
  const std::string hint = blas_core_hint();
  const bool threads = std::getenv("OPENBLAS_NUM_THREADS") == nullptr;
  if (hint.empty() && !threads) return;
  if (!hint.empty()) setenv("OPENBLAS_CORETYPE", hint.c_str(), 1);
  if (threads) setenv("OPENBLAS_NUM_THREADS", "1", 1);
  execv("/proc/self/exe", argv);
  // exec failed: carry on with what is loaded
  if (!hint.empty()) unsetenv("OPENBLAS_CORETYPE");
  if (threads) unsetenv("OPENBLAS_NUM_THREADS");
}

}  // namespace conveyor::cpu
