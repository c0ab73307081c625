#!/usr/bin/env bash
# A rank killed with SIGKILL mid-generation: mpirun must end with a non-zero status within the
# link timeout plus a margin, and no process of the job may be left behind.
# Usage: kill_rank.sh BUILD_DIR [MPIRUN]. Exit 77 (skip) without mpirun.
set -u
build=$1
mpirun=${2:-mpirun}
command -v "$mpirun" >/dev/null || { echo "skip: $mpirun not found"; exit 77; }
bin=$build/examples/conveyor-generate
work=$(mktemp -d /tmp/conveyor-kill-XXXXXX)
trap 'rm -rf "$work"' EXIT
# A random model big enough that decoding thousands of tokens takes many seconds on two cores.
cp "$(dirname "$0")/long_decode.json" "$work/config.json"
timeout_ms=3000
start=$(date +%s.%N)
"$mpirun" -np 2 --oversubscribe "$bin" --model "$work/config.json" --random-weights 3 \
  --prompt-ids 5,6,7,8 --max-new-tokens 4000 --ignore-eos --max-context 8192 \
  --link-timeout-ms $timeout_ms > "$work/out.log" 2>&1 &
job=$!
# Wait until generation runs, then kill rank 1.
victim=""
for _ in $(seq 1 200); do
  sleep 0.1
  for pid in $(pgrep -f "$work/config.json"); do
    if tr '\0' '\n' < /proc/$pid/environ 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then
      victim=$pid
    fi
  done
  [[ -n $victim ]] && grep -q "^pipeline:" "$work/out.log" && break
done
if [[ -z $victim ]]; then
  echo "FAIL: rank 1 never started"; cat "$work/out.log"; kill $job 2>/dev/null; exit 1
fi
sleep 1
killed=$(date +%s.%N)
kill -9 "$victim"
# Link timeout plus a margin.
limit=$(( timeout_ms / 1000 + 30 ))
for _ in $(seq 1 $(( limit * 10 ))); do
  kill -0 $job 2>/dev/null || break
  sleep 0.1
done
if kill -0 $job 2>/dev/null; then
  echo "FAIL: mpirun still runs ${limit} s after rank 1 was killed"; kill -9 $job; exit 1
fi
wait $job
status=$?
ended=$(date +%s.%N)
left=$(pgrep -f "$work/config.json" | wc -l)
echo "--- job output (tail) ---"; tail -15 "$work/out.log"
awk -v s=$status -v k="$killed" -v e="$ended" -v b="$start" -v l="$left" 'BEGIN {
  printf "mpirun exit status %d, %.1f s after the kill (%.1f s in all); %d processes left\n",
    s, e - k, e - b, l }'
[[ $status -ne 0 ]] || { echo "FAIL: mpirun exited 0 after a rank was killed"; exit 1; }
[[ $left -eq 0 ]] || { echo "FAIL: processes left behind"; pgrep -af "$work/config.json"; exit 1; }
grep -q "^request 0:" "$work/out.log" && { echo "FAIL: the generation finished"; exit 1; }
echo PASS
