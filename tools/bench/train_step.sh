#!/usr/bin/env bash
# One training run for A/B step-time comparisons of two builds (issue 17's before/after):
# bench-fsdp-tiny with global batch 8 and 1 thread per process (2 threads per process on the
# 2-core machine are ruined by any other load: OpenMP barriers wait for a preempted thread),
# 12 steps; appends the median step_s of steps 3..12 to OUT. Pair two builds with farm-bench:
#   farm-bench -n 5 --warmup 1 --timeout 1200 \
#     --vs "tools/bench/train_step.sh OLD/tessera one /tmp/before.txt" -- tools/bench/train_step.sh NEW/tessera one /tmp/after.txt
# (MODE two: `tessera train --workers 2`, 1 thread each.)
#   tools/bench/train_step.sh BIN one|two OUT
set -euo pipefail
export OMP_NUM_THREADS=1
BIN=$1 MODE=$2 OUT=$3
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
sed -e "s|^output_dir = .*|output_dir = \"$W/out\"|" -e "s|^total_steps = .*|total_steps = 12|" \
    -e "s|^threads = .*|threads = 1|" -e "s|^global_batch_size = .*|global_batch_size = 8|" \
    -e "s|^text_tokenizer = .*|text_tokenizer = \"$ROOT/../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json\"|" \
    "$ROOT/configs/bench-fsdp-tiny.toml" > "$W/job.toml"
case "$MODE" in
  one) "$BIN" train "$W/job.toml" --no-resume >/dev/null 2>&1 ;;
  two) "$BIN" train "$W/job.toml" --workers 2 --no-resume >/dev/null 2>&1 ;;
  *) echo "MODE is one or two" >&2; exit 2 ;;
esac
python3 -c "
import json,statistics
xs=[json.loads(l)['step_s'] for l in open('$W/out/train_log.jsonl')][2:]
print(f'{statistics.median(xs):.4f}')" >> "$OUT"
