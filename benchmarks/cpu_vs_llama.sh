#!/usr/bin/env bash
# conveyor's CPU backend against llama.cpp on this machine, in one run, on the same weights:
# SmolLM2-135M-Instruct as an F32 GGUF (made from the Q4_1 file with llama-quantize) for both.
# Prints prefill and decode tokens/s at 1 and 2 threads (128-token prompt, 64 new tokens), one
# 2048-token prompt at 1 thread, a batch of 8 sequences (llama-batched-bench), conveyor with
# bf16 weights, and peak resident memory and system time of each process, with the ratios; then
# decode on the `small` preset (random weights, ~125M parameters, written once by
# conveyor-make-model --gguf as an F32 GGUF with a placeholder vocabulary, the file both run).
#
# llama.cpp is built from the sources inside PyPI's llama-cpp-python sdist, in a scratch folder
# outside the repository (LLAMA_DIR, default /tmp/conveyor-llama; shared with
# serving_vs_llama.sh). CI does not run this.
#
# Usage: benchmarks/cpu_vs_llama.sh [BUILD_DIR]
# Environment: LLAMA_DIR, LLAMA_CPP_PYTHON_VERSION (0.3.36), REPEATS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
llama_dir=${LLAMA_DIR:-/tmp/conveyor-llama}
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
repeats=${REPEATS:-3}
cache=${CONVEYOR_CACHE:-$HOME/.cache/conveyor}
q4=$cache/SmolLM2-135M-Instruct.Q4_1.gguf
generate=$build/examples/conveyor-generate
[ -f "$q4" ] || scripts/fetch-assets.sh smollm2
[ -x "$generate" ] || { echo "missing $generate: build conveyor first"; exit 1; }
mkdir -p "$llama_dir"

. benchmarks/llama_cpp.sh
llama_cpp_build "$llama_dir" "$version" llama-bench llama-batched-bench llama-quantize
bin=$llama_dir/build/bin
f32=$llama_dir/SmolLM2-135M-Instruct.F32.gguf
llama_cpp_f32 "$llama_dir" "$q4" "$f32"
small=$llama_dir/small-preset.F32.gguf
[ -f "$small" ] || "$build/examples/conveyor-make-model" --preset small --out "$llama_dir/small-preset" \
  --gguf "$small" > /dev/null
model=$f32  # what conveyor_run and llama_bench run

