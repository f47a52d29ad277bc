#!/usr/bin/env bash
# Training-step benchmark, tessera vs apple/ml-4m, in one run on one machine: for each
# (preset, batch, threads) both time forward + 'mod' loss + backward + AdamW on the very same
# masked batches (ml-4m's own UnifiedMasking on the peers' synthetic data, dumped once by
# dump_batches.py), then a table with medians and the ratio is printed.
#
# Needs ML4M_DIR (apple/ml-4m tree), PEER_PY (python with torch 2.11.0 + ml-4m deps), and
# PEERS_DIR (shared/peers). Usage: tools/bench/step_vs_ml4m.sh [PLAN] where PLAN is
# "preset:batch:threads[:steps],..." (default: the tiny/small x 8/32 x 1/2 matrix).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${ML4M_DIR:?}" "${PEER_PY:?}"
PEERS_DIR=${PEERS_DIR:-$(cd ../shared/peers && pwd)}
T=${TESSERA:-./target/release/tessera}
PLAN=${1:-tiny:8:2:4,tiny:8:1:4,tiny:32:2:3,tiny:32:1:3,small:8:2:3,small:8:1:3,small:32:2:2,small:32:1:2}
WARMUP=${WARMUP:-1}
OUT=${OUT:-$(mktemp -d)}
echo "results in $OUT" >&2
for run in ${PLAN//,/ }; do
  IFS=: read -r preset batch threads steps <<<"$run"
  steps=${steps:-3}
  data="$OUT/batches-b$batch-s$((WARMUP + steps))"
  if [ ! -d "$data" ]; then
    ML4M_DIR=$ML4M_DIR PEERS_DIR=$PEERS_DIR "$PEER_PY" tools/ml4m_reference/dump_batches.py --out "$data" \
      --batch "$batch" --steps "$steps" --warmup "$WARMUP" >/dev/null
  fi
  (cd /tmp && OMP_NUM_THREADS=$threads ML4M_DIR=$ML4M_DIR "$PEER_PY" "$PEERS_DIR/fourm_step.py" --config "$preset" \
    --batch "$batch" --threads "$threads" --steps "$steps" --warmup "$WARMUP" 2>/dev/null | tail -1) > "$OUT/peer-$run.json"
  OMP_NUM_THREADS=$threads "$T" bench step --preset "$preset" --modalities mod11 --threads "$threads" \
    --steps "$steps" --warmup "$WARMUP" --batches "$data" --json > "$OUT/ours-$run.json"
  echo "done $run" >&2
done
python3 - "$OUT" "$PLAN" <<'PY'
import json, sys
out, plan = sys.argv[1], sys.argv[2]
print(f"{'preset':6} {'batch':>5} {'thr':>3} | {'ml-4m step s':>12} {'fwd':>6} {'bwd':>6} {'adamw':>6} | {'tessera step s':>14} {'fwd':>6} {'bwd':>6} {'adamw':>6} | {'ratio':>5}")
for run in plan.split(","):
    p = json.load(open(f"{out}/peer-{run}.json")); o = json.load(open(f"{out}/ours-{run}.json"))
    pm, om = p["step_s"]["median"], o["step_s"]["median"]
    f = lambda d, k: d[k]["median"]
    print(f"{o['preset']:6} {o['batch']:>5} {o['threads']:>3} | {pm:12.3f} {f(p,'forward_loss_s'):6.3f} {f(p,'backward_s'):6.3f} {f(p,'adamw_s'):6.3f} | "
          f"{om:14.3f} {f(o,'forward_loss_s'):6.3f} {f(o,'backward_s'):6.3f} {f(o,'adamw_s'):6.3f} | {om/pm:5.2f}")
PY
