#!/usr/bin/env python3
"""Reference generation runs of apple/ml-4m's GenerationSampler, for tessera's generation tests.

What it does: loads tessera-written weights into ml-4m's FourM (strictly, through
forward_losses.py's helpers), builds conditioning with ml-4m's own builders
(init_full_input_modality, init_empty_target_modality), builds schedules with
build_chained_generation_schedules, runs GenerationSampler.generate on several chains and
writes one JSON fixture with
  - "schedules": build_chained_generation_schedules' output for several keyword sets,
  - "cases": per chain, the conditioning batch, the schedule, the final target tensors and
    digests of the logits of every sampling call (log-sum-exp of the first rows, a block of
    raw values), captured before top-k/top-p filtering.

Tie rule: with top_k = 1 every MaskGIT confidence is 1.0, and torch.topk orders ties in an
unspecified way. tessera commits the LOWER position first; this script pins ml-4m to the same
rule by giving generate.py a `torch` whose topk and sort are stable (descending, lower index
first among equals). Nothing else in ml-4m is changed.

How to run it (ml-4m imported at run time from ML4M_DIR, no ml-4m code in this file):
  tools/ml4m_reference/make_generation_fixture.sh   (see there for the environment)
"""
import argparse
import json
import math
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import forward_losses as fl  # noqa: E402  (shared ml-4m loading helpers)

LSE_ROWS = 32
BLOCK_ROWS, BLOCK_COLS = 4, 8

# The conditioning: caption ids (ordinary word ids of ml-4m's vocabulary, EOS = 3), one list
# per row, and the tok_rgb@224 grid drawn from a seeded generator.
CAPTIONS = [[2000, 2001, 2002, 2500, 3], [2100, 2201, 2302, 2403, 2504, 2605, 3]]
CAPTION_LEN = 10
RGB_SEED = 3

SCHEDULE_SETS = [
    dict(cond_domains=["caption"], target_domains=["tok_clip@224", "tok_rgb@224"], tokens_per_target=[196, 196],
         autoregression_schemes=["roar", "roar"], decoding_steps=[49, 25], token_decoding_schedules=["linear", "linear"],
         temps=[6.0, 0.5], temp_schedules=["onex:0.5:0.5", "constant"], cfg_scales=[3.0, 3.0],
         cfg_schedules=["constant", "constant"], cfg_grow_conditioning=True),
    dict(cond_domains=["tok_clip@448"], target_domains=["tok_rgb@448"], tokens_per_target=[784],
         autoregression_schemes=["maskgit"], decoding_steps=[8], token_decoding_schedules=["cosine"], temps=[1.0],
         temp_schedules=["constant"], cfg_scales=[3.0], cfg_schedules=["constant"], cfg_grow_conditioning=False),
    dict(cond_domains=["rgb@224"], target_domains=["caption", "tok_depth@224", "det", "tok_semseg@224"],
         tokens_per_target=[256, 196, 256, 196], autoregression_schemes=["autoregressive", "maskgit", "autoregressive", "maskgit"],
         decoding_steps=[1, 8, 1, 11], token_decoding_schedules=["linear", "cosine", "linear", "linear"],
         temps=[0.3, 2.0, 0.7, 1.5], temp_schedules=["constant", "linear", "linear", "onex:0.1:1.0"],
         cfg_scales=[2.0, 1.0, 1.5, 2.0], cfg_schedules=["constant"] * 4, cfg_grow_conditioning=True),
    dict(cond_domains=["caption"], target_domains=["tok_clip@224"], tokens_per_target=[196],
         autoregression_schemes=["maskgit"], decoding_steps=[196], token_decoding_schedules=["cosine"], temps=[3.0],
         temp_schedules=["onex:0.5:0.25"], cfg_scales=[1.0], cfg_schedules=["constant"], cfg_grow_conditioning=False),
    dict(cond_domains=["caption"], target_domains=["tok_clip@224"], tokens_per_target=[196],
         autoregression_schemes=["roar"], decoding_steps=[300], token_decoding_schedules=["linear"], temps=[1.0],
         temp_schedules=["linear"], cfg_scales=[1.0], cfg_schedules=["constant"], cfg_grow_conditioning=False),
]


def chain(cond, targets, tokens, schemes, steps, tsched, temps, tempsched, cfg, grow):
    return dict(cond_domains=cond, target_domains=targets, tokens_per_target=tokens, autoregression_schemes=schemes,
                decoding_steps=steps, token_decoding_schedules=tsched, temps=temps, temp_schedules=tempsched,
                cfg_scales=cfg, cfg_schedules=["constant"] * len(targets), cfg_grow_conditioning=grow)


