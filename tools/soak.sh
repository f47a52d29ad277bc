#!/usr/bin/env bash
# Soak test of the orchestrator: a CPU job on 3 local workers while this script injects
# INJECTIONS faults, in turn: kill -9 of a random worker; kill -9 of two workers at once (each
# is replaced); `tessera scale --workers 3` (starts a worker that joins at the next step
# boundary if one is missing); SIGSTOP of a random worker for 2-4 s, then SIGCONT (removed
# and replaced when it stays silent past the 3 s heartbeat timeout); kill -9 of the coordinator,
# then the same `tessera train` command again (its orphaned workers exit on their own; the job
# resumes from its last committed checkpoint). Every injection waits for two new steps first.
# At the end the job must have finished, every step must be logged, and every step's final
# loss must equal a clean one-process run of the same job (FSDP losses do not depend on the
# world size, so a skipped or repeated sample would show).
#   tools/soak.sh [INJECTIONS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-50}
STEPS=${2:-300}
BIN=${TESSERA_BIN:-target/release/tessera}
WORK=$(mktemp -d)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$WORK"' EXIT
TOK=$(cd .. && pwd)/shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json
mkjob() {
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/job.toml" <<EOF
[job]
name = "soak"
seed = 7
output_dir = "out"
[model]
modalities = "caption,tok_rgb@224,tok_depth@224"
dim = 64
encoder_depth = 2
decoder_depth = 2
num_heads = 2
[data]
text_tokenizer = "$TOK"
input_tokens = 32
target_tokens = 32
[[data.datasets]]
name = "syn"
kind = "synthetic"
records = 4096
[train]
global_batch_size = 6
micro_batch_size = 1
total_steps = $STEPS
threads = 1
[checkpoint]
every_steps = 2
keep_last = 2
EOF
  echo "$WORK/$1/job.toml"
}
steps_logged() { [ -f "$1" ] && wc -l < "$1" || echo 0; }

CLEAN=$(mkjob clean)
echo "clean one-process run of $STEPS steps ..."
"$BIN" train "$CLEAN" 2>/dev/null

SOAK=$(mkjob soak)
OUT="$WORK/soak/out"
start_job() {
  "$BIN" train "$SOAK" --workers 3 --max-workers 3 --heartbeat-timeout-ms 3000 2>>"$WORK/soak.log" &
  TRAIN=$!
}
start_job
T0=$SECONDS
injected=0
kills=0
pairs=0
joins=0
stops=0
coordinator_kills=0
while [ "$injected" -lt "$N" ] && kill -0 "$TRAIN" 2>/dev/null; do
  before=$(steps_logged "$OUT/train_log.jsonl")
  while kill -0 "$TRAIN" 2>/dev/null && [ "$(steps_logged "$OUT/train_log.jsonl")" -lt $((before + 2)) ]; do sleep 0.1; done
  kill -0 "$TRAIN" 2>/dev/null || break
  WORKERS=$(pgrep -P "$TRAIN" -f "worker --join" || true)
  case $((injected % 5)) in
    0)
      VICTIM=$(echo "$WORKERS" | shuf -n 1)
      [ -n "$VICTIM" ] || continue
      kill -9 "$VICTIM" && kills=$((kills + 1))
      ;;
    1)
      VICTIMS=$(echo "$WORKERS" | shuf -n 2 | tr '\n' ' ')
      [ "$(echo $VICTIMS | wc -w)" -eq 2 ] || continue
      kill -9 $VICTIMS && pairs=$((pairs + 1))
      ;;
    2)
      "$BIN" scale --job-dir "$OUT" --workers 3 >/dev/null && joins=$((joins + 1))
      ;;
    3)
      VICTIM=$(echo "$WORKERS" | shuf -n 1)
      [ -n "$VICTIM" ] || continue
      kill -STOP "$VICTIM"
      sleep $((2 + RANDOM % 3))
      kill -CONT "$VICTIM" 2>/dev/null || true
      stops=$((stops + 1))
      ;;
    4)
      kill -9 "$TRAIN"
      wait "$TRAIN" 2>/dev/null || true
      # Its workers see the link drop and exit; the rerun takes the job directory's lock.
      gone=$((SECONDS + 30))
      for w in $WORKERS; do
        while kill -0 "$w" 2>/dev/null; do
          [ "$SECONDS" -lt "$gone" ] || { echo "worker $w outlived its coordinator by 30 s" >&2; exit 1; }
          sleep 0.1
        done
      done
      coordinator_kills=$((coordinator_kills + 1))
      start_job
      ;;
  esac
  injected=$((injected + 1))
done
wait "$TRAIN" && STATUS=ok || STATUS="failed ($?)"
echo "wall time of the soaked job: $((SECONDS - T0)) s"
python3 - "$WORK/clean/out/train_log.jsonl" "$OUT/train_log.jsonl" "$OUT/events.jsonl" "$STEPS" "$injected" "$kills" "$joins" "$STATUS" "$pairs" "$stops" "$coordinator_kills" <<'EOF'
import json, sys
clean = {json.loads(l)["step"]: json.loads(l)["loss"] for l in open(sys.argv[1])}
soak = {}
for l in open(sys.argv[2]):
    r = json.loads(l)
    soak[r["step"]] = r["loss"]
ev = [json.loads(l)["event"] for l in open(sys.argv[3])]
steps, injected, kills, joins, status = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
pairs, stops, coordinator_kills = int(sys.argv[9]), int(sys.argv[10]), int(sys.argv[11])
gens = sum(e["type"] == "generation_started" for e in ev)
worst = max(abs(soak[s] - clean[s]) / abs(clean[s]) for s in clean if s in soak)
survived = injected if status == "ok" and len(soak) == steps else 0
print(f"job: {status}; steps logged {len(soak)}/{steps}; generations {gens}")
print(f"injected {injected} (kill -9 of one worker: {kills}, of two at once: {pairs}, joins: {joins}, "
      f"SIGSTOP/SIGCONT: {stops}, coordinator kill -9 + restart: {coordinator_kills}); survived {survived}/{injected}")
print(f"final loss: soak {soak.get(steps - 1)}  clean {clean.get(steps - 1)}; worst step rel. diff {worst:.2e}")
EOF
