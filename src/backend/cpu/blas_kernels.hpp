// Which OpenBLAS kernels this process runs, and which it should. OpenBLAS picks its kernel set
// once, when it loads; a build older than the CPU (Debian 12's 0.3.21 on a Sapphire Rapids, say)
// does not recognise it and falls back to its SSE3 "Prescott" kernels — prefill GEMMs then run
// about 3x slower. The binaries re-execute themselves once with OPENBLAS_CORETYPE set to the
// hint (examples/cli_blas.hpp); a library user can set it in the environment.
#pragma once

#include <string>

namespace conveyor::cpu {

// OpenBLAS's name for the kernels in use ("SkylakeX", "Haswell", "Prescott", ...).
std::string blas_core();

// The OPENBLAS_CORETYPE this CPU should use when OpenBLAS fell back to older kernels than the
// CPU runs ("SkylakeX" with AVX-512, "Haswell" with AVX2 + FMA); empty when the kernels in use
// are fine or OPENBLAS_CORETYPE is already set.
std::string blas_core_hint();

// For main() of an executable, before anything else: when blas_core_hint() names better kernels,
// sets OPENBLAS_CORETYPE to it, and when OPENBLAS_NUM_THREADS is unset sets it to 1 (conveyor
// runs OpenBLAS single-threaded from its own pools; otherwise OpenBLAS starts a thread per core
// at load, which spins in sched_yield after start-up beside the stage's threads: ~2 % of a
// 2-thread prefill), then re-executes the program with the same arguments (once: the variables
// are then set). Returns normally when nothing needs doing or the re-execution fails.
void reexec_for_blas_kernels(char** argv);

}  // namespace conveyor::cpu
