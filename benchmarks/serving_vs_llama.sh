#!/usr/bin/env bash
# conveyor-serve against llama.cpp's llama-server on this machine, in one run: the same SmolLM2
# weights (an F32 GGUF made from the Q4_1 one, so both compute in fp32), the same cores, 16
# parallel slots, the same streamed load from bench_serving.
#
# llama-server is built from the llama.cpp sources inside PyPI's llama-cpp-python sdist, in a
# scratch folder outside the repository (LLAMA_DIR, default /tmp/conveyor-llama; reused).
#
# Usage: benchmarks/serving_vs_llama.sh [BUILD_DIR] [OUT_DIR]
#   BUILD_DIR: conveyor's build (default build), with conveyor-serve and bench_serving
#   OUT_DIR:   JSON per run and summary.txt (default build/serving-bench)
# Environment: LLAMA_DIR, LLAMA_CPP_PYTHON_VERSION (default 0.3.36), REQUESTS (default 32),
# CLIENTS (16), MAX_TOKENS (64), RATE (arrivals/s of the fixed-rate load, default 1.5).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
out=${2:-$build/serving-bench}
llama_dir=${LLAMA_DIR:-/tmp/conveyor-llama}
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
requests=${REQUESTS:-32}
clients=${CLIENTS:-16}
max_tokens=${MAX_TOKENS:-64}
rate=${RATE:-1.5}
cache=${CONVEYOR_CACHE:-$HOME/.cache/conveyor}
q4=$cache/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$out" "$llama_dir"

[ -f "$q4" ] || scripts/fetch-assets.sh smollm2
for binary in "$build/examples/conveyor-serve" "$build/benchmarks/bench_serving"; do
  [ -x "$binary" ] || { echo "missing $binary: build conveyor first"; exit 1; }
done

# ---- llama-server from the llama-cpp-python sdist, and the F32 weights both servers load ------
. benchmarks/llama_cpp.sh
llama_cpp_build "$llama_dir" "$version" llama-server llama-quantize
server=$llama_dir/build/bin/llama-server
f32=$llama_dir/SmolLM2-135M-Instruct.F32.gguf
llama_cpp_f32 "$llama_dir" "$q4" "$f32"

port=18400
wait_ready() {  # url, pid
  for _ in $(seq 1 600); do
    curl -sf "$1/health" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# One server configuration: start it, run the all-at-once and fixed-rate loads, stop it.
bench() {  # label, command...
  local label=$1
  shift
  port=$((port + 1))
  local url=http://127.0.0.1:$port
  "$@" --port "$port" >"$out/$label.server.log" 2>&1 &
  local pid=$!
  if ! wait_ready "$url" "$pid"; then
    cat "$out/$label.server.log"
    echo "$label did not start"
    exit 1
  fi
  "$build/benchmarks/bench_serving" --url "$url" --label "$label burst" --clients "$clients" \
    --requests "$requests" --max-tokens "$max_tokens" --json "$out/$label.burst.json" | tee -a "$out/summary.txt"
  "$build/benchmarks/bench_serving" --url "$url" --label "$label rate $rate/s" --rate "$rate" \
    --requests "$requests" --max-tokens "$max_tokens" --json "$out/$label.rate.json" | tee -a "$out/summary.txt"
  kill -TERM "$pid"
  wait "$pid" || true
}

: >"$out/summary.txt"
{
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "llama.cpp: as vendored in the llama-cpp-python $version sdist; weights: $f32"
  echo "load: $requests requests x $max_tokens tokens (ignore_eos), burst with $clients clients, then $rate arrivals/s"
} | tee -a "$out/summary.txt"

ctx=$((16 * 512))
bench llama-server "$server" -m "$f32" -t "$(nproc)" -tb "$(nproc)" -np 16 -c "$ctx" \
  --host 127.0.0.1 --no-webui
common=(--model "$f32" --model-name smollm2 --max-batch 16 --max-context 512 --log-level warn)
bench "conveyor S=1x2" "$build/examples/conveyor-serve" "${common[@]}" --stages 1 --threads 2
bench "conveyor S=2x1 strict" "$build/examples/conveyor-serve" "${common[@]}" --stages 2 --threads 1
bench "conveyor S=2x1 cohorts" "$build/examples/conveyor-serve" "${common[@]}" --stages 2 \
  --threads 1 --decode-mode cohorts
echo "wrote $out/summary.txt and one JSON per run"