IMG2 = ["tok_clip@224", "tok_depth@224"]
CASES = [
    # caption -> image tokens -> another image-token modality, MaskGIT
    dict(name="maskgit_chain", conds=["caption"], top_k=1, top_p=0.0, seed=100,
         schedule=chain(["caption"], IMG2, [196, 196], ["maskgit", "maskgit"], [4, 3], ["cosine", "linear"],
                        [1.0, 1.0], ["constant", "linear"], [1.0, 1.0], False)),
    # the same with guidance and grow-conditioning
    dict(name="maskgit_chain_cfg_grow", conds=["caption"], top_k=1, top_p=0.0, seed=200,
         schedule=chain(["caption"], IMG2, [196, 196], ["maskgit", "maskgit"], [4, 3], ["cosine", "linear"],
                        [1.0, 1.0], ["constant", "linear"], [3.0, 2.0], True)),
    # ROAR, unguided and guided (the random order comes from the seeded generator)
    dict(name="roar", conds=["tok_rgb@224"], top_k=1, top_p=0.0, seed=300,
         schedule=chain(["tok_rgb@224"], ["tok_depth@224"], [196], ["roar"], [3], ["linear"], [0.5], ["constant"],
                        [1.0], False)),
    dict(name="roar_cfg", conds=["caption"], top_k=1, top_p=0.0, seed=400,
         schedule=chain(["caption"], ["tok_clip@224"], [196], ["roar"], [4], ["linear"], [2.0], ["onex:0.5:0.5"],
                       [2.5], True)),
    # image tokens -> caption and det, autoregressively
    dict(name="ar_chain", conds=["tok_rgb@224"], top_k=1, top_p=0.0, seed=500,
         schedule=chain(["tok_rgb@224"], ["caption", "det"], [12, 16], ["autoregressive"] * 2, [1, 1],
                        ["linear"] * 2, [1.0, 1.0], ["constant"] * 2, [1.0, 1.0], False)),
    dict(name="ar_chain_cfg", conds=["tok_rgb@224"], top_k=1, top_p=0.0, seed=600,
         schedule=chain(["tok_rgb@224"], ["caption", "det"], [12, 16], ["autoregressive"] * 2, [1, 1],
                        ["linear"] * 2, [1.0, 1.0], ["constant"] * 2, [2.0, 3.0], True)),
    # Sampled (no top-k): the same seeds give the same multinomial draws as libtorch's generator.
    dict(name="sampled_maskgit_ar", conds=["tok_rgb@224"], top_k=0.0, top_p=0.9, seed=700,
         schedule=chain(["tok_rgb@224"], ["tok_clip@224", "caption"], [196, 12], ["maskgit", "autoregressive"],
                        [4, 1], ["cosine", "linear"], [3.0, 2.0], ["linear", "constant"], [1.5, 1.0], True)),
]


def stable_torch(torch):
    """A `torch` namespace for generate.py whose topk and sort are stable."""
    shim = types.ModuleType("torch_stable_ties")
    shim.__dict__.update({k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})

    def topk(x, k, dim=-1, largest=True, sorted=True):
        values, idx = torch.sort(x, dim=dim, descending=largest, stable=True)
        return values.narrow(dim, 0, k), idx.narrow(dim, 0, k)

    def sort(x, dim=-1, descending=False, stable=True):
        return torch.sort(x, dim=dim, descending=descending, stable=True)

    shim.topk, shim.sort = topk, sort
    return shim


def f64_bits(v):
    """The IEEE-754 bits of a float as an integer: JSON readers need not parse floats exactly."""
    import struct
    return struct.unpack("<q", struct.pack("<d", float(v)))[0]


def to_list(t):
    return t.detach().cpu().tolist()


