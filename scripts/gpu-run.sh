#!/usr/bin/env bash
# Runs the packed GPU checks (scripts/gpu-pack.sh) on a machine with a GPU: every gpu-labelled
# test binary, then bench_engine_cuda (--quick, then the full 8B shape). Logs, gtest XML and the
# benchmark JSON go to OUT_DIR. Finds the CUDA runtime, cuBLAS and NCCL of that machine (toolkit
# or Python wheels). Usage: scripts/gpu-run.sh OUT_DIR [--no-bench]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/gpu-run.sh OUT_DIR [--no-bench]}"
mkdir -p "$out"
work=$(mktemp -d)
tar -C "$work" -xJf .gpu/bundle.tar.xz
cuda_dirs=$(find /usr/local /usr/lib /opt -name 'libcublasLt.so.13*' -o -name 'libcudart.so.13*' \
  -o -name 'libnccl.so.2*' 2>/dev/null | xargs -r -n1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="$work/lib:${cuda_dirs}${LD_LIBRARY_PATH:-}"
{
  nvidia-smi
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  ldd "$work/bin/test_cuda_stage" | grep -E 'not found|cublas|cudart|nccl'
  echo "CUDA plug-in (the engine loads it from ../lib beside the binaries):"
  ldd "$work/lib/libconveyor_cuda_plugin.so" | grep -E 'not found|cublas|cudart|nccl'
} 2>&1 | tee "$out/environment.log"

status=0
for t in "$work"/bin/test_*; do
  name=$(basename "$t")
  echo "== $name"
  timeout 900 "$t" --gtest_output="xml:$out/$name.xml" >"$out/$name.log" 2>&1
  rc=$?
  tail -n 3 "$out/$name.log"
  [ $rc -eq 0 ] || { echo "$name FAILED (exit $rc)"; status=1; }
done | tee "$out/tests.log"
grep -q FAILED "$out/tests.log" && status=1

if [ "${2:-}" != "--no-bench" ]; then
  echo "== bench_engine_cuda --quick"
  timeout 600 "$work/bin/bench_engine_cuda" --config configs/llama-3-8b.json --quick \
    --json "$out/bench_quick.json" 2>&1 | tee "$out/bench_quick.log" || status=1
  echo "== bench_engine_cuda (8B shape)"
  timeout 1200 "$work/bin/bench_engine_cuda" --config configs/llama-3-8b.json \
    --json "$out/bench_engine_cuda.json" 2>&1 | tee "$out/bench_engine_cuda.log" || status=1
fi
exit $status
