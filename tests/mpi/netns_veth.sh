#!/usr/bin/env bash
# Two hosts on one machine: rank 0 and rank 1 in two network namespaces joined by a veth pair,
# MPI's TCP transport only (no shared memory), bound to the veth addresses. Generation must
# match one process; then the link is taken down mid-run and both sides must end with a clear
# error within the link timeout (plus a margin).
# Usage: netns_veth.sh BUILD_DIR [MPIRUN]. Exit 77 (skip) where namespaces cannot be made.
set -u
build=$1
mpirun=${2:-mpirun}
bin=$build/examples/conveyor-generate
command -v "$mpirun" >/dev/null || { echo "skip: $mpirun not found"; exit 77; }
command -v ip >/dev/null || { echo "skip: ip (iproute2) not found"; exit 77; }
tag=cv$$
ns0=${tag}a
ns1=${tag}b
work=$(mktemp -d /tmp/conveyor-netns-XXXXXX)
cleanup() {
  ip netns del $ns0 2>/dev/null
  ip netns del $ns1 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
if ! ip netns add $ns0 2>/dev/null || ! ip netns add $ns1 2>/dev/null; then
  echo "skip: cannot create network namespaces here (needs root and CAP_SYS_ADMIN)"; exit 77
fi
ip link add ${tag}0 type veth peer name ${tag}1 || { echo "skip: cannot create a veth pair"; exit 77; }
ip link set ${tag}0 netns $ns0
ip link set ${tag}1 netns $ns1
ip -n $ns0 addr add 10.231.0.1/24 dev ${tag}0
ip -n $ns1 addr add 10.231.0.2/24 dev ${tag}1
for ns in $ns0 $ns1; do ip -n $ns link set lo up; done
ip -n $ns0 link set ${tag}0 up
ip -n $ns1 link set ${tag}1 up

# A random model big enough that decoding thousands of tokens takes many seconds on two cores.
cp "$(dirname "$0")/long_decode.json" "$work/config.json"
# Each namespace is a host with its own hostname: mpirun runs in the first and starts Open MPI's
# daemon in the second through a stand-in for ssh; ranks talk TCP over the veth addresses only.
cat > "$work/netns-rsh" <<RSH
#!/bin/sh
# Open MPI's rsh launcher calls: netns-rsh [options] HOST COMMAND...
while [ "\${1#-}" != "\$1" ]; do shift; done
host=\$1; shift
case \$host in
  10.231.0.1) ns=$ns0 ;;
  10.231.0.2) ns=$ns1 ;;
  *) echo "netns-rsh: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec \$ns unshare --uts sh -c "hostname host-\$ns; \$*"
RSH
chmod +x "$work/netns-rsh"
printf '10.231.0.1 slots=1\n10.231.0.2 slots=1\n' > "$work/hosts"
command -v unshare >/dev/null || { echo "skip: unshare (util-linux) not found"; exit 77; }
args=(--model "$work/config.json" --random-weights 3 --max-context 8192 --ignore-eos)
two_hosts() {
  ip netns exec $ns0 unshare --uts "$SHELL" -c 'hostname host-'$ns0'; exec "$@"' sh \
    "$mpirun" --mca plm_rsh_agent "$work/netns-rsh" --hostfile "$work/hosts" --map-by node \
    --mca btl tcp,self --mca btl_tcp_if_include 10.231.0.0/24 \
    --mca oob_tcp_if_include 10.231.0.0/24 --output-filename "$work/ranks" -np 2 "$bin" "$@"
}

# 1. The same tokens as one process.
one=$("$bin" "${args[@]}" --stages 2 --prompt-ids 5,6,7,8 --max-new-tokens 12 2>&1 | grep "^request 0:")
two=$(two_hosts "${args[@]}" --prompt-ids 5,6,7,8 --max-new-tokens 12 2>&1 | tee "$work/two.log" | grep "^request 0:")
grep -o "rank [01] on host-[a-z0-9]*" "$work/two.log"
echo "one process: $one"
echo "two hosts:   $two"
[[ -n $one && "$one" == "$two" ]] || { echo "FAIL: tokens differ"; cat "$work/two.log"; exit 1; }

# One hop's cost over the veth pair (docs/benchmarks.md), when the benchmarks are built.
hop=$build/benchmarks/bench_mpi_hop
if [[ -x $hop ]]; then
  ip netns exec $ns0 unshare --uts "$SHELL" -c 'hostname host-'$ns0'; exec "$@"' sh \
    "$mpirun" --mca plm_rsh_agent "$work/netns-rsh" --hostfile "$work/hosts" --map-by node \
    --mca btl tcp,self --mca btl_tcp_if_include 10.231.0.0/24 \
    --mca oob_tcp_if_include 10.231.0.0/24 -np 2 "$hop" 2>/dev/null || true
fi

# 2. The link goes down mid-run: both ranks must end with an error within the timeout. Each
# rank's output goes to its own file (written on its host: the network to mpirun is down).
timeout_ms=3000
two_hosts "${args[@]}" --prompt-ids 5,6,7,8 --max-new-tokens 4000 --link-timeout-ms $timeout_ms \
  > "$work/down.log" 2>&1 &
job=$!
ranks() {  # the pids of this job's ranks
  for pid in $(pgrep -f "$work/config.json"); do
    tr '\0' '\n' < /proc/$pid/environ 2>/dev/null | grep -q '^OMPI_COMM_WORLD_RANK=' && echo $pid
  done
}
for _ in $(seq 1 100); do
  sleep 0.1
  grep -q "^pipeline:" "$work/down.log" && break
done
sleep 1
[[ $(ranks | wc -l) -eq 2 ]] || { echo "FAIL: expected two ranks running"; cat "$work/down.log"; exit 1; }
down=$(date +%s.%N)
ip -n $ns1 link set ${tag}1 down
limit=$(( timeout_ms / 1000 * 3 + 20 ))
for _ in $(seq 1 $(( limit * 10 ))); do
  [[ -z $(ranks) ]] && break
  sleep 0.1
done
ended=$(date +%s.%N)
left=$(ranks | wc -l)
kill -0 $job 2>/dev/null && mpirun_state="mpirun still waits for the unreachable daemon (killed)" \
  || mpirun_state="mpirun ended by itself"
# Whatever still runs in the namespaces (mpirun, the remote daemon): ended here.
for ns in $ns0 $ns1; do ip netns pids $ns | xargs -r kill -9; done
wait $job 2>/dev/null
echo "--- each rank's error after the link went down ---"
for f in "$work"/ranks/1/rank.*/stderr "$work"/down.log; do grep -h "^rank [01] (" "$f" 2>/dev/null; done | sort -u
awk -v d="$down" -v e="$ended" -v l="$left" 'BEGIN {
  printf "ranks left: %d, %.1f s after the link went down\n", l, e - d }'
echo "$mpirun_state"
[[ $left -eq 0 ]] || { echo "FAIL: ranks still running after ${limit} s"; exit 1; }
for r in 0 1; do
  cat "$work"/ranks/1/rank.$r/stderr "$work/down.log" 2>/dev/null | grep -q "^rank $r (host-" ||
    { echo "FAIL: rank $r printed no error"; ls -R "$work/ranks"; exit 1; }
done
echo PASS
