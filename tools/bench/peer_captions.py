#!/usr/bin/env python3
"""Writes the peer tokenization benchmark's own synthetic captions (shared/peers/tokenize_text.py
`make_captions`, same n and seed) one per line, so `tessera bench text --input` encodes exactly
the captions the peer times; optionally also times Python `tokenizers` encode_batch on a
thread pool (the peer script times one thread only).

Usage: ML4M_DIR=… PEERS_DIR=… python peer_captions.py --out captions.txt [--n 100000 --seed 0]
           [--parallel-threads 2 --repeats 5 --parallel-json peer_parallel.json]
Needs a Python with `tokenizers` (the peer venv). Imports the peer script; copies nothing.
"""
import argparse
import json
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parallel-threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--parallel-json")
    a = ap.parse_args()
    sys.path.insert(0, os.environ.get("PEERS_DIR") or os.path.join(os.path.dirname(__file__), "../../../shared/peers"))
    import common
    import tokenize_text  # sets RAYON_NUM_THREADS=1 etc. at import; undone below before any parallel use
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(common.ml4m_path(common.TOKENIZER_JSON))
    caps = tokenize_text.make_captions(tok, a.n, a.seed)
    assert all("\n" not in c and "\r" not in c for c in caps)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write("\n".join(caps) + "\n")
    if a.parallel_threads:
        # rayon's global pool is built on first use and reads RAYON_NUM_THREADS then.
        os.environ["RAYON_NUM_THREADS"] = str(a.parallel_threads)
        os.environ["RAYON_RS_NUM_CPUS"] = str(a.parallel_threads)
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        tok.encode_batch(caps[:2000])
        ts = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            enc = tok.encode_batch(caps)
            ts.append(time.perf_counter() - t0)
        st = common.stats(ts)
        res = {"mode": "encode_batch", "threads": a.parallel_threads, "time_s": st,
               "captions_per_s_median": round(a.n / st["median"], 1),
               "tokens_per_s_median": round(sum(len(e.ids) for e in enc) / st["median"], 1)}
        if a.parallel_json:
            common.write_json(a.parallel_json, res)
        print(json.dumps(res))


if __name__ == "__main__":
    main()
