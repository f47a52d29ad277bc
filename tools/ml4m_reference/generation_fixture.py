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
    # Multi-condition guidance: a list of weights per target, one per condition.
    dict(cond_domains=["caption", "tok_rgb@224"], target_domains=["tok_clip@224", "tok_depth@224"],
         tokens_per_target=[196, 196], autoregression_schemes=["maskgit", "roar"], decoding_steps=[8, 4],
         token_decoding_schedules=["cosine", "linear"], temps=[2.0, 1.0], temp_schedules=["linear", "constant"],
         cfg_scales=[[2.0, 1.5], [2.5, 0.5, 1.5]], cfg_schedules=["constant", "constant"], cfg_grow_conditioning=False),
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
    # Autoregressive early stop: the [S_2] row of the caption's tied decoder embedding is
    # scaled (searched below) so that the rows stop at different steps, before the limit; det
    # then reads the merged, [PAD]-padded caption. (det's own [S_2] logit peaks at its first
    # step, so no scale makes its rows stop after a word.)
    dict(name="ar_stop", conds=["tok_rgb@224"], top_k=1, top_p=0.0, seed=510, shape_stop=["caption"],
         schedule=chain(["tok_rgb@224"], ["caption", "det"], [24, 32], ["autoregressive"] * 2, [1, 1],
                        ["linear"] * 2, [1.0, 1.0], ["constant"] * 2, [1.0, 1.0], False)),
    dict(name="ar_stop_cfg", conds=["tok_rgb@224"], top_k=1, top_p=0.0, seed=610, shape_stop=["caption"],
         schedule=chain(["tok_rgb@224"], ["caption", "det"], [24, 32], ["autoregressive"] * 2, [1, 1],
                        ["linear"] * 2, [1.0, 1.0], ["constant"] * 2, [2.0, 1.5], True)),
    # Multi-condition guidance (generate_multi_guided): caption and image tokens weighed
    # separately; the finished first target joins as a third condition of the second.
    dict(name="multi_maskgit", conds=["caption", "tok_rgb@224"], top_k=1, top_p=0.0, seed=800, multi=True,
         schedule=chain(["caption", "tok_rgb@224"], IMG2, [196, 196], ["maskgit", "maskgit"], [4, 3],
                        ["cosine", "linear"], [1.0, 1.0], ["constant", "linear"], [[2.0, 1.5], [2.5, 0.5, 1.5]], False)),
    dict(name="multi_roar", conds=["tok_rgb@224", "caption"], top_k=1, top_p=0.0, seed=900, multi=True,
         schedule=chain(["tok_rgb@224", "caption"], IMG2, [196, 196], ["roar", "maskgit"], [3, 2],
                        ["linear", "cosine"], [1.0, 1.0], ["constant", "constant"], [[1.5, 2.0], [1.0, 2.0, 0.5]], False)),
    # Image-only conditions: the unconditional pass has no encoder token at all.
    dict(name="multi_image_only", conds=["tok_rgb@224"], top_k=1, top_p=0.0, seed=950, multi=True,
         schedule=chain(["tok_rgb@224"], ["tok_clip@224"], [196], ["maskgit"], [3], ["cosine"], [1.0],
                        ["constant"], [[3.0]], False)),
    # Sampled (no top-k): the same seeds give the same multinomial draws as libtorch's generator.
    dict(name="sampled_maskgit_ar", conds=["tok_rgb@224"], top_k=0.0, top_p=0.9, seed=700,
         schedule=chain(["tok_rgb@224"], ["tok_clip@224", "caption"], [196, 12], ["maskgit", "autoregressive"],
                        [4, 1], ["cosine", "linear"], [3.0, 2.0], ["linear", "constant"], [1.5, 1.0], True)),
]


STOP_SCALES = [k / 8 for k in range(16, 129)]  # 2.0 to 16.0 in exact steps of 1/8


class scaled_stop_rows:
    """Scales the [S_2] row of the tied decoder embedding of each given sequence target (the
    row is its logit weight and its input embedding), and restores it afterwards."""

    def __init__(self, model, scales, s2):
        self.model, self.scales, self.s2, self.saved = model, scales, s2, {}

    def __enter__(self):
        import torch
        with torch.no_grad():
            for mod, alpha in self.scales.items():
                w = self.model.decoder_embeddings[mod].token_emb.weight
                assert w is self.model.decoder_embeddings[mod].to_logits.weight, "tied embeddings expected"
                self.saved[mod] = w[self.s2].clone()
                w[self.s2] *= alpha
        return self

    def __exit__(self, *exc):
        import torch
        with torch.no_grad():
            for mod, row in self.saved.items():
                self.model.decoder_embeddings[mod].token_emb.weight[self.s2] = row
        return False


def stop_steps(out, s2):
    """Per row, the decoding step (0-based, after the start token) that emitted [S_2]; -1: none."""
    steps = []
    for row in out.tolist():
        hits = [i for i, t in enumerate(row[1:]) if t == s2]
        steps.append(hits[0] if hits else -1)
    return steps


def stops_apart(out, s2, limit):
    """Every row stops after at least one word, at different steps, and the loop ends before its
    limit (ml-4m fails to merge a row whose first token is [S_2])."""
    steps = stop_steps(out, s2)
    return min(steps) >= 1 and len(set(steps)) == len(steps) and out.shape[1] - 1 < limit


