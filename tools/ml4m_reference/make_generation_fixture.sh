#!/usr/bin/env bash
# Regenerates model/tests/fixtures/ml4m_generation.json: tessera writes re-drawn O(1)-scale tiny
# weights, and apple/ml-4m's GenerationSampler runs the chains of generation_fixture.py on them
# (MaskGIT ties pinned to lower-position-first). The test model/tests/generate.rs redraws the
# same weights from the seeds recorded under "arch" and compares.
# Needs: ML4M_DIR (an extracted apple/ml-4m tree, commit cda590f) and PEER_PY (a python with
# torch 2.11.0 and ml-4m's imports, see ../../../shared/peers/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
T=${TESSERA:-./target/debug/tessera}
PEER_PY=${PEER_PY:?set PEER_PY to a python with torch 2.11.0 and ml-4m deps}
: "${ML4M_DIR:?set ML4M_DIR to an extracted apple/ml-4m tree}"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
MODS="caption,det,tok_clip@224,tok_depth@224,tok_rgb@224"
$T model init --preset tiny --dim 64 --encoder-depth 2 --decoder-depth 2 --num-heads 4 --modalities "$MODS" \
  --seed 21 --redraw-scale 1.0 --out "$W/w.safetensors" >/dev/null
ARCH="{\"preset\":\"tiny\",\"flavor\":\"swiglu_nobias\",\"dim\":64,\"encoder_depth\":2,\"decoder_depth\":2,\"num_heads\":4,\
\"modalities\":\"$MODS\",\"init_seed\":21,\"redraw_seed\":22,\"redraw_scale\":1.0}"
"$PEER_PY" tools/ml4m_reference/generation_fixture.py --weights "$W/w.safetensors" --arch "$ARCH" \
  --out model/tests/fixtures/ml4m_generation.json
ls -l model/tests/fixtures/ml4m_generation.json
