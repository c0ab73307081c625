#!/usr/bin/env bash
# Two MPI ranks x 1 thread against two in-process stages x 1 thread, same model (SmolLM2-135M,
# dequantized to fp32), same run, alternating: prefill throughput with M = 8 micro-batches
# (8 prompts of 128 tokens) and the decode step time of one sequence. Then one hop's cost
# (bench_mpi_hop) over shared memory and TCP on loopback. Prints a table for docs/benchmarks.md.
# Usage: benchmarks/mpi_vs_local.sh [BUILD_DIR] [REPEATS]
set -euo pipefail
build=${1:-build}
repeats=${2:-5}
gen=$build/examples/conveyor-generate
model=${CONVEYOR_CACHE:-$HOME/.cache/conveyor}/SmolLM2-135M-Instruct.Q4_1.gguf
[[ -f $model ]] || { echo "fetch the model first: scripts/fetch-assets.sh smollm2"; exit 3; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work/prompts.txt" <<'PY'
import random, sys
random.seed(7)
with open(sys.argv[1], "w") as f:
    for _ in range(8):
        f.write(",".join(str(random.randrange(100, 49000)) for _ in range(128)) + "\n")
PY
common=(--model "$model" --threads 1 --quiet --ignore-eos)
prefill=(--prompt-ids-file "$work/prompts.txt" --max-new-tokens 1 --microbatches 8 --chunking never)
decode=(--prompt-ids 1,2,3,4,5,6,7,8 --max-new-tokens 64)
field() { sed -n "s/.*$1 [0-9]* tok in [0-9.]* s = \([0-9.]*\) tok\/s.*/\1/p"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A pre dec
for r in $(seq 1 "$repeats"); do
  for mode in local mpi-shm mpi-tcp; do
    case $mode in
      local) run=("$gen" --stages 2) ;;
      mpi-shm) run=(mpirun -np 2 --oversubscribe "$gen") ;;
      mpi-tcp) run=(mpirun -np 2 --oversubscribe --mca btl tcp,self "$gen") ;;
    esac
    pre[$mode]+="$("${run[@]}" "${common[@]}" "${prefill[@]}" 2>/dev/null | field prefill) "
    dec[$mode]+="$("${run[@]}" "${common[@]}" "${decode[@]}" 2>/dev/null | field decode) "
  done
done
printf '%-22s %16s %10s %18s %10s\n' "2 stages x 1 thread" "prefill tok/s" "vs local" "decode ms/token" "vs local"
base_p=$(echo ${pre[local]} | tr ' ' '\n' | median)
base_d=$(echo ${dec[local]} | tr ' ' '\n' | median)
for mode in local mpi-shm mpi-tcp; do
  p=$(echo ${pre[$mode]} | tr ' ' '\n' | median)
  d=$(echo ${dec[$mode]} | tr ' ' '\n' | median)
  awk -v m=$mode -v p=$p -v d=$d -v bp=$base_p -v bd=$base_d 'BEGIN {
    printf "%-22s %16.1f %9.3fx %18.2f %9.3fx\n", m, p, p / bp, 1000 / d, bd / d }'
done
echo "(medians of $repeats runs each, alternating; prefill: 8 x 128 tokens, M = 8; decode: one sequence, 64 tokens)"
echo
echo "one hop, shared memory (Open MPI vader):"
mpirun -np 2 --oversubscribe "$build/benchmarks/bench_mpi_hop" 2>/dev/null
echo "one hop, TCP over loopback:"
mpirun -np 2 --oversubscribe --mca btl tcp,self "$build/benchmarks/bench_mpi_hop" 2>/dev/null