def digest(logits):
    import torch
    l = logits.double()
    rows = min(LSE_ROWS, l.shape[0])
    return {"shape": list(logits.shape), "lse": to_list(torch.logsumexp(l[:rows], dim=-1)),
            "block": to_list(l[:BLOCK_ROWS, :BLOCK_COLS])}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--arch", required=True, help="JSON recorded as the fixture's 'arch' (how tessera redraws the weights)")
    ap.add_argument("--ml4m-dir", default=os.environ.get("ML4M_DIR"))
    a = ap.parse_args()

    ml4m_dir = fl.import_ml4m(a.ml4m_dir)
    import copy
    import inspect
    import torch
    from tokenizers import Tokenizer
    import fourm.models.generate as gen
    import fourm.models.fm as fm
    torch.set_num_threads(1)
    gen.torch = stable_torch(torch)

    init_params = set(inspect.signature(fm.FourM.__init__).parameters) - {
        "self", "encoder_embeddings", "decoder_embeddings", "modality_info", "act_layer", "norm_layer"}
    cfg = fl.read_config(a.weights, init_params)
    model, modality_info, _ = fl.build_model(cfg, False)
    fl.load_weights(model, a.weights)
    model = model.float().eval()
    tok_path = os.path.join(ml4m_dir, "fourm/utils/tokenizer/trained/text_tokenizer_4m_wordpiece_30k.json")
    text_tok = Tokenizer.from_file(tok_path)
    vocab = text_tok.get_vocab()
    specials = {"pad": vocab["[PAD]"], "eos": vocab["[EOS]"], "s1": vocab["[S_1]"], "s2": vocab["[S_2]"],
                "sentinels": sorted(v for k, v in vocab.items() if k.startswith("[S_"))}

    # Conditioning, one row at a time (init_full_input_modality takes row 0's [EOS] for all rows).
    rows = []
    g = torch.Generator().manual_seed(RGB_SEED)
    rgb = torch.randint(0, 16384, (len(CAPTIONS), 196), generator=g)
    for i, cap in enumerate(CAPTIONS):
        ids = torch.zeros((1, CAPTION_LEN), dtype=torch.int64)
        ids[0, :len(cap)] = torch.tensor(cap)
        d = {"caption": {"tensor": ids}, "tok_rgb@224": {"tensor": rgb[i:i + 1].clone()}}
        for mod in ("caption", "tok_rgb@224"):
            d = gen.init_full_input_modality(d, modality_info, mod, "cpu", eos_id=specials["eos"])
        rows.append(d)
    full = {mod: {k: torch.cat([r[mod][k] for r in rows]) for k in rows[0][mod]} for mod in rows[0]}

    sampler = gen.GenerationSampler(model)
    captured, state = [], {"in_sample": False}
    orig_sample, orig_filter = sampler.sample_tokens, sampler.top_k_top_p_filtering

    def sample_tokens(logits, *args, **kw):
        captured.append(digest(logits))
        state["in_sample"] = True
        try:
            return orig_sample(logits, *args, **kw)
        finally:
            state["in_sample"] = False

    def top_k_top_p_filtering(logits, *args, **kw):
        if not state["in_sample"]:
            captured.append(digest(logits))
        return orig_filter(logits, *args, **kw)

    sampler.sample_tokens, sampler.top_k_top_p_filtering = sample_tokens, top_k_top_p_filtering

    def batch_json(md):
        return {mod: {k: to_list(v.long() if k == "decoder_attention_mask" else v) for k, v in d.items()
                      if k in ("tensor", "input_mask", "target_mask", "decoder_attention_mask")}
                for mod, d in md.items()}

    cases = []
    for case in CASES:
        sched_kw = case["schedule"]
        schedule = gen.build_chained_generation_schedules(**sched_kw, modality_info=modality_info)
        md = {}
        for mod in sorted(set(case["conds"]) | set(sched_kw["target_domains"])):
            if mod in case["conds"]:
                md[mod] = copy.deepcopy(full[mod])
            else:
                ntok = sched_kw["tokens_per_target"][sched_kw["target_domains"].index(mod)]
                md = gen.init_empty_target_modality(md, modality_info, mod, len(CAPTIONS), ntok, "cpu")
        cond_json = batch_json(md)
        captured.clear()
        with torch.no_grad():
            out = sampler.generate(md, schedule, top_k=case["top_k"], top_p=case["top_p"],
                                   text_tokenizer=text_tok, seed=case["seed"])
        cases.append({
            "name": case["name"], "seed": case["seed"], "top_k": case["top_k"], "top_p": case["top_p"],
            "schedule_kwargs": sched_kw, "conditioning": cond_json,
            "result": {mod: batch_json({mod: out[mod]})[mod] for mod in sched_kw["target_domains"]},
            "logits": list(captured),
        })
        print(f"{case['name']}: {len(schedule)} steps, {len(captured)} sampling calls", file=sys.stderr)

    schedules = []
    for kw in SCHEDULE_SETS:
        steps = gen.build_chained_generation_schedules(**kw)
        schedules.append({"kwargs": kw, "steps": [
            {"target_domain": s["target_domain"], "scheme": s["scheme"],
             "num_tokens": None if s["num_tokens"] is None else int(s["num_tokens"]),
             "temperature": float(s["temperature"]), "temperature_bits": f64_bits(s["temperature"]),
             "cfg_scale": float(s["cfg_scale"]),
             "cfg_cond_domains": list(s["cfg_cond_domains"])} for s in steps]})

    fixture = {
        "about": "apple/ml-4m (commit cda590f) GenerationSampler runs, fp32 CPU, 1 thread, torch "
                 f"{torch.__version__}, MaskGIT ties pinned to lower-position-first. Regenerate with "
                 "tools/ml4m_reference/make_generation_fixture.sh.",
        "arch": json.loads(a.arch),
        "text_specials": specials,
        "digest": {"lse_rows": LSE_ROWS, "block_rows": BLOCK_ROWS, "block_cols": BLOCK_COLS},
        "schedules": schedules,
        "cases": cases,
    }
    with open(a.out, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
