#!/usr/bin/env bash
# Regenerates model/tests/fixtures/ml4m_losses.json: tessera writes weights and a batch, and
# apple/ml-4m's own FourM computes the losses on them (forward_losses.py, strict state-dict load).
# Needs: ML4M_DIR (an extracted apple/ml-4m tree) and PEER_PY (a python with torch 2.11.0 and
# ml-4m's imports, see ../../../shared/peers/README.md). Prints the per-case results; copy them
# into the fixture (the test documents its layout).
set -euo pipefail
cd "$(dirname "$0")/../.."
T=${TESSERA:-./target/debug/tessera}
PEER_PY=${PEER_PY:?set PEER_PY to a python with torch 2.11.0 and ml-4m deps}
W=$(mktemp -d)
A="--preset tiny --dim 64 --encoder-depth 2 --decoder-depth 2 --num-heads 4 --modalities 4m21"
$T model init $A --seed 11 --redraw-scale 1.0 --out "$W/fs.safetensors"
$T model init $A --flavor gelu --seed 12 --redraw-scale 1.0 --out "$W/fg.safetensors"
$T model synth-batch --weights "$W/fs.safetensors" --out "$W/b.safetensors" --batch-size 2 --seed 5
for c in "fs mod 256" "fg token 256" "fs mod 64"; do
  set -- $c
  "$PEER_PY" tools/ml4m_reference/forward_losses.py --weights "$W/$1.safetensors" --batch "$W/b.safetensors" \
    --num-input-tokens "$3" --num-target-tokens 256 --loss "$2" --out "$W/r_$1_$2_$3.json" >/dev/null
  echo "== $c"; cat "$W/r_$1_$2_$3.json"; echo
done