def multi_dicts(gen, modality_info, md, conds, specials):
    """generate_multi_guided's inputs as tessera builds them: the unconditional dict is the batch
    with every condition blanked by ml-4m's own rules, each conditional dict one condition."""
    import copy
    uncond = copy.deepcopy(md)
    for mod in conds:
        if modality_info[mod]["type"] in ("seq", "seq_token"):
            uncond = gen.empty_seq_modality(uncond, mod, s1_id=specials["s1"])
        else:
            uncond = gen.empty_img_modality(uncond, mod)
    return uncond, [{mod: copy.deepcopy(md[mod])} for mod in conds]


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

    # The raw autoregressive output (before the span merge) of each sequence target.
    raw = {}
    orig_merge = sampler.merge_sequences_batched

    def merge_sequences_batched(mod_dict, pred_ids, target_mod, *args, **kw):
        raw[target_mod] = pred_ids.clone()
        return orig_merge(mod_dict, pred_ids, target_mod, *args, **kw)

    sampler.merge_sequences_batched = merge_sequences_batched

    # ml-4m's multi-guided ROAR step writes inverted masks into its conditional dicts (their
    # passes never see the decoded tokens and query other positions than the unconditional
    # pass); tessera keeps all passes on one target state, and so does this patch.
    orig_roar = sampler.multi_guided_roar_step_batched

    def multi_guided_roar_step_batched(uncond_dict, cond_dicts, cond_weights, target_mod, *args, **kw):
        uncond_dict, cond_dicts = orig_roar(uncond_dict, cond_dicts, cond_weights, target_mod, *args, **kw)
        for c in cond_dicts:
            c[target_mod]["input_mask"] = uncond_dict[target_mod]["input_mask"].clone()
            c[target_mod]["target_mask"] = uncond_dict[target_mod]["target_mask"].clone()
        return uncond_dict, cond_dicts

    sampler.multi_guided_roar_step_batched = multi_guided_roar_step_batched

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

        def run(scales):
            captured.clear()
            raw.clear()
            with scaled_stop_rows(model, scales, specials["s2"]), torch.no_grad():
                if case.get("multi"):
                    uncond, conds = multi_dicts(gen, modality_info, md, case["conds"], specials)
                    return sampler.generate_multi_guided(uncond, conds, schedule, top_k=case["top_k"], top_p=case["top_p"],
                                                         text_tokenizer=text_tok, seed=case["seed"])
                return sampler.generate(copy.deepcopy(md), schedule, top_k=case["top_k"], top_p=case["top_p"],
                                        text_tokenizer=text_tok, seed=case["seed"])

        scales = {}
        # Targets decode in order, so each one's scale is searched with the earlier ones fixed;
        # of the scales that make the rows stop apart, the one with the widest gap is kept.
        for mod in case.get("shape_stop", []):
            limit = sched_kw["tokens_per_target"][sched_kw["target_domains"].index(mod)] - 1
            best = None
            for alpha in STOP_SCALES:
                try:
                    run({**scales, mod: alpha})
                except RuntimeError:
                    # ml-4m cannot merge a row whose first token is [S_2] (the empty span
                    # becomes a float tensor) when a later target reads it; skip such scales.
                    continue
                steps = stop_steps(raw[mod], specials["s2"])
                if stops_apart(raw[mod], specials["s2"], limit):
                    gap = max(steps) - min(steps)
                    print(f"  {case['name']} {mod} scale {alpha}: stops {steps}", file=sys.stderr)
                    if best is None or gap > best[0]:
                        best = (gap, alpha)
            if best is None:
                sys.exit(f"{case['name']}: no [S_2] scale in {STOP_SCALES[0]}..{STOP_SCALES[-1]} makes the rows of {mod} stop apart")
            scales[mod] = best[1]
        out = run(scales)
        entry = {
            "name": case["name"], "seed": case["seed"], "top_k": case["top_k"], "top_p": case["top_p"],
            "multi_guided": bool(case.get("multi")),
            "schedule_kwargs": sched_kw, "conditioning": cond_json,
            "result": {mod: batch_json({mod: out[mod]})[mod] for mod in sched_kw["target_domains"]},
            "logits": list(captured),
        }
        if scales:
            entry["s2_row_scale"] = scales
            entry["ar_raw"] = {mod: to_list(r) for mod, r in raw.items()}
            entry["ar_stop_steps"] = {mod: stop_steps(raw[mod], specials["s2"]) for mod in scales}
        cases.append(entry)
        print(f"{case['name']}: {len(schedule)} steps, {len(captured)} sampling calls", file=sys.stderr)

    schedules = []
    for kw in SCHEDULE_SETS:
        steps = gen.build_chained_generation_schedules(**kw)
        schedules.append({"kwargs": kw, "steps": [
            {"target_domain": s["target_domain"], "scheme": s["scheme"],
             "num_tokens": None if s["num_tokens"] is None else int(s["num_tokens"]),
             "temperature": float(s["temperature"]), "temperature_bits": f64_bits(s["temperature"]),
             "cfg_scale": [float(w) for w in s["cfg_scale"]] if hasattr(s["cfg_scale"], "__len__") else float(s["cfg_scale"]),
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
