#!/usr/bin/env bash
# Generation benchmark, tessera vs apple/ml-4m, in one run on one machine, CPU: both generate
# from the very same weights (a freshly initialised preset), conditioning batch (built by
# ml-4m's own init_full_input_modality / init_empty_target_modality) and schedule, with the
# same thread count, alternating tessera and ml-4m for ROUNDS rounds (each round: one process
# per side, WARMUP untimed + RUNS timed generations). Two chains:
#   maskgit: tok_rgb@224 -> tok_clip@224 -> tok_depth@224, MaskGIT, 8 cosine steps each
#   caption: tok_rgb@224 -> caption, autoregressive, up to CAPTION_TOKENS tokens
# top_k = 1 (MaskGIT ties pinned to lower-position-first on ml-4m's side), so both must produce
# the same ids; the script checks that and prints tokens/s (median over every timed run of
# every round) and the ratio.
#
# Needs ML4M_DIR (apple/ml-4m tree) and PEER_PY (python with torch 2.11.0 + ml-4m deps).
# Usage: tools/bench/generate_vs_ml4m.sh   (env: PRESET=tiny THREADS=1 BATCH=2 ROUNDS=3
#        RUNS=2 WARMUP=1 CAPTION_TOKENS=64 TESSERA=./target/debug/tessera OUT=dir)
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${ML4M_DIR:?set ML4M_DIR to an extracted apple/ml-4m tree}" "${PEER_PY:?set PEER_PY to a python with torch 2.11.0 and ml-4m deps}"
T=${TESSERA:-./target/release/tessera}
[ -x "$T" ] || T=./target/debug/tessera
PRESET=${PRESET:-tiny} THREADS=${THREADS:-1} BATCH=${BATCH:-2} ROUNDS=${ROUNDS:-3} RUNS=${RUNS:-2} WARMUP=${WARMUP:-1}
CAPTION_TOKENS=${CAPTION_TOKENS:-64}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
echo "results in $OUT (tessera: $T, preset $PRESET, batch $BATCH, $THREADS threads)" >&2
export OMP_NUM_THREADS=$THREADS ML4M_DIR

"$T" model init --preset "$PRESET" --modalities "caption,tok_rgb@224,tok_clip@224,tok_depth@224" --seed 1 \
  --out "$OUT/w.safetensors" >/dev/null
cat >"$OUT/maskgit.yaml" <<'YAML'
cond_domains: [tok_rgb@224]
target_domains: [tok_clip@224, tok_depth@224]
tokens_per_target: [196, 196]
autoregression_schemes: [maskgit, maskgit]
decoding_steps: [8, 8]
token_decoding_schedules: [cosine, cosine]
temps: [1.0, 1.0]
temp_schedules: [constant, constant]
cfg_scales: [1.0, 1.0]
cfg_schedules: [constant, constant]
top_k: 1
YAML
cat >"$OUT/caption.yaml" <<YAML
cond_domains: [tok_rgb@224]
target_domains: [caption]
tokens_per_target: [$CAPTION_TOKENS]
autoregression_schemes: [autoregressive]
decoding_steps: [1]
token_decoding_schedules: [linear]
temps: [1.0]
temp_schedules: [constant]
cfg_scales: [1.0]
cfg_schedules: [constant]
top_k: 1
YAML

for chain in maskgit caption; do
  "$PEER_PY" tools/bench/ml4m_generate.py --weights "$OUT/w.safetensors" --schedule "$OUT/$chain.yaml" \
    --batch-size "$BATCH" --write-cond "$OUT/$chain-cond.safetensors"
done
# WRITE_ONLY=1: the schedules and conditioning batches only (tools/gpu/check.sh carries them to a
# GPU machine, which has no ml-4m); the conditioning does not depend on the model's size.
if [ -n "${WRITE_ONLY:-}" ]; then
  rm -f "$OUT/w.safetensors"
  exit 0
fi

for chain in maskgit caption; do
  for r in $(seq 1 "$ROUNDS"); do
    "$T" bench generate --weights "$OUT/w.safetensors" --batch "$OUT/$chain-cond.safetensors" \
      --schedule "$OUT/$chain.yaml" --threads "$THREADS" --warmup "$WARMUP" --runs "$RUNS" \
      --out "$OUT/$chain-tessera.safetensors" --json >"$OUT/$chain-tessera-$r.json"
    "$PEER_PY" tools/bench/ml4m_generate.py --weights "$OUT/w.safetensors" --schedule "$OUT/$chain.yaml" \
      --cond "$OUT/$chain-cond.safetensors" --threads "$THREADS" --warmup "$WARMUP" --runs "$RUNS" \
      --out "$OUT/$chain-ml4m.safetensors" | tail -1 >"$OUT/$chain-ml4m-$r.json"
    echo "done $chain round $r" >&2
  done
done

"$PEER_PY" - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
from safetensors.torch import load_file
out, rounds = sys.argv[1], int(sys.argv[2])
print(f"{'chain':8} {'batch':>5} {'thr':>3} {'tokens':>6} | {'ml-4m s':>8} {'tok/s':>8} | {'tessera s':>9} {'tok/s':>8} | {'ratio':>5} | ids")
for chain in ("maskgit", "caption"):
    t = [json.load(open(f"{out}/{chain}-tessera-{r}.json")) for r in range(1, rounds + 1)]
    m = [json.load(open(f"{out}/{chain}-ml4m-{r}.json")) for r in range(1, rounds + 1)]
    # The median over rounds of each round's median: every round is one fresh process per side.
    ts = statistics.median(x["seconds"]["median"] for x in t)
    ms = statistics.median(x["seconds"]["median"] for x in m)
    tokens = {x["tokens"] for x in t + m}
    a, b = load_file(f"{out}/{chain}-tessera.safetensors"), load_file(f"{out}/{chain}-ml4m.safetensors")
    tgt = [k for k in b if k.endswith(".tensor") and not k.startswith("tok_rgb")]
    same = all(a[k].long().equal(b[k].long()) for k in tgt)
    n = tokens.pop() if len(tokens) == 1 else float("nan")
    print(f"{chain:8} {t[0]['batch']:>5} {t[0]['threads']:>3} {n:>6} | {ms:8.3f} {n / ms:8.1f} | {ts:9.3f} {n / ts:8.1f} | "
          f"{ms / ts:5.2f} | {'identical' if same and not tokens else 'DIFFER'}")
PY
