#!/usr/bin/env bash
# Cluster mode against the embedded mode on this machine, the same job on 2 workers, rounds
# alternating (embedded, cluster, embedded, ...):
#   - median step time (step_s of train_log.jsonl, first 2 steps dropped) of each run, the
#     median over runs per mode, and their ratio (target: cluster <= 1.02 x embedded);
#   - submit -> first step logged (cluster) and start -> first step logged (embedded);
#   - CPU seconds (user + system) of every tessera process of the run, from /usr/bin/time:
#     less noisy than wall time on a shared machine, and what the control plane costs;
#   - etcd requests while the job trains (the service's store is etcd here): KV calls (Range,
#     Put, Txn, DeleteRange) and lease keep-alives counted from etcd's own /metrics between
#     the first and the last logged step, with no client polling (target: no KV call per step).
#   [ROUNDS=3] [STEPS=30] [TESSERA_BIN=target/debug/tessera] tools/bench/cluster_vs_embedded.sh [CONFIG]
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${1:-configs/bench-fsdp-tiny.toml}
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-30}
BIN=$(realpath "${TESSERA_BIN:-target/debug/tessera}")
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
# etcd's client is gRPC, which honours proxy variables: this is all local.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY

job() {
  local name=$1
  mkdir -p "$WORK/$name"
  sed -e "s|^output_dir = .*|output_dir = \"$WORK/$name/out\"|" \
      -e "s|^total_steps = .*|total_steps = $STEPS|" \
      -e "s|^text_tokenizer = \"\\(.*\\)\"|text_tokenizer = \"$(cd "$(dirname "$CONFIG")" && pwd)/\\1\"|" "$CONFIG" > "$WORK/$name/job.toml"
  echo "$WORK/$name/job.toml"
}

median_step() {
  python3 -c "
import json,statistics
xs=[json.loads(l)['step_s'] for l in open('$1')][2:]
print(f'{statistics.median(xs):.4f}')"
}

first_step_ms() {
  python3 -c "
import json
print(json.loads(open('$1').readline())['ts_ms'])"
}

now_ms() { python3 -c 'import time; print(int(time.time()*1000))'; }

wait_for_file() {
  for _ in $(seq 1 600); do [ -s "$1" ] && return 0; sleep 0.1; done
  echo "timed out waiting for $1" >&2; return 1
}

etcd_counts() {
  # KV calls and lease keep-alive messages handled so far.
  curl -s --noproxy '*' "http://127.0.0.1:$ETCD_PORT/metrics" | python3 -c "
import sys,re
kv=ka=0
for l in sys.stdin:
    m=re.match(r'grpc_server_handled_total\{grpc_code=\"\w+\",grpc_method=\"(\w+)\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"\} (\S+)', l)
    if m: kv+=float(m.group(2))
    m=re.match(r'grpc_server_msg_received_total\{grpc_method=\"LeaseKeepAlive\",grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"\} (\S+)', l)
    if m: ka+=float(m.group(1))
print(int(kv), int(ka))"
}

ETCD_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PEER_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
etcd --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$PEER_PORT" >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -s --noproxy '*' "http://127.0.0.1:$ETCD_PORT/health" | grep -q true && break; sleep 0.1; done

# Waits until train log $1 has $STEPS lines, looking once a second: the same watcher runs in
# both modes, so that its own cost (a process per look) weighs on both alike.
watch_log() {
  for _ in $(seq 1 1200); do [ -f "$1" ] && [ "$(wc -l < "$1")" -ge "$STEPS" ] && return 0; sleep 1; done
  echo "timed out waiting for $1" >&2; return 1
}

# CPU seconds (user + system) that /usr/bin/time wrote to each of the files given, summed.
cpu_s() {
  python3 -c "
import sys
t=0.0
for f in sys.argv[1:]:
    for l in open(f):
        p=l.split()
        if len(p)==2:
            try: t+=float(p[0])+float(p[1])
            except ValueError: pass
print(f'{t:.1f}')" "$@"
}

