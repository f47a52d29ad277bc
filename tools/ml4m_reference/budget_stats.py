#!/usr/bin/env python3
"""Per-modality token budgets sampled by apple/ml-4m's own UnifiedMasking, and a comparison
with `tessera data inspect-mixture`.

What it does:
  sample   builds ml-4m's modality info the way training does (run_training_4m.setup_modality_info
           for the max_tokens caps, pretrain_utils.setup_sampling_mod_info for the alphas, keep
           and sampling_weights), constructs fourm.data.masking.UnifiedMasking, and per sample
           repeats the first lines of UnifiedMasking.__call__ (component choice, randint of the
           input/target token counts) and calls its input_token_budget and target_token_budget
           methods. It prints the statistics as JSON in the layout of
           `tessera data inspect-mixture --json` (sampler "ml-4m").
  compare  reads a tessera JSON and an ml-4m JSON and prints, per modality, both means, their
           difference in tokens and in standard errors, and whether it is within
           max(rel * mean, abs) tokens and max_se standard errors. Exit status 1 if not.

How to run it: ml-4m is imported at run time from ML4M_DIR (or --ml4m-dir); this file contains
no ml-4m code. Any Python with torch, einops, tokenizers, pyyaml and ml-4m's imports works, e.g.
the peer venv (see forward_losses.py):

  A=../shared/data/ml-4m/configs/alphas/mix_mod21_all2allmix_rgb2all_capT5bias.yaml
  target/release/tessera data inspect-mixture --alphas $A --samples 400000 --json > t.json
  ML4M_DIR=/work/ml4m /work/peervenv/bin/python tools/ml4m_reference/budget_stats.py sample \
      --alphas $A --samples 400000 > m.json
  python3 tools/ml4m_reference/budget_stats.py compare t.json m.json

Domains: as tessera, the domain set of an alphas table is its keys (--modalities restricts it);
for a hyphen-string file (`input_alphas: "1.0-0.5"`), in/out domains come from the file or from
--in-domains/--out-domains. The seeds of torch and Python's `random` are set from --seed; the
streams differ from tessera's, so only the statistics are comparable.
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings

HYPHEN_FIELDS = ("in_domains", "out_domains", "input_alphas", "target_alphas")


def die(msg):
    print(f"budget_stats.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def import_ml4m(ml4m_dir):
    if not ml4m_dir or not os.path.isdir(os.path.join(ml4m_dir, "fourm")):
        die("set ML4M_DIR (or --ml4m-dir) to an apple/ml-4m source tree")
    sys.path.insert(0, os.path.abspath(ml4m_dir))
    with contextlib.redirect_stdout(sys.stderr):  # ml-4m's imports print notices to stdout
        import run_training_4m
        from fourm.data.masking import UnifiedMasking
        from fourm.data.pretrain_utils import setup_sampling_mod_info
    return run_training_4m, UnifiedMasking, setup_sampling_mod_info


def dataset_config(args, yaml):
    """The dataset entry setup_sampling_mod_info expects, for the alphas file given."""
    with open(args.alphas) as f:
        doc = yaml.safe_load(f)
    if any(k in doc for k in HYPHEN_FIELDS):  # hyphen-string form: the file is the entry
        cfg = {k: doc[k] for k in HYPHEN_FIELDS if doc.get(k) is not None}
        for side in ("in_domains", "out_domains"):
            given = getattr(args, side)
            if given and side in cfg:
                die(f"{args.alphas} names {side}; do not also pass --{side.replace('_', '-')}")
            if given:
                cfg[side] = given
            if side not in cfg:
                die(f"hyphen-string alphas need {side} (in the file or --{side.replace('_', '-')})")
        return cfg
    table = doc["alphas_mixture"] if "sampling_weights" in doc else doc
    mods = args.modalities.split(",") if args.modalities else sorted(table)
    domains = "-".join(mods)
    return {"in_domains": domains, "out_domains": domains, "alphas_config": args.alphas}


def sample(args):
    import numpy as np
    import torch
    import random
    import yaml
    from tokenizers import Tokenizer

    run_training_4m, UnifiedMasking, setup_sampling_mod_info = import_ml4m(args.ml4m_dir)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*sample_n.*", category=FutureWarning)  # ml-4m's own call
    cfg = dataset_config(args, yaml)
    in_domains = sorted(cfg["in_domains"].split("-"))
    out_domains = sorted(cfg["out_domains"].split("-"))
    all_domains = sorted(set(in_domains) | set(out_domains))
    ns = argparse.Namespace(all_domains=all_domains, input_size=224, patch_size=16)
    with contextlib.redirect_stdout(sys.stderr):  # ml-4m prints progress to stdout
        modality_info = run_training_4m.setup_modality_info(ns)
        mod_info, sampling_weights = setup_sampling_mod_info(cfg, modality_info)
    tok_path = args.text_tokenizer or os.path.join(args.ml4m_dir, "fourm/utils/tokenizer/trained/text_tokenizer_4m_wordpiece_30k.json")
    min_in = args.input_tokens if args.min_input_tokens is None else args.min_input_tokens
    min_tgt = args.target_tokens if args.min_target_tokens is None else args.min_target_tokens
    masking = UnifiedMasking(
        modality_info=mod_info,
        text_tokenizer=Tokenizer.from_file(tok_path),
        input_tokens_range=(min_in, args.input_tokens),
        target_tokens_range=(min_tgt, args.target_tokens),
        sampling_weights=sampling_weights,
    )
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    n_mod = len(mod_info)
    inp = np.zeros((args.samples, n_mod), dtype=np.int64)
    tgt = np.zeros((args.samples, n_mod), dtype=np.int64)
    comp = np.zeros(args.samples, dtype=np.int64)
    start = time.perf_counter()
    done = 0
    with contextlib.redirect_stdout(sys.stderr):
        for i in range(args.samples):
            # The budget part of UnifiedMasking.__call__, verbatim in behaviour.
            if masking.sampling_weights is not None:
                dir_idx = torch.multinomial(masking.sampling_weights, 1).item()
            else:
                dir_idx = random.randint(0, masking.num_dirichlets - 1)
            num_input_tokens = random.randint(*masking.input_tokens_range)
            num_target_tokens = random.randint(*masking.target_tokens_range)
            b_in = masking.input_token_budget(num_input_tokens, dir_idx)
            b_tgt = masking.target_token_budget(b_in, num_target_tokens, dir_idx)
            inp[i], tgt[i], comp[i] = b_in, b_tgt, dir_idx
            done = i + 1
            if args.max_seconds and (done & 1023) == 0 and time.perf_counter() - start > args.max_seconds:
                break
    elapsed = time.perf_counter() - start
    inp, tgt, comp = inp[:done], tgt[:done], comp[:done]

    def col(x):
        x = x.astype(np.float64)
        return float(x.mean()), float(x.std()), float((x > 0).mean())

    mods = []
    for j, key in enumerate(mod_info):
        im, istd, ifreq = col(inp[:, j])
        tm, tstd, tfreq = col(tgt[:, j])
        mods.append(dict(modality=key, input_mean=im, input_std=istd, input_freq=ifreq,
                         target_mean=tm, target_std=tstd, target_freq=tfreq))
    n_mix = masking.num_dirichlets
    w = [float(x) for x in (sampling_weights or [1.0] * n_mix)]
    out = dict(
        sampler="ml-4m", alphas=args.alphas, seed=args.seed,
        input_tokens=dict(min=min_in, max=args.input_tokens),
        target_tokens=dict(min=min_tgt, max=args.target_tokens),
        component_weights=[x / sum(w) for x in w],
        elapsed_s=elapsed, samples_per_s=done / max(elapsed, 1e-9),
        samples=done,
        component_counts=[int((comp == k).sum()) for k in range(n_mix)],
        input_total_mean=float(inp.sum(1).mean()), target_total_mean=float(tgt.sum(1).mean()),
        modalities=mods,
    )
    print(json.dumps(out, indent=2))


def compare(args):
    with open(args.tessera) as f:
        a = json.load(f)
    with open(args.ml4m) as f:
        b = json.load(f)
    na, nb = a["samples"], b["samples"]
    ma = {m["modality"]: m for m in a["modalities"]}
    mb = {m["modality"]: m for m in b["modalities"]}
    if list(ma) != list(mb):
        die(f"modality lists differ: {list(ma)} vs {list(mb)}")
    print(f"tessera: {na} samples ({a['samples_per_s']:.0f}/s); ml-4m: {nb} samples ({b['samples_per_s']:.0f}/s)")
    print(f"tolerance: |diff| <= max({args.rel:.0%} of the ml-4m mean, {args.abs} token) and <= {args.max_se} SE")
    hdr = f"{'modality':<22} {'side':<6} {'tessera':>9} {'ml-4m':>9} {'diff':>8} {'SE':>6} {'diff/SE':>8} {'tol':>6}  {'freq t':>7} {'freq m':>7}"
    print(hdr)
    bad = []
    for key in ma:
        for side in ("input", "target"):
            xa, xb = ma[key][f"{side}_mean"], mb[key][f"{side}_mean"]
            sa, sb = ma[key][f"{side}_std"], mb[key][f"{side}_std"]
            se = math.sqrt(sa * sa / na + sb * sb / nb)
            diff = xa - xb
            z = diff / se if se > 0 else (0.0 if diff == 0 else math.inf)
            tol = max(args.rel * abs(xb), args.abs)
            ok = abs(diff) <= tol and abs(z) <= args.max_se
            if not ok:
                bad.append(f"{key} {side}")
            fa, fb = ma[key][f"{side}_freq"], mb[key][f"{side}_freq"]
            print(f"{key:<22} {side:<6} {xa:>9.3f} {xb:>9.3f} {diff:>+8.3f} {se:>6.3f} {z:>+8.2f} {tol:>6.2f}  "
                  f"{fa:>7.4f} {fb:>7.4f}{'' if ok else '  <-- outside'}")
    for name in ("input_total_mean", "target_total_mean"):
        print(f"{name:<29} {a[name]:>9.3f} {b[name]:>9.3f} {a[name] - b[name]:>+8.3f}")
    ca = [c / na for c in a["component_counts"]]
    cb = [c / nb for c in b["component_counts"]]
    print("component freq tessera " + " ".join(f"{x:.4f}" for x in ca))
    print("component freq ml-4m   " + " ".join(f"{x:.4f}" for x in cb))
    if bad:
        print(f"OUTSIDE TOLERANCE: {', '.join(bad)}")
        sys.exit(1)
    print("all modalities within tolerance")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="sample budgets with ml-4m's UnifiedMasking; print JSON")
    s.add_argument("--alphas", required=True, help="ml-4m alphas YAML (table, weighted mixture or hyphen strings)")
    s.add_argument("--modalities", help="comma-separated keys restricting an alphas table")
    s.add_argument("--in-domains", help="hyphen-separated input domains (hyphen-string files)")
    s.add_argument("--out-domains", help="hyphen-separated output domains (hyphen-string files)")
    s.add_argument("--input-tokens", type=int, default=256)
    s.add_argument("--min-input-tokens", type=int)
    s.add_argument("--target-tokens", type=int, default=256)
    s.add_argument("--min-target-tokens", type=int)
    s.add_argument("--samples", type=int, default=100_000)
    s.add_argument("--max-seconds", type=float, default=0.0, help="stop early after this long (0: never)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--ml4m-dir", default=os.environ.get("ML4M_DIR"))
    s.add_argument("--text-tokenizer", help="WordPiece JSON (default: the one in ML4M_DIR)")
    c = sub.add_parser("compare", help="compare a tessera JSON with an ml-4m JSON")
    c.add_argument("tessera")
    c.add_argument("ml4m")
    c.add_argument("--rel", type=float, default=0.02)
    c.add_argument("--abs", type=float, default=0.5)
    c.add_argument("--max-se", type=float, default=4.0)
    args = p.parse_args()
    sample(args) if args.cmd == "sample" else compare(args)


if __name__ == "__main__":
    main()