# Runs a command; prints "peak_rss_MiB system_seconds" of it (its children included).
measure() {
  python3 - "$@" <<'EOF'
import resource, subprocess, sys
subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{r.ru_maxrss / 1024:.0f} {r.ru_stime:.2f}")
EOF
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ids() { seq 1 "$1" | awk '{ printf "%s%d", (NR > 1 ? "," : ""), ($1 * 7919) % 31000 + 100 }'; }

# conveyor: "prefill_tok_s decode_tok_s" of one run.
conveyor_run() {  # threads, prompt tokens, new tokens, batch, extra options...
  local threads=$1 prompt=$2 new=$3 batch=$4
  shift 4
  local prompts=()
  for b in $(seq 1 "$batch"); do prompts+=(--prompt-ids "$(ids "$prompt")"); done
  "$generate" --model "$model" --stages 1 --threads "$threads" --max-new-tokens "$new" \
    --ignore-eos --max-batch "$batch" --max-context $((prompt + new + 8)) --chunking never "$@" \
    "${prompts[@]}" 2>&1 |
    awk '/prefill [0-9]+ tok in/ { for (i = 1; i <= NF; ++i) if ($i == "tok/s") r[++n] = $(i - 1) }
         END { print r[1], (n > 1 ? r[2] : 0) }'
}
# Runs each command (a string, eval'd, printing one number per field) once per repeat, in turn,
# so the machine's drift (it is shared and noisy) falls on all of them alike; prints the median
# of every command's fields, in order.
interleaved() {
  local dir i
  dir=$(mktemp -d)
  for _ in $(seq 1 "$repeats"); do
    i=0
    for cmd in "$@"; do
      eval "$cmd" >>"$dir/$i"
      i=$((i + 1))
    done
  done
  for i in $(seq 0 $(($# - 1))); do
    for field in $(seq 1 "$(head -n 1 "$dir/$i" | wc -w)"); do
      cut -d' ' -f"$field" "$dir/$i" | median | tr '\n' ' '
    done
  done
  rm -rf "$dir"
  echo
}
# llama-bench: tokens/s of one test (pp or tg) at some threads. llama-bench runs its default
# pp512 and tg128 unless told otherwise, so the other test is set to 0.
llama_bench() {  # threads, -p N | -n N
  local other=-n
  [ "$2" = -n ] && other=-p
  "$bin/llama-bench" -m "$model" -t "$1" "$2" "$3" "$other" 0 -r 1 -o json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["avg_ts"])'
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "weights: $f32 (both); llama.cpp vendored in llama-cpp-python $version"
echo "median of $repeats, the runs of each row interleaved (conveyor, llama.cpp, conveyor, ...)"
printf "%-40s %12s %12s %8s\n" "" "conveyor" "llama.cpp" "ratio"
row() { awk -v n="$1" -v c="$2" -v l="$3" 'BEGIN { printf "%-40s %12.1f %12.1f %8.2f\n", n, c, l, c / l }'; }
batched() {
  "$bin/llama-batched-bench" -m "$f32" -t "$(nproc)" -c 4096 -npp 128 -ntg 64 -npl 8 2>/dev/null |
    awk -F'|' '/^\|[ ]+128/ { gsub(/ /, "", $9); print $9 }' | head -n 1
}
for t in 1 2; do
  read -r c l < <(interleaved "conveyor_run $t 128 1 1 | cut -d' ' -f1" "llama_bench $t -p 128")
  row "prefill 128 tok, $t thread(s)" "$c" "$l"
  read -r c b l < <(interleaved "conveyor_run $t 128 65 1 | cut -d' ' -f2" \
    "conveyor_run $t 128 65 1 --dtype bf16 | cut -d' ' -f2" "llama_bench $t -n 64")
  row "decode 64 tok, $t thread(s)" "$c" "$l"
  row "decode bf16 weights, $t thread(s)" "$b" "$l"
  row "  bf16 / conveyor f32 decode, $t thread(s)" "$b" "$c"
done
read -r c l < <(interleaved "conveyor_run 1 2048 1 1 | cut -d' ' -f1" "llama_bench 1 -p 2048")
row "prefill 2048 tok, 1 thread" "$c" "$l"
read -r c l < <(interleaved "conveyor_run $(nproc) 128 65 8 | cut -d' ' -f2" batched)
row "batch 8 decode, $(nproc) threads" "$c" "$l"

echo
echo "memory and system time (128-token prompt, 64 new tokens, 2 threads; medians, interleaved)"
read -r c_rss c_sys b_rss b_sys l_rss l_sys < <(interleaved \
  "measure $generate --model $f32 --threads 2 --max-new-tokens 64 --ignore-eos --prompt-ids $(ids 128)" \
  "measure $generate --model $f32 --threads 2 --max-new-tokens 64 --ignore-eos --dtype bf16 --prompt-ids $(ids 128)" \
  "measure $bin/llama-bench -m $f32 -t 2 -p 128 -n 64 -r 1")
printf "%-20s %10s %10s\n" "" "peak MiB" "system s"
printf "%-20s %10s %10s\n" "conveyor f32" "$c_rss" "$c_sys" "conveyor bf16" "$b_rss" "$b_sys" \
  "llama.cpp" "$l_rss" "$l_sys"

echo
echo "small preset ($small, both)"
model=$small
for t in 1 2; do
  read -r c l < <(interleaved "conveyor_run $t 128 65 1 | cut -d' ' -f2" "llama_bench $t -n 64")
  row "small: decode 64 tok, $t thread(s)" "$c" "$l"
done
