#!/usr/bin/env bash
# Bitwise refactor proof (issue 17): runs fixed scenarios through every training driver and
# prints, as JSON, each step's loss exactly as `train_log.jsonl` wrote it (the shortest decimal
# that round-trips, so equal text means equal f64 bits), the validation losses, the world size
# of every step and a SHA-256 of the final parameters' tensor bytes. The scenarios:
#   one_process  `train JOB` (the one-process driver);
#   fsdp_2/3     `train JOB --workers 2|3` (coordinated FSDP ranks);
#   elastic      a coordinated job that grows and shrinks through checkpoints and loses a rank:
#                2 workers for 4 steps, 3 workers for 4 steps (a restore resharded 2 -> 3), then
#                2 workers with --min-workers 2, one of them SIGKILLed after the first step;
#   demo         `tessera demo`, shortened: its final validation table and training losses.
# Every scenario is deterministic bit for bit (seeds, one thread, pinned CPU kernels); the
# kill is made so by --min-workers 2: the survivor cannot go on alone, so no step ever runs on
# one rank; the job waits for the replacement and redoes the steps since the last committed
# checkpoint on 2 ranks, and those give the bits they gave the first time (this script fails
# if a redone step or validation differs). Only *when* the kill lands varies, and it shows in
# no recorded value. Details are in the comments of each scenario.
#
# Use, after a change (an x86-64 CPU with AVX2; see the pinned kernels below):
#   cargo build --bin tessera
#   tools/refactor_proof/record.sh target/debug/tessera > /tmp/new.json
#   diff tools/refactor_proof/fixture.json /tmp/new.json     # no output: bit-identical
# `cargo test --test refactor_proof` runs this script on the test build's binary and compares
# with fixture.json (recorded with a dev-profile binary, as that test uses). Re-record the
# fixture only for an intended numerics change, with the command above into fixture.json.
# Needs python3 (standard library only). REFACTOR_PROOF_KEEP=1 keeps the work directory.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${1:-${TESSERA_BIN:-$ROOT/target/debug/tessera}}
[ -x "$BIN" ] || { echo "record.sh: no tessera binary at '$BIN' (give it as \$1 or TESSERA_BIN)" >&2; exit 2; }
BIN=$(realpath "$BIN")
TOK=$(realpath "${TESSERA_TEXT_TOKENIZER:-$ROOT/../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json}")

# Bitwise results need the same kernels, not only the same seeds: one thread everywhere, and
# libtorch's CPU dispatch (ATen), MKL's GEMM and oneDNN pinned to their AVX2 code paths, so an
# AVX-512 machine computes what an AVX2 one does (MKL's conditional numerical reproducibility,
# STRICT: independent of alignment). Each of these changed the losses' bits on the AVX-512
# machine the fixture was recorded on. So pinned, the fixture should hold on any x86-64 CPU
# with AVX2 (MKL promises its part for Intel CPUs) with the torch of scripts/setup.sh.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2,STRICT
export ONEDNN_MAX_CPU_ISA=AVX2 DNNL_MAX_CPU_ISA=AVX2

