#!/usr/bin/env bash
# The GPU checks of the data plane and FSDP in one prepared run, for a session lent a CUDA
# machine (device time is scarce: build everything here, run once there).
#
#   tools/gpu/check.sh build     # here: release test binaries + tessera, stripped, into .gpu/
#                                # (ignored; ~60 MiB with the tokenizer the tests read)
#   device run, carry [".gpu"], command: tools/gpu/check.sh run "$OUT"
#
# `run` needs PyTorch 2.11 importable by python3 there (its libtorch and libnccl are used), and
# runs: the NCCL conformance suite and device tests (tessera-ops/tests/nccl.rs), FSDP on the GPU
# through NCCL vs the single-process trainer in fp32 and bf16 (tessera-worker/tests/fsdp_gpu.rs),
# then bf16 step times of the base preset: one process, and FSDP (one rank, NCCL) on one GPU,
# and the generation chains on the base preset in fp32 and bf16 (when `build` had ml-4m at hand
# to write their conditioning: ML4M_DIR and PEER_PY as for tools/bench/generate_vs_ml4m.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-}
case "$MODE" in
build)
  mkdir -p .gpu
  bins() { cargo test --release --locked "$@" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["profile"]["test"]: print(m["executable"])'; }
  cp "$(bins -p tessera-ops --test nccl)" .gpu/nccl-test
  cargo build --release --locked -p tessera-ops --bin tessera-ops-peer
  cp target/release/tessera-ops-peer .gpu/tessera-ops-peer
  cp "$(bins -p tessera-worker --test fsdp_gpu)" .gpu/fsdp-gpu-test
  cargo build --release --locked
  cp target/release/tessera .gpu/tessera
  strip .gpu/nccl-test .gpu/fsdp-gpu-test .gpu/tessera .gpu/tessera-ops-peer
  # Generation chains (caption and MaskGIT, as tools/bench/generate_vs_ml4m.sh runs them on the
  # CPU): their schedules and conditioning, written here by ml-4m itself when it is at hand.
  if [ -n "${ML4M_DIR:-}" ] && [ -n "${PEER_PY:-}" ]; then
    rm -rf .gpu/gen
    OUT=.gpu/gen WRITE_ONLY=1 BATCH=${GEN_BATCH:-8} TESSERA=target/release/tessera tools/bench/generate_vs_ml4m.sh
  else
    echo "ML4M_DIR/PEER_PY not set: no generation chains in .gpu/ (the run skips them)"
  fi
  mkdir -p .gpu/shared/data/ml-4m
  cp ../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json .gpu/shared/data/ml-4m/
  du -sh .gpu
  ;;
run)
  OUT=${2:?usage: tools/gpu/check.sh run OUTDIR}
  mkdir -p "$OUT"
  PY=${PYTHON:-python3}
  SITE=$($PY -c 'import torch,os; print(os.path.dirname(os.path.dirname(torch.__file__)))')
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))' | tee "$OUT/env.txt"
  mkdir -p .gpu/lib
  NCCL=$(ls "$SITE"/nvidia/nccl/lib/libnccl.so* 2>/dev/null | head -1 || true)
  [ -n "$NCCL" ] && ln -sfn "$NCCL" .gpu/lib/libnccl.so
  export LD_LIBRARY_PATH="$PWD/.gpu/lib:$SITE/torch/lib:${LD_LIBRARY_PATH:-}"
  export TESSERA_SHARED_DIR="$PWD/.gpu/shared"
  export TESSERA_OPS_PEER="$PWD/.gpu/tessera-ops-peer"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/env.txt" || true
  set +e
  .gpu/nccl-test --test-threads 1 --nocapture 2>&1 | tee "$OUT/nccl.txt"
  .gpu/fsdp-gpu-test --test-threads 1 --nocapture 2>&1 | tee "$OUT/fsdp_gpu.txt"
  set -e
  CFG="$OUT/base-bf16.toml"
  cat >"$CFG" <<TOML
[job]
name = "gpu-base-bf16"
seed = 0
output_dir = "run"
[model]
preset = "base"
modalities = "mod11"
[data]
text_tokenizer = "$TESSERA_SHARED_DIR/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json"
input_tokens = 256
target_tokens = 256
[[data.datasets]]
name = "synthetic-mod11"
kind = "synthetic"
records = 100000
[train]
global_batch_size = 64
blr = 1e-4
total_steps = 1000
warmup_steps = 10
device = "cuda"
bf16 = true
[checkpoint]
every_steps = 0
TOML
  for mode in single fsdp; do
    rm -rf "$OUT/run"
    # single: the one-process trainer; fsdp: one coordinated FSDP worker (flat vectors through NCCL).
    flags=""; [ "$mode" = fsdp ] && flags="--workers 1 --fsdp"
    timeout 240 .gpu/tessera train "$CFG" $flags --max-steps 8 --no-resume 2>"$OUT/train-$mode.log" ||
      { echo "train $mode failed"; tail -20 "$OUT/train-$mode.log"; continue; }
    python3 - "$OUT/run/train_log.jsonl" "$mode" <<'PY' | tee -a "$OUT/steps.txt"
import json, statistics, sys
xs = [json.loads(l) for l in open(sys.argv[1])][2:]
med = lambda k: statistics.median(x[k] for x in xs)
print(f"base bf16 b64 {sys.argv[2]:>6}: {med('step_s'):.3f} s/step (median of {len(xs)}), comm {statistics.median(x['timings']['comm_s'] for x in xs):.3f} s, losses {[round(x['loss'], 4) for x in xs]}")
PY
  done
  # Any-to-any generation on the base preset, fp32 and bf16 (issue 19): tokens/s of the chains
  # whose conditioning the build step wrote; the weights are drawn here (too big to carry).
  if [ -d .gpu/gen ]; then
    .gpu/tessera model init --preset base --modalities "caption,tok_rgb@224,tok_clip@224,tok_depth@224" --seed 1 \
      --out "$OUT/w-base.safetensors" >/dev/null
    for chain in maskgit caption; do
      for prec in fp32 bf16; do
        flags=""; [ "$prec" = bf16 ] && flags="--bf16"
        timeout 240 .gpu/tessera bench generate --weights "$OUT/w-base.safetensors" --batch ".gpu/gen/$chain-cond.safetensors" \
          --schedule ".gpu/gen/$chain.yaml" --device cuda $flags --warmup 1 --runs 3 --json >"$OUT/generate-$chain-$prec.json" &&
          echo "generate $chain $prec: $(grep -o '"tokens_per_s_median": [0-9.]*' "$OUT/generate-$chain-$prec.json")" ||
          echo "generate $chain $prec failed"
      done
    done
    rm -f "$OUT/w-base.safetensors"
  fi
  ;;
*)
  sed -n 2,13p "$0"; exit 2 ;;
esac
