#!/usr/bin/env bash
# FSDP step time and peak memory of `tessera train --workers N` (N = 1, 2, 3) against PyTorch
# FSDP (FULL_SHARD over Gloo, the peers' fsdp_step.py) on the same machine in the same run.
#   ML4M_DIR=/path/to/ml-4m PEER_PY=/path/to/venv/bin/python tools/bench/fsdp_vs_torch.sh [CONFIG] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
CONFIG=${1:-configs/bench-fsdp-tiny.toml}
STEPS=${2:-6}
BIN=${TESSERA_BIN:-target/release/tessera}
OUT=$(sed -n 's/^output_dir = "\(.*\)"/\1/p' "$CONFIG")
OUT="$(dirname "$CONFIG")/$OUT"
# The peer runs the same preset at the same global batch.
PRESET=$(sed -n 's/^preset = "\(.*\)"/\1/p' "$CONFIG")
BATCH=$(sed -n 's/^global_batch_size = \([0-9]*\)/\1/p' "$CONFIG")
# The peer does not recompute blocks in its backward pass: the like-for-like row is tessera with
# `fsdp_recompute = false` (a copy of CONFIG beside it, so its relative paths still resolve).
KEEP=$(mktemp -p "$(dirname "$CONFIG")" --suffix .toml)
trap 'rm -f "$KEEP"' EXIT
sed 's/^\[train\]$/[train]\nfsdp_recompute = false/' "$CONFIG" >"$KEEP"
printf "%-30s %12s %14s %18s\n" "run" "s/step (med)" "peak RSS/rank" "sharded state/rank"
for RUN in "1 $CONFIG" "2 $CONFIG" "3 $CONFIG" "2 $KEEP no-recompute"; do
  read -r W CFG LABEL <<<"$RUN"
  rm -rf "$OUT"
  LOG=$(mktemp)
  # --fsdp: one worker also runs the FSDP code path, so the rows measure one implementation.
  "$BIN" train "$CFG" --workers "$W" --fsdp --max-steps "$STEPS" --no-resume 2>"$LOG" || { cat "$LOG"; exit 1; }
  MED=$(python3 -c "
import json,statistics,sys
xs=[json.loads(l)['step_s'] for l in open('$OUT/train_log.jsonl')][1:]
print(f'{statistics.median(xs):.3f}')")
  RSS=$(grep -o 'peak RSS [0-9.]* MiB' "$LOG" | awk '{print $3}' | sort -n | tail -1)
  STATE=$(grep -o 'AdamW state [0-9.]* MiB' "$LOG" | awk '{print $3}' | sort -n | tail -1)
  printf "%-30s %12s %12s MiB %15s MiB\n" "tessera fsdp x$W${LABEL:+ $LABEL}" "$MED" "${RSS:-?}" "${STATE:-?}"
  rm -f "$LOG"
done
if [ -n "${ML4M_DIR:-}" ] && [ -n "${PEER_PY:-}" ]; then
  PEER_OUT=$(mktemp --suffix .json)
  ML4M_DIR=$ML4M_DIR "$PEER_PY" ../shared/peers/fsdp_step.py --configs "$PRESET" --global-batch "$BATCH" --modes fsdp1_full_shard \
    --steps "$((STEPS - 1))" --warmup 1 --out "$PEER_OUT" >/dev/null 2>&1 || echo "peer run failed"
  python3 - "$PEER_OUT" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["runs"]:
    rss = max(r.get("peak_rss_mib_per_rank") or [float("nan")])
    print(f"{'torch ' + r['mode'] + ' x' + str(r['world_size']):<30} {r['step_s']['median']:12.3f} {rss:12.1f} MiB {'-':>15}")
PY
fi
