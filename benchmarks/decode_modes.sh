#!/usr/bin/env bash
# Decode throughput of SmolLM2 on this machine's cores in three shapes, in one run (repeats
# interleaved, so drift on a shared machine hits all alike): one stage with every core
# (S=1 x T threads), S stages x 1 thread with strict decode, and the same with one cohort per
# stage. Prints tokens/s and the measured decode bubble fraction (median of the repeats) and the
# ratios the serving issue asks for.
#
# Usage: benchmarks/decode_modes.sh [BUILD_DIR]
# Environment: BATCHES (default "8 32"), NEW_TOKENS (64), REPEATS (3), STAGES (2).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
batches=${BATCHES:-8 32}
new_tokens=${NEW_TOKENS:-64}
repeats=${REPEATS:-3}
stages=${STAGES:-2}
cores=$(nproc)
model=${CONVEYOR_CACHE:-$HOME/.cache/conveyor}/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$model" ] || scripts/fetch-assets.sh smollm2
generate=$build/examples/conveyor-generate

# One run: prints "tokens_per_s bubble".
run() {  # batch, options...
  local batch=$1
  shift
  local prompts=()
  for i in $(seq 1 "$batch"); do
    prompts+=(--prompt "Story $i: once upon a time, in a town by the sea,")
  done
  "$generate" --model "$model" --max-new-tokens "$new_tokens" --ignore-eos --max-batch "$batch" \
    --max-context 256 "$@" "${prompts[@]}" 2>&1 |
    awk '/decode [0-9]+ tok in/ { for (i = 1; i <= NF; ++i) if ($i == "tok/s") rate = $(i - 1) }
         /^decode stage balance/ { in_decode = 1 }
         in_decode && /bubble fraction: measured/ { bubble = $4; sub(/,/, "", bubble) }
         END { print rate, bubble }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "machine: $cores cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "SmolLM2-135M-Instruct (Q4_1 GGUF, fp32 compute), $new_tokens new tokens per prompt, $repeats repeats"
for batch in $batches; do
  declare -A rates=() bubbles=()
  for r in $(seq 1 "$repeats"); do
    for shape in one strict cohorts; do
      case $shape in
        one) opts=(--stages 1 --threads "$cores") ;;
        strict) opts=(--stages "$stages" --threads 1) ;;
        cohorts) opts=(--stages "$stages" --threads 1 --decode-mode cohorts) ;;
      esac
      read -r rate bubble < <(run "$batch" "${opts[@]}")
      rates[$shape]+="$rate "
      bubbles[$shape]+="$bubble "
    done
  done
  declare -A med=() bub=()
  for shape in one strict cohorts; do
    med[$shape]=$(tr ' ' '\n' <<<"${rates[$shape]}" | grep . | median)
    bub[$shape]=$(tr ' ' '\n' <<<"${bubbles[$shape]}" | grep . | median)
  done
  printf "batch %3d | S=1x%d %7.1f tok/s | S=%dx1 strict %7.1f tok/s (bubble %s) | S=%dx1 cohorts %7.1f tok/s (bubble %s)\n" \
    "$batch" "$cores" "${med[one]}" "$stages" "${med[strict]}" "${bub[strict]}" "$stages" \
    "${med[cohorts]}" "${bub[cohorts]}"
  awk -v c="${med[cohorts]}" -v s="${med[strict]}" -v o="${med[one]}" -v b="$batch" \
    'BEGIN { printf "batch %3d | cohorts / strict = %.2f, cohorts / S=1 = %.2f\n", b, c / s, c / o }'
  unset rates bubbles med bub
done