run_embedded() {
  local J; J=$(job "embedded-$1")
  local t0; t0=$(now_ms)
  # The train process waits for its workers: its children's CPU time is in its figure.
  /usr/bin/time -f '%U %S' -o "$WORK/cpu-embedded-$1" "$BIN" train "$J" --workers 2 --no-resume 2>"$WORK/embedded-$1.log" &
  local p=$!; PIDS+=($p)
  local out="$WORK/embedded-$1/out/train_log.jsonl"
  watch_log "$out"
  wait "$p"
  local cpu; cpu=$(cpu_s "$WORK/cpu-embedded-$1")
  echo "embedded $1: median step $(median_step "$out") s, start -> first step $(( $(first_step_ms "$out") - t0 )) ms, CPU $cpu s (train + its 2 workers)"
  median_step "$out" >> "$WORK/embedded.medians"
  echo "$cpu" >> "$WORK/embedded.cpu"
}

run_cluster() {
  local J; J=$(job "cluster-$1")
  /usr/bin/time -f '%U %S' -o "$WORK/cpu-coordinator-$1" "$BIN" coordinator --listen 127.0.0.1:0 --etcd "http://127.0.0.1:$ETCD_PORT" --etcd-prefix "/bench-$1" \
    --token-file "$WORK/token" --addr-file "$WORK/addr-$1" 2>"$WORK/coordinator-$1.log" &
  local c=$!; PIDS+=($c)
  wait_for_file "$WORK/addr-$1"
  export TESSERA_COORDINATOR; TESSERA_COORDINATOR=$(cat "$WORK/addr-$1")
  export TESSERA_TOKEN_FILE="$WORK/token"
  local ws=()
  for i in 1 2; do
    /usr/bin/time -f '%U %S' -o "$WORK/cpu-worker-$1-$i" "$BIN" worker --name "w$i" --threads 1 2>"$WORK/worker-$1-$i.log" &
    ws+=($!); PIDS+=($!)
  done
  # Both workers in the pool before the submit, as in the embedded run (its workers start first).
  for _ in $(seq 1 100); do [ "$(grep -c 'joined the pool' "$WORK/coordinator-$1.log" || true)" -ge 2 ] && break; sleep 0.1; done
  local t0; t0=$(now_ms)
  "$BIN" submit "$J" --workers 2:2 >/dev/null
  local out="$WORK/cluster-$1/out/train_log.jsonl"
  wait_for_file "$out"
  # Counted from the first logged step to the last one, with no client asking anything (a
  # `tessera wait` polling the service would read the store twice a second).
  read -r kv0 ka0 < <(etcd_counts)
  watch_log "$out"
  read -r kv1 ka1 < <(etcd_counts)
  local steps; steps=$(( $(wc -l < "$out") - 1 ))
  "$BIN" wait 1 --timeout-s 600 >/dev/null
  # SIGTERM to the tessera processes under each /usr/bin/time, which then writes their figures.
  for p in "${ws[@]}" "$c"; do pkill -TERM -P "$p" 2>/dev/null || true; done
  wait "${ws[@]}" "$c" 2>/dev/null || true
  local cpu; cpu=$(cpu_s "$WORK/cpu-coordinator-$1" "$WORK/cpu-worker-$1-1" "$WORK/cpu-worker-$1-2")
  echo "cluster  $1: median step $(median_step "$out") s, submit -> first step $(( $(first_step_ms "$out") - t0 )) ms," \
    "CPU $cpu s (coordinator + 2 pool workers); etcd over $steps training steps: $((kv1 - kv0)) KV calls, $((ka1 - ka0)) lease keep-alives (the coordinator's own lease)"
  median_step "$out" >> "$WORK/cluster.medians"
  echo "$cpu" >> "$WORK/cluster.cpu"
}

for r in $(seq 1 "$ROUNDS"); do
  run_embedded "$r"
  run_cluster "$r"
done
python3 -c "
import statistics
e=[float(x) for x in open('$WORK/embedded.medians')]
c=[float(x) for x in open('$WORK/cluster.medians')]
print(f'median of run medians: embedded {statistics.median(e):.4f} s, cluster {statistics.median(c):.4f} s, ratio cluster/embedded {statistics.median(c)/statistics.median(e):.3f}')
print('pairwise ratios:', ' '.join(f'{b/a:.3f}' for a,b in zip(e,c)))
ec=[float(x) for x in open('$WORK/embedded.cpu')]
cc=[float(x) for x in open('$WORK/cluster.cpu')]
print(f'CPU seconds per run (median): embedded {statistics.median(ec):.1f}, cluster {statistics.median(cc):.1f}, ratio {statistics.median(cc)/statistics.median(ec):.3f}; pairwise', ' '.join(f'{b/a:.3f}' for a,b in zip(ec,cc)))"
