#!/usr/bin/env python3
"""Times apple/ml-4m's GenerationSampler.generate, the peer side of tools/bench/generate_vs_ml4m.sh.

Two modes:
  --write-cond COND.safetensors: builds a conditioning batch with ml-4m's own builders
    (init_full_input_modality one row at a time on seeded random tok_rgb@224 ids,
    init_empty_target_modality for the schedule's targets) in the masked-batch format that
    `tessera generate --batch` reads, and exits.
  --cond COND.safetensors: loads the weights into ml-4m's FourM (forward_losses.py's helpers,
    strict), reads the schedule YAML (build_chained_generation_schedules' keyword names plus
    top_k/top_p), runs `--warmup` untimed and `--runs` timed generations and prints one JSON
    line: seconds per run, tokens decoded (MaskGIT/ROAR committed tokens plus autoregressive
    samplings, times the batch), threads. `--out` writes the last result in the same format.

MaskGIT ties are pinned to lower-position-first (as tools/ml4m_reference/generation_fixture.py
does) so that with top_k = 1 the ids can be compared with tessera's. ml-4m is imported at run
time from ML4M_DIR; no ml-4m code is in this file.
"""
import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "ml4m_reference"))
import forward_losses as fl  # noqa: E402
from generation_fixture import stable_torch  # noqa: E402

MASK_KEYS = ("input_mask", "target_mask")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--schedule", required=True)
    ap.add_argument("--write-cond")
    ap.add_argument("--cond")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--cond-seed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--ml4m-dir", default=os.environ.get("ML4M_DIR"))
    a = ap.parse_args()

    ml4m_dir = fl.import_ml4m(a.ml4m_dir)
    import inspect
    import torch
    import yaml
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer
    import fourm.models.fm as fm
    import fourm.models.generate as gen
    torch.set_num_threads(a.threads)
    gen.torch = stable_torch(torch)

    init_params = set(inspect.signature(fm.FourM.__init__).parameters) - {
        "self", "encoder_embeddings", "decoder_embeddings", "modality_info", "act_layer", "norm_layer"}
    cfg = fl.read_config(a.weights, init_params)
    model, modality_info, _ = fl.build_model(cfg, False)
    with open(a.schedule) as f:
        kw = yaml.safe_load(f)
    top_k, top_p = kw.pop("top_k", 0.0), kw.pop("top_p", 0.0)

    if a.write_cond:
        g = torch.Generator().manual_seed(a.cond_seed)
        rows = []
        for _ in range(a.batch_size):
            md = {}
            for mod in kw["cond_domains"]:
                if modality_info[mod]["type"] != "img":
                    fl.die(f"--write-cond draws image-token conditions only, not {mod}")
                n = modality_info[mod]["max_tokens"]
                md[mod] = {"tensor": torch.randint(0, modality_info[mod]["vocab_size"], (1, n), generator=g)}
                md = gen.init_full_input_modality(md, modality_info, mod, "cpu")
            rows.append(md)
        full = {mod: {k: torch.cat([r[mod][k] for r in rows]) for k in rows[0][mod]} for mod in rows[0]}
        for mod, ntok in zip(kw["target_domains"], kw["tokens_per_target"]):
            full = gen.init_empty_target_modality(full, modality_info, mod, a.batch_size, ntok, "cpu")
        for d in full.values():
            # Image targets carry none in ml-4m (unused there); the batch format requires it.
            d.setdefault("decoder_attention_mask", torch.zeros_like(d["input_mask"], dtype=torch.int32))
        save_file({f"{mod}.{k}": (v.int() if k == "decoder_attention_mask" else v).contiguous()
                   for mod, d in full.items() for k, v in d.items()}, a.write_cond)
        return

    fl.load_weights(model, a.weights)
    model = model.float().eval()
    raw = load_file(a.cond)
    md = {}
    for key, v in raw.items():
        mod, k = key.rsplit(".", 1)
        md.setdefault(mod, {})[k] = v.bool() if k in MASK_KEYS else v
    batch = next(iter(md.values()))["tensor"].shape[0]
    schedule = gen.build_chained_generation_schedules(**kw, modality_info=modality_info)
    grid_tokens = sum(int(s["num_tokens"]) for s in schedule if modality_info[s["target_domain"]]["type"] == "img") * batch
    text_tok = Tokenizer.from_file(os.path.join(ml4m_dir, "fourm/utils/tokenizer/trained/text_tokenizer_4m_wordpiece_30k.json"))

    sampler = gen.GenerationSampler(model)
    ar = {"tokens": 0}
    orig_merge = sampler.merge_sequences_batched

    def merge(mod_dict, pred_ids, *args, **kwargs):
        # pred_ids starts with the [S_1] prefix; the rest was sampled, one token per row per step.
        ar["tokens"] += (pred_ids.shape[1] - 1) * pred_ids.shape[0]
        return orig_merge(mod_dict, pred_ids, *args, **kwargs)

    sampler.merge_sequences_batched = merge
    secs = []
    out = None
    for i in range(a.warmup + max(a.runs, 1)):
        ar["tokens"] = 0
        t = time.perf_counter()
        with torch.no_grad():
            out = sampler.generate(md, schedule, top_k=top_k, top_p=top_p, text_tokenizer=text_tok, seed=a.seed)
        dt = time.perf_counter() - t
        if i >= a.warmup:
            secs.append(dt)
    tokens = grid_tokens + ar["tokens"]
    if a.out:
        save_file({f"{mod}.{k}": (v.int() if k == "decoder_attention_mask" else v).contiguous()
                   for mod, d in out.items() for k, v in d.items() if k in ("tensor",) + MASK_KEYS}, a.out)
    med = statistics.median(secs)
    print(json.dumps({"bench": "ml4m_generate", "threads": a.threads, "batch": batch, "runs": len(secs),
                      "tokens": tokens, "seconds": {"median": med, "min": min(secs), "max": max(secs)},
                      "tokens_per_s_median": tokens / med}))


if __name__ == "__main__":
    main()
