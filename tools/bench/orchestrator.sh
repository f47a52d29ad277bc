#!/usr/bin/env bash
# Orchestrator measurements on this machine, printed as a table:
# (The overhead of the coordinator against a bare launcher was measured before the bare
# launcher was removed: 1.02x step medians, 1.009x whole-process wall; issue 17's note.)
#   1. recovery: kill -9 of one of 3 workers -> detection (worker removed), re-rendezvous
#      (next generation planned), restore (ring + model + checkpoint on the new ranks) and the
#      first completed step of the new generation;
#   2. checkpoints: shard write throughput vs the disk's sequential write bandwidth (dd with
#      fsync, same file system) and the training stall per checkpoint (the host snapshot).
#   [KEEP=1] [ROUNDS=3] [SKIP_RECOVERY=1] [SKIP_CHECKPOINTS=1] tools/bench/orchestrator.sh [CONFIG] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${1:-configs/bench-fsdp-tiny.toml}
STEPS=${2:-8}
ROUNDS=${ROUNDS:-3}
BIN=${TESSERA_BIN:-target/release/tessera}
WORK=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null || true; [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT

# A copy of the job writing under $WORK/NAME, with checkpoints every EVERY steps.
job() {
  local name=$1 every=$2
  mkdir -p "$WORK/$name"
  sed -e "s|^output_dir = .*|output_dir = \"$WORK/$name/out\"|" \
      -e "s|^text_tokenizer = \"\\(.*\\)\"|text_tokenizer = \"$(cd "$(dirname "$CONFIG")" && pwd)/\\1\"|" \
      -e "s|^every_steps = .*|every_steps = $every|" "$CONFIG" > "$WORK/$name/job.toml"
  echo "$WORK/$name/job.toml"
}

median_step() {
  python3 -c "
import json,statistics
xs=[json.loads(l)['step_s'] for l in open('$1')][2:]
print(f'{statistics.median(xs):.3f}')"
}

if [ -z "${SKIP_RECOVERY:-}" ]; then
echo "== recovery (3 workers, kill -9 of one after step 4, checkpoint every 2 steps)"
J=$(job recovery 2)
"$BIN" train "$J" --workers 3 --max-steps 12 --no-resume 2>"$WORK/recovery.log" &
TRAIN=$!
LOG="$WORK/recovery/out/train_log.jsonl"
until [ -f "$LOG" ] && [ "$(wc -l < "$LOG")" -ge 4 ]; do sleep 0.05; done
VICTIM=$(pgrep -P "$TRAIN" -f "worker --join" | tail -1)
KILLED=$(date +%s%3N)
kill -9 "$VICTIM"
wait "$TRAIN"
python3 - "$WORK/recovery/out" "$KILLED" "$WORK/recovery.log" <<'EOF'
import json, re, sys
out, killed, log = sys.argv[1], int(sys.argv[2]), open(sys.argv[3]).read()
ev = [json.loads(l) for l in open(f"{out}/events.jsonl")]
removed = next(e["ts_ms"] for e in ev if e["event"]["type"] == "worker_removed" and e["ts_ms"] >= killed)
started = next(e["ts_ms"] for e in ev if e["event"]["type"] == "generation_started" and e["event"]["generation"] == 1)
steps = [json.loads(l) for l in open(f"{out}/train_log.jsonl")]
first = next(s["ts_ms"] for s in steps if s.get("generation") == 1)
ready = re.findall(r"generation 1 ready: ring ([0-9.]+)s, model \+ restore ([0-9.]+)s", log)
step_s = next(s["step_s"] for s in steps if s.get("generation") == 1)
print(f"{'detection (kill -> removed)':34s} {(removed - killed) / 1000:.2f} s")
print(f"{'re-rendezvous (removed -> planned)':34s} {(started - removed) / 1000:.2f} s")
if ready:
    print(f"{'ring connect on the new ranks':34s} {float(ready[0][0]):.2f} s")
    print(f"{'model + restore':34s} {float(ready[0][1]):.2f} s")
    parts = re.findall(r"generation 1 ready: .*?\(model and data ([^:]+): ([0-9.]+)s, restore ([0-9.]+)s\)", log)
    if parts:
        print(f"{'  model and data (' + parts[0][0] + ')':34s} {float(parts[0][1]):.2f} s")
        print(f"{'  checkpoint restore':34s} {float(parts[0][2]):.2f} s")
print(f"{'first step of the new generation':34s} {step_s:.2f} s")
print(f"{'total kill -> first step done':34s} {(first - killed) / 1000:.2f} s")
EOF

fi

[ -n "${SKIP_CHECKPOINTS:-}" ] && exit 0
echo "== checkpoints (2 workers, every 2 steps)"
J=$(job ckpt 2)
"$BIN" train "$J" --workers 2 --max-steps 8 --no-resume 2>"$WORK/ckpt.log"
DD=$(dd if=/dev/zero of="$WORK/ddtest" bs=1M count=1024 conv=fsync 2>&1 | grep -o '[0-9.]* [MG]B/s' | tail -1)
rm -f "$WORK/ddtest"
python3 - "$WORK/ckpt.log" "$WORK/ckpt/out/train_log.jsonl" "$DD" <<'EOF'
import json, re, statistics, sys
log, steps, dd = open(sys.argv[1]).read(), [json.loads(l) for l in open(sys.argv[2])], sys.argv[3]
commits = re.findall(r"committed: ([0-9.]+) MiB, slowest shard write ([0-9.]+)s", log)
snaps = [float(x) for x in re.findall(r"checkpoint snapshot ([0-9.]+)s", log)]
mib = statistics.median(float(m) for m, _ in commits)
write = statistics.median(float(s) for _, s in commits)
step = statistics.median(s["step_s"] for s in steps[2:])
print(f"{'checkpoint size':34s} {mib:.1f} MiB ({len(commits)} commits)")
print(f"{'shard write (slowest rank, median)':34s} {write:.2f} s -> {mib / write:.0f} MiB/s aggregate")
print(f"{'disk sequential write (dd, fsync)':34s} {dd}")
print(f"{'stall per checkpoint (snapshot)':34s} {statistics.median(snaps):.3f} s vs step {step:.3f} s")
EOF
