#!/usr/bin/env bash
# Caption tokenization throughput, tessera vs Python `tokenizers` (the peer), in one run on one
# machine, on the very same captions: the peer script shared/peers/tokenize_text.py times its
# encode loop and encode_batch on one thread; peer_captions.py dumps those captions (same n and
# seed) and times Python encode_batch on THREADS threads; `tessera bench text --input` times the
# same three modes on the dumped captions. Prints a table of median captions/s.
#
# Needs ML4M_DIR (apple/ml-4m tree, for the tokenizer JSON), PEER_PY (python with `tokenizers`)
# and a release build. Usage: tools/bench/text_vs_peer.sh  (env: N, REPEATS, THREADS, OUT)
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${ML4M_DIR:?}" "${PEER_PY:?}"
PEERS_DIR=${PEERS_DIR:-$(cd ../shared/peers && pwd)}
T=${TESSERA:-./target/release/tessera}
N=${N:-100000}
REPEATS=${REPEATS:-5}
THREADS=${THREADS:-$(nproc)}
OUT=${OUT:-$(mktemp -d)}
TOK=$ML4M_DIR/fourm/utils/tokenizer/trained/text_tokenizer_4m_wordpiece_30k.json
mkdir -p "$OUT"
echo "results in $OUT" >&2
export ML4M_DIR PEERS_DIR
"$PEER_PY" tools/bench/peer_captions.py --out "$OUT/captions.txt" --n "$N" --seed 0 \
  --parallel-threads "$THREADS" --repeats "$REPEATS" --parallel-json "$OUT/peer-parallel.json" >/dev/null
(cd /tmp && "$PEER_PY" "$PEERS_DIR/tokenize_text.py" --n "$N" --repeats "$REPEATS" --seed 0 --out "$OUT/peer.json" >/dev/null)
"$T" bench text --tokenizer "$TOK" --input "$OUT/captions.txt" --repeats "$REPEATS" --threads "$THREADS" --json > "$OUT/ours.json"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
p = json.load(open(f"{out}/peer.json")); pp = json.load(open(f"{out}/peer-parallel.json")); o = json.load(open(f"{out}/ours.json"))
assert o["total_tokens"] == p["total_tokens"], (o["total_tokens"], p["total_tokens"])
rows = [("encode_loop", 1, p["encode_loop"]["captions_per_s_median"]), ("encode_batch", 1, p["encode_batch"]["captions_per_s_median"]),
        ("encode_batch", pp["threads"], pp["captions_per_s_median"])]
print(f"{p['captions']} captions, {p['tokens_per_caption_mean']} tokens/caption (same captions, same token count), median of {p['repeats']}")
print(f"{'mode':14} {'threads':>7} | {'python tokenizers ' + p['tokenizers_version']:>26} | {'tessera':>12} | {'ratio':>5}")
for (mode, thr, peer), m in zip(rows, o["modes"]):
    assert (m["mode"], m["threads"]) == (mode, thr)
    ours = m["captions_per_s_median"]
    print(f"{mode:14} {thr:>7} | {peer:>26,.0f} | {ours:>12,.0f} | {ours/peer:5.2f}")
PY
