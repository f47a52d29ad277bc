#!/usr/bin/env python3
"""Reference forward pass of apple/ml-4m's FourM, used to check tessera's numerics.

What it does: builds ml-4m's `fourm.models.fm.FourM` from the config stored in a weights
file's safetensors `__metadata__` (the same way run_training_4m.py's get_model does), loads the
weights with strict=True (so tessera's parameter names must equal ml-4m's), runs one forward
pass on a masked batch read from a second safetensors file, and writes the total loss and the
per-modality losses (and optionally the logits) so they can be compared with tessera's.

How to run it: ml-4m is imported at run time from the source tree named by ML4M_DIR (or
--ml4m-dir). This file contains no ml-4m code. It needs a Python with torch and what ml-4m's
imports need; the "peer venv" (see /work/shared/peers/README.md) works:

  python3 -m venv /work/peervenv
  /work/peervenv/bin/pip install torch==2.11.0 torchvision==0.26.0 einops tokenizers \
      safetensors pyyaml 'numpy<2' 'huggingface_hub<=0.24' albumentations==1.4.0 \
      opencv-python-headless braceexpand webdataset boto3 diffusers==0.20.0 ftfy regex pandas
  ML4M_DIR=/work/ml4m /work/peervenv/bin/python tools/ml4m_reference/forward_losses.py \
      --weights W.safetensors --batch B.safetensors --num-input-tokens 256 \
      --num-target-tokens 256 --loss mod --out result.json [--dtype float64] \
      [--return-logits logits.safetensors]

Input formats:
  W.safetensors: the model's state_dict under ml-4m's names (tied tensors, non-persistent
    buffers excluded, appear under every name ml-4m's state_dict() gives them: e.g. both
    `decoder_embeddings.X.token_emb.weight` and `...to_logits.weight`, both encoder and decoder
    `mod_emb`, the sin-cos `pos_emb` buffers and the zero `bias` buffers of bias-free
    LayerNorms). `__metadata__` holds one key per FM config field, each value a JSON (or
    YAML) string: domains_in, domains_out, dim, encoder_depth, decoder_depth, num_heads,
    mlp_ratio, qkv_bias, proj_bias, mlp_bias, norm_bias, act_layer, gated_mlp, qk_norm,
    image_size, patch_size, decoder_causal_mask, decoder_sep_mask, num_register_tokens,
    share_modality_embeddings. Keys starting with "tessera_" are ignored.
  B.safetensors: `<mod>.tensor`, `<mod>.input_mask` (bool), `<mod>.target_mask` (bool),
    `<mod>.decoder_attention_mask` (int32), batch first, in ml-4m's collated layout.

Determinism: FourM.cat_decoder_tensors shuffles the decoder modality order with Python's
`random.sample`; `random` is re-seeded with --seed before every forward and the order used is
recorded ("decoder_mod_order"). The encoder sees modalities in sorted order (as ml-4m's
collated batches are).
"""
import argparse
import inspect
import json
import os
import sys
import types

CONFIG_KEYS = [
    "domains_in", "domains_out", "dim", "encoder_depth", "decoder_depth", "num_heads",
    "mlp_ratio", "qkv_bias", "proj_bias", "mlp_bias", "norm_bias", "act_layer", "gated_mlp",
    "qk_norm", "image_size", "patch_size", "decoder_causal_mask", "decoder_sep_mask",
    "num_register_tokens", "share_modality_embeddings",
]
# Handled here rather than passed straight to FourM(...)
NON_CTOR_KEYS = {"domains_in", "domains_out", "norm_bias", "act_layer", "image_size", "patch_size"}
INT_TYPES = ("seq", "seq_token", "img")  # integer ids (img: only when the tensor is integer)


