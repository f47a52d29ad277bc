#!/usr/bin/env python3
"""Dumps the exact masked batches that the peer benchmark /work/shared/peers/fourm_step.py
(one_run) feeds to apple/ml-4m's FourM, so tessera can train/evaluate on the very same data.

What it does: with the same arguments, it repeats fourm_step.one_run's data path in the same
order -- global seeds (random, numpy, torch) set to --seed, common.make_masking(...) (ml-4m's
UnifiedMasking with the 4M-21 alphas mixture or all2all), common.SyntheticSource(..., seed),
then (warmup + steps) batches of common.collate([masking(src.sample()) for _ in range(batch)])
-- so every RNG stream is consumed identically and the batches are equal tensor by tensor.
Nothing of the model/optimizer part is run.

How to run it (ml-4m imported at run time from ML4M_DIR; the peer scripts' common.py from
PEERS_DIR, default /work/shared/peers; no ml-4m code is copied here):
  ML4M_DIR=/work/ml4m /work/peervenv/bin/python tools/ml4m_reference/dump_batches.py \
      --out DIR --modset mod11 --alphas mix --batch 8 --warmup 3 --steps 10 --seed 0

Output: DIR/batch-00000.safetensors ... one file per batch, in the layout
forward_losses.py reads: `<mod>.tensor` (as collated: int64/int32 ids, float32 pixels or
embeddings), `<mod>.input_mask` (bool), `<mod>.target_mask` (bool),
`<mod>.decoder_attention_mask` (int32), batch first. Non-tensor entries are skipped.
Prints one JSON line: batch count, modality keys, shapes/dtypes of batch 0.
"""
import argparse
import contextlib
import json
import os
import sys
import warnings

PEERS_DIR = os.environ.get("PEERS_DIR", "/work/shared/peers")

FIELDS = ("tensor", "input_mask", "target_mask", "decoder_attention_mask")


def build_batches(a):
    """Mirror of fourm_step.one_run up to (and including) its `batches` list."""
    sys.path.insert(0, PEERS_DIR)
    import common  # noqa: E402  (peer helpers, imported at run time)

    modsets = {"mod11": (common.MOD11, common.MOD11),
               "mod21": (common.MOD21_IN, common.MOD21_OUT)}
    warnings.filterwarnings("ignore", category=FutureWarning)
    import random
    import numpy as np
    import torch
    common.ml4m_dir()
    # one_run imports this before seeding; import it too so module import state is identical
    from fourm.utils.optim_factory import get_parameter_groups  # noqa: F401
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)

    in_d, out_d = modsets[a.modset]
    domains = sorted(set(in_d) | set(out_d))
    masking, info, tok, weights = common.make_masking(domains, alphas=a.alphas,
                                                      num_input_tokens=a.num_input_tokens,
                                                      num_target_tokens=a.num_target_tokens)
    src = common.SyntheticSource(domains, info, tok, seed=a.seed)
    n_steps = a.warmup + a.steps
    batches = [common.collate([masking(src.sample()) for _ in range(a.batch)]) for _ in range(n_steps)]
    return batches


def flatten(batch):
    import torch
    out = {}
    for mod, d in batch.items():
        if not isinstance(d, dict):
            continue
        for f in FIELDS:
            t = d.get(f)
            if not isinstance(t, torch.Tensor):
                continue
            if f in ("input_mask", "target_mask"):
                t = t.to(torch.bool)
            elif f == "decoder_attention_mask":
                t = t.to(torch.int32)
            out[f"{mod}.{f}"] = t.contiguous()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--modset", choices=["mod11", "mod21"], default="mod11")
    ap.add_argument("--alphas", choices=["mix", "all2all"], default="mix")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--num-input-tokens", dest="num_input_tokens", type=int, default=256)
    ap.add_argument("--num-target-tokens", dest="num_target_tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    with contextlib.redirect_stdout(sys.stderr):  # ml-4m prints notices on import
        batches = build_batches(a)
    from safetensors.torch import save_file
    os.makedirs(a.out, exist_ok=True)
    first = None
    for i, b in enumerate(batches):
        flat = flatten(b)
        if first is None:
            first = flat
        save_file(flat, os.path.join(a.out, f"batch-{i:05d}.safetensors"))
    print(json.dumps({
        "out": a.out, "num_batches": len(batches),
        "modalities": [m for m, d in batches[0].items() if isinstance(d, dict)] if batches else [],
        "batch0": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                   for k, v in (first or {}).items()},
    }), flush=True)


if __name__ == "__main__":
    main()