WORK=$(mktemp -d "${TMPDIR:-/tmp}/refactor-proof.XXXXXX")
TRAIN=""
cleanup() {
  # A coordinator stopped by SIGTERM checkpoints, stops its workers and exits.
  if [ -n "$TRAIN" ] && kill -0 "$TRAIN" 2>/dev/null; then
    kill -TERM "$TRAIN" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$TRAIN" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$TRAIN" 2>/dev/null || true
  fi
  if [ "${REFACTOR_PROOF_KEEP:-0}" = 1 ]; then echo "record.sh: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

say() { echo "record.sh [${SECONDS}s]: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

# mkjob NAME STEPS: a small synthetic job in $WORK/NAME (global batch 6: splits over 1, 2 and
# 3 ranks, micro-batches of 1 so every driver accumulates), validated every 4 steps and at the
# end, checkpointed every 2 steps, with an LR large enough that every step moves the weights
# visibly; prints the job file's path.
mkjob() {
  mkdir -p "$WORK/$1"
  cat >"$WORK/$1/job.toml" <<EOF
[job]
name = "refactor-proof-$1"
seed = 11
output_dir = "out"

[model]
modalities = "caption,tok_rgb@224,tok_depth@224"
dim = 64
encoder_depth = 1
decoder_depth = 1
num_heads = 2

[data]
text_tokenizer = "$TOK"
input_tokens = 16
target_tokens = 16

[[data.datasets]]
name = "syn"
kind = "synthetic"
records = 64

[train]
global_batch_size = 6
micro_batch_size = 1
total_steps = $2
warmup_steps = 2
lr = 2e-3
threads = 1

[checkpoint]
every_steps = 2
keep_last = 2

[eval]
every_steps = 4
samples = 4
baseline_samples = 8
EOF
  echo "$WORK/$1/job.toml"
}

# tessera NAME ARGS...: runs the binary, its output appended to $WORK/NAME.log.
tessera() {
  local name=$1
  shift
  say "$name: tessera $*"
  "$BIN" "$@" >>"$WORK/$name.log" 2>&1 || { tail -n 40 "$WORK/$name.log" >&2; fail "$name: tessera $*"; }
}

# export_params NAME STEPS: consolidated weights of the job's newest checkpoint, which must be
# the final step's.
export_params() {
  tessera "$1" export "$WORK/$1/job.toml" --out "$WORK/$1/params.safetensors"
  grep -q "exported step $2 " "$WORK/$1.log" || fail "$1: the newest checkpoint is not step $2"
}

# (a) One process.
tessera one_process train "$(mkjob one_process 6)"
export_params one_process 6

# (b) Coordinated FSDP on 2 and 3 ranks.
tessera fsdp_2 train "$(mkjob fsdp_2 6)" --workers 2
export_params fsdp_2 6
tessera fsdp_3 train "$(mkjob fsdp_3 6)" --workers 3
export_params fsdp_3 6

# (c) Elastic: each world size change happens at a step fixed by the commands, not by timing.
# A --max-steps stop checkpoints at its boundary; the next invocation restores it resharded.
JOB=$(mkjob elastic 14)
OUT=$WORK/elastic/out
tessera elastic train "$JOB" --workers 2 --max-steps 4 # steps 0-3 on 2 ranks
tessera elastic train "$JOB" --workers 3 --max-steps 4 # steps 4-7 on 3 ranks (2 -> 3)
# Steps 8-13 on 2 ranks (3 -> 2), and one of them SIGKILLed once step 8 is logged. With
# --min-workers 2 the survivor cannot train alone: the job waits for the replacement that
# the coordinator starts, and the new generation of 2 restores the last committed checkpoint
# (8, 10 or 12, depending on when the kill landed) and redoes the steps after it, on 2 ranks
# again, in the same rank order of shards, so with the same bits.
say "elastic: tessera train $JOB --workers 2 --min-workers 2, then kill -9 one worker"
"$BIN" train "$JOB" --workers 2 --min-workers 2 >>"$WORK/elastic.log" 2>&1 &
TRAIN=$!
logged() { [ -f "$OUT/train_log.jsonl" ] && wc -l <"$OUT/train_log.jsonl" || echo 0; }
# REFACTOR_PROOF_KILL_AFTER=N kills after N logged steps instead (9..13): the output must
# not change, which checks the claim above.
KILL_AFTER=${REFACTOR_PROOF_KILL_AFTER:-9}
deadline=$((SECONDS + 300))
while [ "$(logged)" -lt "$KILL_AFTER" ]; do
  kill -0 "$TRAIN" 2>/dev/null || fail "elastic: the job ended before $KILL_AFTER steps were logged"
  [ "$SECONDS" -lt "$deadline" ] || fail "elastic: $KILL_AFTER steps not logged within 300 s"
  sleep 0.02
done
VICTIM=$(pgrep -P "$TRAIN" -f "worker --join" | head -n 1 || true)
[ -n "$VICTIM" ] || fail "elastic: no worker process to kill"
kill -KILL "$VICTIM"
say "elastic: killed worker $VICTIM after $(logged) logged steps"
deadline=$((SECONDS + 300))
while kill -0 "$TRAIN" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || fail "elastic: the job did not finish within 300 s of the kill"
  sleep 0.1
done
status=0
wait "$TRAIN" || status=$?
TRAIN=""
[ "$status" = 0 ] || { tail -n 40 "$WORK/elastic.log" >&2; fail "elastic: the job failed ($status)"; }
grep -q "replacing lost worker#[0-9]*: started process" "$WORK/elastic.log" || fail "elastic: the killed worker was not replaced"
export_params elastic 14

# (d) The demo, shortened: every stage runs (world, text tokenizer, one VQ tokenizer,
# tokenization, job, FSDP training on 2 workers with validation at the end, report, plot).
tessera demo demo --out "$WORK/demo" --samples 40 --steps 4 --batch-size 4 --preset tiny --tokenizers depth \
  --tokenizer-steps 4 --tokenizer-batch 4 --tokens 16 --workers 2 --threads 1 --seed 0

say "collecting"
python3 - "$WORK" <<'EOF'
import hashlib, json, struct, sys
from pathlib import Path

work = Path(sys.argv[1])


def records(path):
    # parse_float=str keeps every number exactly as tessera wrote it.
    return [json.loads(line, parse_float=str) for line in path.read_text().splitlines() if line.strip()]


def by_step(lines, what, value):
    """The value of each step's last line; a step logged again (redone after a rollback) must
    have given the same bits the first time."""
    out = {}
    for line in lines:
        step, v = line["step"], value(line)
        if step in out and out[step] != v:
            sys.exit(f"record.sh: {what}: step {step} was redone with other values: {out[step]} then {v}")
        out[step] = v
    return [out[s] for s in sorted(out)]


def validation(line):
    keep = ("loss", "tokens", "unigram")  # not the timing
    return {"step": line["step"], "modalities": {m: {k: e[k] for k in keep} for m, e in line["modalities"].items()}}


def params_sha256(path):
    """SHA-256 over (name, dtype, shape, bytes) of every tensor, by name: the metadata (config,
    paths) and the file layout do not count."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    h = hashlib.sha256()
    for name in sorted(k for k in header if k != "__metadata__"):
        t = header[name]
        a, b = t["data_offsets"]
        h.update(f"{name}\0{t['dtype']}\0{t['shape']}\0{b - a}\0".encode())
        h.update(data[a:b])
    return h.hexdigest()


def scenario(name):
    out = work / name / "out"
    log = records(out / "train_log.jsonl")
    result = {
        "losses": by_step(log, f"{name} loss", lambda l: l["loss"]),
        "world_sizes": by_step(log, f"{name} world size", lambda l: l.get("world_size", 1)),
        "validation": by_step(records(out / "eval_log.jsonl"), f"{name} validation", validation),
        "params_sha256": params_sha256(work / name / "params.safetensors"),
    }
    events = out / "events.jsonl"
    if events.exists():
        starts = [e["event"] for e in records(events) if e["event"]["type"] == "generation_started"]
        result["generation_world_sizes"] = [len(e["ranks"]) for e in starts]
    return result


result = {n: scenario(n) for n in ["one_process", "fsdp_2", "fsdp_3", "elastic"]}
run = work / "demo" / "run"
result["demo"] = {
    "losses": by_step(records(run / "train_log.jsonl"), "demo loss", lambda l: l["loss"]),
    "final_validation": validation(records(run / "eval_log.jsonl")[-1]),
}
json.dump(result, sys.stdout, indent=1, sort_keys=True)
print()
EOF
say "done"