def die(msg):
    print(f"forward_losses.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def import_ml4m(ml4m_dir):
    if not ml4m_dir:
        die("set ML4M_DIR (or --ml4m-dir) to an extracted apple/ml-4m source tree")
    ml4m_dir = os.path.abspath(ml4m_dir)
    if not os.path.isdir(os.path.join(ml4m_dir, "fourm")):
        die(f"{ml4m_dir} has no fourm/ package")
    if ml4m_dir not in sys.path:
        sys.path.insert(0, ml4m_dir)
    return ml4m_dir


def install_random_shim(fm_module, record):
    """fourm/models/fm.py calls random.sample(dict.items(), k); Python >= 3.11 rejects a
    non-sequence population (<= 3.10 converted it with tuple()). Give fm.py a `random`
    namespace whose sample() does that tuple() conversion, then calls the real
    random.sample (same global RNG stream). It also records the decoder modality order."""
    import random as _random
    shim = types.SimpleNamespace(**{k: getattr(_random, k) for k in dir(_random)
                                    if not k.startswith("__")})

    def sample(population, k, **kw):
        if not isinstance(population, (list, tuple, range, str)):
            population = tuple(population)
        out = _random.sample(population, k, **kw)
        record.append([item[0] if isinstance(item, tuple) else item for item in out])
        return out

    shim.sample = sample
    fm_module.random = shim


def parse_value(s):
    import yaml
    try:
        return json.loads(s)
    except (json.JSONDecodeError, TypeError):
        return yaml.safe_load(s)


def read_config(weights_path, fourm_init_params):
    from safetensors import safe_open
    with safe_open(weights_path, framework="pt") as f:
        meta = f.metadata() or {}
    cfg, unknown = {}, []
    for k, v in meta.items():
        if k.startswith("tessera_"):
            continue
        if k in CONFIG_KEYS or k in fourm_init_params:
            cfg[k] = parse_value(v)
        else:
            unknown.append(k)
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if missing or unknown:
        die(f"{weights_path} __metadata__: missing config keys {missing}, unknown keys {unknown}")
    return cfg


def build_model(cfg, untied_logits):
    """As run_training_4m.py: setup_modality_info + get_model (model config from cfg)."""
    import torch
    from functools import partial
    from fourm.data.modality_info import MODALITY_INFO
    from fourm.models.fm import FourM
    from fourm.models.fm_utils import LayerNorm

    in_domains = sorted(cfg["domains_in"])
    out_domains = sorted(cfg["domains_out"])
    all_domains = sorted(set(in_domains) | set(out_domains))
    for mod in all_domains:
        if mod not in MODALITY_INFO:
            die(f"unknown modality {mod!r} (not in fourm.data.modality_info.MODALITY_INFO)")
    # setup_modality_info (copies, so MODALITY_INFO itself stays untouched)
    modality_info = {mod: dict(MODALITY_INFO[mod]) for mod in all_domains}
    for mod, info in modality_info.items():
        if info["type"] == "img":
            isz = info.get("input_size", cfg["image_size"])
            psz = info.get("patch_size", cfg["patch_size"])
            info["max_tokens"] = (isz // psz) ** 2

    def make(mod, key):
        info = modality_info[mod]
        ctor = info.get(key)
        if ctor is None:
            return None
        kw = {}
        if key == "decoder_embedding" and untied_logits:
            kw["share_embedding"] = False
        if info["type"] == "img":
            kw["image_size"] = info.get("input_size", cfg["image_size"])
            kw["patch_size"] = info.get("patch_size", cfg["patch_size"])
        return ctor(**kw)

    enc = {m: e for m in in_domains if (e := make(m, "encoder_embedding")) is not None}
    dec = {m: e for m in out_domains if (e := make(m, "decoder_embedding")) is not None}
    kwargs = {k: v for k, v in cfg.items() if k not in NON_CTOR_KEYS}
    kwargs["norm_layer"] = partial(LayerNorm, eps=1e-6, bias=bool(cfg["norm_bias"]))
    kwargs["act_layer"] = getattr(torch.nn, cfg["act_layer"])
    model = FourM(encoder_embeddings=enc, decoder_embeddings=dec,
                  modality_info=modality_info, **kwargs)
    return model, modality_info, all_domains


def load_weights(model, weights_path):
    """strict=True load, with a readable report of what does not match."""
    import torch
    from safetensors.torch import load_file
    sd = load_file(weights_path)
    own = model.state_dict(keep_vars=True)
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape_bad = sorted(f"{k}: file {tuple(sd[k].shape)} vs ml-4m {tuple(own[k].shape)}"
                       for k in set(sd) & set(own) if tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shape_bad:
        lines = [f"state dict of {weights_path} does not match ml-4m's FourM:"]
        lines += [f"  missing    {k}" for k in missing]
        lines += [f"  unexpected {k}" for k in unexpected]
        lines += [f"  shape      {s}" for s in shape_bad]
        lines.append(f"  ({len(missing)} missing, {len(unexpected)} unexpected, "
                     f"{len(shape_bad)} shape mismatches; ml-4m has {len(own)} keys, file {len(sd)})")
        die("\n".join(lines))
    # Tied tensors (to_logits/token_emb, shared mod_emb): the file must hold equal values
    # under every name, otherwise load_state_dict would silently keep the last one.
    groups = {}
    for k, t in own.items():
        groups.setdefault(id(t), []).append(k)
    untied = []
    for keys in groups.values():
        if len(keys) > 1:
            ref = sd[keys[0]]
            for k in keys[1:]:
                if not torch.equal(sd[k], ref):
                    untied.append(f"{keys[0]} != {k}")
    if untied:
        die("tensors that ml-4m ties differ in the file (use --untied-logits for untied "
            "decoder logits):\n  " + "\n  ".join(untied))
    # Buffers (sin-cos pos_emb, zero LayerNorm bias): compare with ml-4m's own values.
    buf_names = {n for n, _ in model.named_buffers()}
    ml4m_buffers = {k: v.detach().clone() for k, v in own.items() if k in buf_names}
    model.load_state_dict(sd, strict=True)
    buffer_diff = {}
    for k, v in ml4m_buffers.items():
        d = (sd[k].double() - v.double()).abs().max().item() if v.numel() else 0.0
        buffer_diff[k] = d
    file_dtypes = sorted({str(t.dtype) for t in sd.values()})
    return ml4m_buffers, buffer_diff, file_dtypes, len(sd)


def read_batch(batch_path, modality_info, all_domains, float_dtype):
    import torch
    from safetensors.torch import load_file
    raw = load_file(batch_path)
    mods = {}
    for key, t in raw.items():
        if "." not in key:
            die(f"batch key {key!r} is not <modality>.<field>")
        mod, field = key.rsplit(".", 1)
        if field not in ("tensor", "input_mask", "target_mask", "decoder_attention_mask"):
            die(f"batch key {key!r}: unknown field {field!r}")
        mods.setdefault(mod, {})[field] = t
    warnings = []
    order = [m for m in all_domains if m in mods] + sorted(m for m in mods if m not in all_domains)
    mod_dict = {}
    for mod in order:
        d = mods[mod]
        lack = [f for f in ("tensor", "input_mask", "target_mask", "decoder_attention_mask")
                if f not in d]
        if lack:
            die(f"batch modality {mod!r} lacks {lack}")
        if mod not in modality_info:
            warnings.append(f"batch modality {mod!r} is not in the model's domains (ignored by ml-4m)")
        t = d["tensor"]
        if t.is_floating_point():
            t = t.to(float_dtype)
        else:
            # ml-4m's masking emits int32 sequence ids; embedding lookups and the loss's
            # .long() give identical results for int32 and int64, so long() changes nothing.
            t = t.long()
        mod_dict[mod] = {
            "tensor": t,
            "input_mask": d["input_mask"].bool(),
            "target_mask": d["target_mask"].bool(),
            "decoder_attention_mask": d["decoder_attention_mask"].to(torch.int32),
        }
    for mod in all_domains:
        if mod not in mods:
            warnings.append(f"model domain {mod!r} is absent from the batch")
    return mod_dict, warnings


def fresh(mod_dict):
    # ml-4m's embedding modules write 'x', 'emb', 'ids' into the per-modality dicts.
    return {m: dict(d) for m, d in mod_dict.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--batch", required=True)
    ap.add_argument("--num-input-tokens", type=int, required=True)
    ap.add_argument("--num-target-tokens", type=int, required=True)
    ap.add_argument("--loss", choices=["mod", "token"], required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0,
                    help="seeds Python's random before each forward (decoder modality order)")
    ap.add_argument("--return-logits", metavar="FILE.safetensors",
                    help="also run model(..., return_logits=True) and save `<mod>.logits` "
                         "(B, M, vocab) plus `_decoder.{target_ids,mask,mod_mask}`")
    ap.add_argument("--untied-logits", action="store_true",
                    help="build decoder embeddings with share_embedding=False (HF FM checkpoints)")
    ap.add_argument("--ml4m-buffers", action="store_true",
                    help="after loading, put back ml-4m's own buffers (sin-cos pos_emb, ...)")
    ap.add_argument("--ml4m-dir", default=os.environ.get("ML4M_DIR"))
    a = ap.parse_args()

    ml4m_dir = import_ml4m(a.ml4m_dir)
    import random
    import torch
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    import fourm.models.fm as fm

    order_log = []
    install_random_shim(fm, order_log)
    init_params = set(inspect.signature(fm.FourM.__init__).parameters) - {
        "self", "encoder_embeddings", "decoder_embeddings", "modality_info", "act_layer", "norm_layer"}
    cfg = read_config(a.weights, init_params)
    model, modality_info, all_domains = build_model(cfg, a.untied_logits)
    ml4m_buffers, buffer_diff, file_dtypes, n_keys = load_weights(model, a.weights)
    if a.ml4m_buffers:
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in ml4m_buffers:
                    b.copy_(ml4m_buffers[n])
    big = {k: v for k, v in buffer_diff.items() if v > 1e-6}
    if big:
        print(f"warning: {len(big)} buffers differ from ml-4m's own by > 1e-6: "
              + ", ".join(f"{k} ({v:.3g})" for k, v in sorted(big.items())), file=sys.stderr)
    float_dtype = getattr(torch, a.dtype)
    model = model.to(float_dtype)
    model.eval()
    mod_dict, warnings = read_batch(a.batch, modality_info, all_domains, float_dtype)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)

    with torch.no_grad():
        random.seed(a.seed)
        loss, mod_loss = model(fresh(mod_dict), num_encoder_tokens=a.num_input_tokens,
                               num_decoder_tokens=a.num_target_tokens, loss_type=a.loss)
    decoder_order = order_log[-1] if order_log else None

    result = {
        "loss": float(loss.item()),
        "mod_loss": {m: float(v.item()) for m, v in mod_loss.items()},
        "torch_version": torch.__version__,
        "ml4m_dir": ml4m_dir,
        "dtype": a.dtype,
        "loss_type": a.loss,
        "num_input_tokens": a.num_input_tokens,
        "num_target_tokens": a.num_target_tokens,
        "seed": a.seed,
        "threads": a.threads,
        "encoder_mod_order": [m for m in mod_dict if m in model.encoder_embeddings],
        "decoder_mod_order": decoder_order,
        "modality_ids": {m: modality_info[m]["id"] for m in all_domains},
        "config": cfg,
        "weights_file_dtypes": file_dtypes,
        "weights_file_keys": n_keys,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "buffers_from": "ml4m" if a.ml4m_buffers else "weights file",
        "buffer_max_abs_diff_vs_ml4m": max(buffer_diff.values(), default=0.0),
        "warnings": warnings,
    }

    if a.return_logits:
        from safetensors.torch import save_file
        captured = {}
        orig = model.forward_mask_decoder

        def capture(md, n):
            out = orig(md, n)
            _, _, dmask, tids, _, mmask = out
            captured.update({"_decoder.target_ids": tids.long(), "_decoder.mask": dmask[:, 0],
                             "_decoder.mod_mask": mmask})
            return out

        model.forward_mask_decoder = capture
        with torch.no_grad():
            random.seed(a.seed)
            logits = model(fresh(mod_dict), num_encoder_tokens=a.num_input_tokens,
                           num_decoder_tokens=a.num_target_tokens, return_logits=True)
        del model.forward_mask_decoder
        if order_log[-1] != decoder_order:
            die("decoder modality order differed between the loss and the logits forward")
        tensors = {f"{m}.logits": v.contiguous() for m, v in logits.items()}
        tensors.update({k: v.contiguous() for k, v in captured.items()})
        save_file(tensors, a.return_logits, metadata={
            "decoder_mod_order": json.dumps(decoder_order),
            "modality_ids": json.dumps(result["modality_ids"]),
            "dtype": a.dtype,
            "note": "<mod>.logits = that modality's to_logits applied to every decoder position "
                    "(ml-4m return_all_logits); _decoder.mod_mask == modality id marks its "
                    "positions (-1 = padding); _decoder.target_ids are the targets there",
        })
        result["logits_file"] = os.path.abspath(a.return_logits)

    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(json.dumps({"loss": result["loss"], "mod_loss": result["mod_loss"]}))


if __name__ == "__main__":
    main()
