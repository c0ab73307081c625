#!/usr/bin/env bash
# Packs the GPU checks for a machine that has a GPU and the CUDA 13 runtime but none of conveyor's
# Debian packages (and no network): builds the gpu-labelled tests, bench_engine_cuda and
# conveyor-generate here for sm_90 (H100/H200), and writes them with the shared libraries they
# need beyond glibc and CUDA into .gpu/bundle.tar.xz (a few tens of MiB; keep .gpu/ out of git).
# On the GPU machine: scripts/gpu-run.sh OUT_DIR. Usage: scripts/gpu-pack.sh [cuda-arch, e.g. 90]
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${1:-90}"
build=build-gpu-pack
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch" \
  -DCONVEYOR_NATIVE=OFF -DCONVEYOR_BUILD_BENCHMARKS=ON
gpu_tests=$(cd tests && ls gpu/test_*.cpp multi_gpu/test_*.cpp | xargs -n1 basename | sed 's/\.cpp$//')
cmake --build "$build" -j "$(nproc)" --target $gpu_tests bench_engine_cuda conveyor-generate \
  conveyor-make-model conveyor_cuda_plugin

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
for t in $gpu_tests; do cp "$build/tests/$t" "$stage/bin/"; done
cp "$build/benchmarks/bench_engine_cuda" "$build/examples/conveyor-generate" \
  "$build/examples/conveyor-make-model" "$stage/bin/"
# The engine loads the CUDA backend from ../lib beside its binaries (src/engine/cuda_plugin_loader).
cp "$build/lib/libconveyor_cuda_plugin.so" "$stage/lib/"
strip "$stage"/bin/* "$stage/lib/libconveyor_cuda_plugin.so"
# Shared libraries from Debian packages (OpenBLAS, fmt, spdlog, gfortran, ...): everything ldd
# resolves except the C runtime and CUDA, which the GPU machine brings in versions of its own.
for bin in "$stage"/bin/* "$stage/lib/libconveyor_cuda_plugin.so"; do
  ldd "$bin" | awk '$3 ~ /^\// {print $3}'
done | sort -u | grep -vE '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so|libcuda|libcudart|libcublas|libnccl' |
  while read -r lib; do cp -L "$lib" "$stage/lib/"; done
mkdir -p .gpu
tar -C "$stage" -cJf .gpu/bundle.tar.xz bin lib
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >>"$exclude"
ls -la .gpu/bundle.tar.xz
echo "carry .gpu and run: scripts/gpu-run.sh \$OUT"
