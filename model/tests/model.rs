//! Model-level properties: numerics against ml-4m, metamorphic invariances, learning, gradient
//! coverage, save/load identity and clear errors on bad input. CPU, fp32, seeded.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};
use tessera_model::{
    AdamW, AdamWConfig, Checkpoint, Flavor, ForwardOptions, FourMConfig, LossType, MaskedBatch, Preset, SyntheticSpec, io, synthetic_batch,
};
use tessera_tokenizers::{Modality, ModalityKind, ModalitySet};

fn small_config(modalities: &str, flavor: Flavor) -> FourMConfig {
    let mut cfg = FourMConfig::preset(Preset::Tiny, flavor, &ModalitySet::parse(modalities).unwrap());
    cfg.dim = 64;
    cfg.encoder_depth = 2;
    cfg.decoder_depth = 2;
    cfg.num_heads = 4;
    cfg
}

fn losses(ckpt: &Checkpoint, batch: &MaskedBatch, opts: &ForwardOptions) -> (f64, BTreeMap<Modality, f64>) {
    let out = tch::no_grad(|| ckpt.model.forward(batch, opts)).unwrap();
    (out.loss.double_value(&[]), out.mod_loss.iter().map(|(m, l)| (*m, l.double_value(&[]))).collect())
}

fn rel(a: f64, b: f64) -> f64 {
    if a == b { 0.0 } else { (a - b).abs() / a.abs().max(b.abs()) }
}

/// Every case of the fixture: tessera regenerates the weights and the batch that ml-4m's FourM
/// was run on (tools/ml4m_reference/make_fixture.sh) and must reproduce its losses.
#[test]
fn losses_match_ml4m_reference_fixture() {
    tch::set_num_threads(1);
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ml4m_losses.json")).unwrap();
    let fx: serde_json::Value = serde_json::from_str(&text).unwrap();
    let bs = &fx["batch"];
    let mut worst = 0.0f64;
    for case in fx["cases"].as_array().unwrap() {
        let flavor: Flavor = case["flavor"].as_str().unwrap().parse().unwrap();
        let cfg = small_config(fx["arch"]["modalities"].as_str().unwrap(), flavor);
        let ckpt = Checkpoint::init(&cfg, Device::Cpu, case["init_seed"].as_i64().unwrap()).unwrap();
        ckpt.redraw(case["redraw_seed"].as_i64().unwrap(), case["redraw_scale"].as_f64().unwrap());
        let batch = synthetic_batch(
            &cfg,
            &SyntheticSpec {
                batch_size: bs["batch_size"].as_u64().unwrap() as usize,
                input_tokens: bs["num_input_tokens"].as_u64().unwrap() as usize,
                target_tokens: bs["num_target_tokens"].as_u64().unwrap() as usize,
                seed: bs["seed"].as_u64().unwrap(),
            },
        );
        let opts = ForwardOptions {
            num_encoder_tokens: case["num_encoder_tokens"].as_i64().unwrap(),
            num_decoder_tokens: case["num_decoder_tokens"].as_i64().unwrap(),
            loss: case["loss_type"].as_str().unwrap().parse::<LossType>().unwrap(),
            ..ForwardOptions::default()
        };
        let (loss, mods) = losses(&ckpt, &batch, &opts);
        let expected = case["mod_loss"].as_object().unwrap();
        assert_eq!(mods.len(), expected.len(), "decoder modalities");
        for (key, want) in expected {
            let got = mods[&key.parse::<Modality>().unwrap()];
            let want = want.as_f64().unwrap();
            assert!(rel(got, want) <= 1e-5, "{key}: tessera {got} vs ml-4m {want}");
            worst = worst.max(rel(got, want));
        }
        let want = case["loss"].as_f64().unwrap();
        assert!(rel(loss, want) <= 1e-5, "total: tessera {loss} vs ml-4m {want}");
    }
    eprintln!("max relative difference to ml-4m: {worst:e}");
}

/// Positions that are neither inputs nor targets are padding: their content must not matter.
#[test]
fn padding_content_does_not_change_losses() {
    let cfg = small_config("4m21", Flavor::SwigluNobias);
    let ckpt = Checkpoint::init(&cfg, Device::Cpu, 3).unwrap();
    ckpt.redraw(4, 1.0);
    let batch = synthetic_batch(&cfg, &SyntheticSpec { batch_size: 2, input_tokens: 128, target_tokens: 128, seed: 9 });
    let opts = ForwardOptions { num_encoder_tokens: 128, num_decoder_tokens: 128, ..ForwardOptions::default() };
    let (base, base_mods) = losses(&ckpt, &batch, &opts);

    let mut changed = 0;
    let mut perturbed = BTreeMap::new();
    for (m, t) in &batch.modalities {
        let unused = t.input_mask.logical_and(&t.target_mask);
        changed += unused.sum(Kind::Int64).int64_value(&[]);
        let tensor = match m.kind() {
            ModalityKind::Pixels => {
                // Patch-level mask -> pixel mask: (B,196) -> (B,1,224,224) via the 14x14 grid.
                let b = t.tensor.size()[0];
                let side = m.spec().grid_side() as i64;
                let p = m.spec().patch_size as i64;
                let grid = t.input_mask.reshape([b, 1, side, 1, side, 1]).expand([b, 1, side, p, side, p], false).reshape([
                    b,
                    1,
                    side * p,
                    side * p,
                ]);
                t.tensor.where_self(&grid.logical_not(), &(&t.tensor * -37.0 + 11.0))
            }
            ModalityKind::SequenceEmbedding => t.tensor.where_self(&t.input_mask.logical_not().unsqueeze(-1), &(&t.tensor * -37.0 + 11.0)),
            _ => {
                // Deterministic "random" ids (no global RNG in tests that run in parallel).
                let other_ids = (&t.tensor * 7919 + 13).remainder(m.spec().vocab_size as i64);
                t.tensor.where_self(&unused.logical_not(), &other_ids)
            }
        };
        perturbed.insert(
            *m,
            tessera_model::ModalityTensors {
                tensor,
                input_mask: t.input_mask.shallow_clone(),
                target_mask: t.target_mask.shallow_clone(),
                decoder_attention_mask: t.decoder_attention_mask.shallow_clone(),
            },
        );
    }
    assert!(changed > 1000, "the batch must have padding to perturb, got {changed}");
    let (after, after_mods) = losses(&ckpt, &MaskedBatch { modalities: perturbed }, &opts);
    assert_eq!(base.to_bits(), after.to_bits(), "total loss changed: {base} vs {after}");
    assert_eq!(base_mods, after_mods);
}

/// The decoder modality order (ml-4m shuffles it per batch) must not change per-modality losses.
#[test]
fn decoder_modality_order_does_not_change_losses() {
    let cfg = small_config("4m21", Flavor::SwigluNobias);
    let ckpt = Checkpoint::init(&cfg, Device::Cpu, 5).unwrap();
    ckpt.redraw(6, 1.0);
    let batch = synthetic_batch(&cfg, &SyntheticSpec { batch_size: 2, input_tokens: 256, target_tokens: 256, seed: 1 });
    let (_, sorted) = losses(&ckpt, &batch, &ForwardOptions::default());
    for seed in [1, 2, 3] {
        let (_, shuffled) = losses(&ckpt, &batch, &ForwardOptions { decoder_order_seed: Some(seed), ..ForwardOptions::default() });
        for (m, l) in &sorted {
            assert!(rel(*l, shuffled[m]) < 1e-6, "{m}: {l} vs {} with order seed {seed}", shuffled[m]);
        }
    }
}

/// A tiny model memorises one batch, and its gradients are finite and reach what the batch uses.
#[test]
fn tiny_model_overfits_one_batch_with_finite_gradients() {
    tch::set_num_threads(2);
    let cfg = small_config("caption,det,tok_rgb@224,tok_dinov2_global,rgb@224,t5_caption", Flavor::SwigluNobias);
    let ckpt = Checkpoint::init(&cfg, Device::Cpu, 7).unwrap();
    let batch = synthetic_batch(&cfg, &SyntheticSpec { batch_size: 2, input_tokens: 64, target_tokens: 64, seed: 3 });
    let opts = ForwardOptions { num_encoder_tokens: 64, num_decoder_tokens: 64, ..ForwardOptions::default() };
    let mut opt = AdamW::new(&ckpt.vs, AdamWConfig { lr: 3e-3, weight_decay: 0.0, ..AdamWConfig::default() }).unwrap();

    // Precondition: every modality of this batch has inputs, and every output modality targets,
    // so every parameter takes part in the loss.
    for (m, t) in &batch.modalities {
        assert!(t.input_mask.logical_not().any().int64_value(&[]) == 1, "{m} has no input");
        if cfg.domains_out.contains(m) {
            assert!(t.target_mask.logical_not().sum(Kind::Int64).int64_value(&[]) >= 2, "{m} has no target pair");
        }
    }
    opt.zero_grad().unwrap();
    let first = ckpt.model.forward(&batch, &opts).unwrap();
    first.loss.backward();
    for (name, p) in opt.params() {
        let g = p.grad();
        assert!(g.defined(), "{name} received no gradient");
        assert!(bool::try_from(g.isfinite().all()).unwrap(), "{name} has a non-finite gradient");
        assert!(g.norm().double_value(&[]) > 0.0, "{name} has an all-zero gradient");
    }
    opt.step().unwrap();
    let initial = first.loss.double_value(&[]);
    let mut last = initial;
    for _ in 0..150 {
        opt.zero_grad().unwrap();
        let out = ckpt.model.forward(&batch, &opts).unwrap();
        out.loss.backward();
        opt.step().unwrap();
        last = out.loss.double_value(&[]);
    }
    assert!(initial > 5.0, "initial loss {initial}");
    assert!(last < 0.05, "loss after 150 steps: {last} (from {initial})");
}

/// Saving and loading reproduces the model bit for bit, under ml-4m's names.
#[test]
fn save_load_forward_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config("4m21", Flavor::Gelu);
    let ckpt = Checkpoint::init(&cfg, Device::Cpu, 8).unwrap();
    ckpt.redraw(9, 0.5);
    let batch = synthetic_batch(&cfg, &SyntheticSpec { batch_size: 2, input_tokens: 128, target_tokens: 128, seed: 2 });
    let path = dir.path().join("m.safetensors");
    ckpt.save(&path).unwrap();
    let loaded = Checkpoint::load(&path, Device::Cpu).unwrap();
    assert_eq!(loaded.model.config(), ckpt.model.config());
    let opts = ForwardOptions { num_encoder_tokens: 128, num_decoder_tokens: 128, ..ForwardOptions::default() };
    let (a, am) = losses(&ckpt, &batch, &opts);
    let (b, bm) = losses(&loaded, &batch, &opts);
    assert_eq!(a.to_bits(), b.to_bits());
    assert_eq!(am, bm);

    // The file holds ml-4m's keys, including buffers and both names of tied tensors.
    let (tensors, md) = io::read(&path).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    for key in [
        "encoder.0.norm1.bias",
        "decoder_embeddings.caption.to_logits.weight",
        "decoder_embeddings.caption.mod_emb",
        "encoder_embeddings.caption.pos_emb",
        "decoder_proj_context.bias",
        "mask_token",
    ] {
        assert!(names.contains(&key), "{key} missing from the saved file");
    }
    assert_eq!(md["act_layer"], "\"GELU\"");

    // The batch file round-trips too.
    let bpath = dir.path().join("b.safetensors");
    batch.save(&bpath).unwrap();
    let reread = MaskedBatch::load(&bpath).unwrap();
    let (c, _) = losses(&loaded, &reread, &opts);
    assert_eq!(a.to_bits(), c.to_bits());
}

/// An untied checkpoint (ml-4m's FM wrapper) loads with separate output projections.
#[test]
fn untied_checkpoint_loads_untied() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config("caption,tok_rgb@224", Flavor::SwigluNobias);
    let ckpt = Checkpoint::init(&cfg, Device::Cpu, 1).unwrap();
    let mut sd = ckpt.state_dict();
    for (name, t) in sd.iter_mut() {
        if name == "decoder_embeddings.caption.to_logits.weight" {
            *t = t.copy() + 1.0;
        }
    }
    let path = dir.path().join("untied.safetensors");
    io::write(&path, &sd, &cfg.to_metadata()).unwrap();
    let loaded = Checkpoint::load(&path, Device::Cpu).unwrap();
    assert!(!loaded.model.config().tie_decoder_embeddings);
    let names: Vec<String> = loaded.state_dict().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"decoder_embeddings.caption.to_logits.weight".to_string()));
}

fn expect_err<T: std::fmt::Debug>(r: tessera_model::Result<T>, needles: &[&str]) {
    let msg = r.expect_err("expected an error").to_string();
    for n in needles {
        assert!(msg.contains(n), "error '{msg}' should mention '{n}'");
    }
}

#[test]
fn bad_batches_are_rejected_with_modality_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config("caption,tok_rgb@224", Flavor::SwigluNobias);
    let batch = synthetic_batch(&cfg, &SyntheticSpec { batch_size: 2, input_tokens: 32, target_tokens: 32, seed: 1 });
    let good = batch.named_tensors();
    let write = |name: &str, tensors: Vec<(String, Tensor)>| {
        let p = dir.path().join(name);
        io::write(&p, &tensors, &BTreeMap::new()).unwrap();
        p
    };
    let edit = |key: &str, f: &dyn Fn(&Tensor) -> Tensor| {
        good.iter().map(|(n, t)| (n.clone(), if n == key { f(t) } else { t.shallow_clone() })).collect::<Vec<_>>()
    };

    let p = write("unknown.safetensors", good.iter().map(|(n, t)| (n.replace("caption", "captions"), t.shallow_clone())).collect());
    expect_err(MaskedBatch::load(&p), &["captions", "unknown modality"]);

    let p = write(
        "missing.safetensors",
        good.iter().filter(|(n, _)| n != "tok_rgb@224.target_mask").map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
    );
    expect_err(MaskedBatch::load(&p), &["tok_rgb@224.target_mask", "missing"]);

    let p = write("dtype.safetensors", edit("caption.input_mask", &|t| t.to_kind(Kind::Uint8)));
    expect_err(MaskedBatch::load(&p), &["caption.input_mask", "bool"]);

    let p = write("shape.safetensors", edit("tok_rgb@224.tensor", &|t| t.narrow(1, 0, 100)));
    expect_err(MaskedBatch::load(&p), &["tok_rgb@224.tensor", "196"]);

    let p = write("range.safetensors", edit("tok_rgb@224.tensor", &|t| t.fill(20000)));
    expect_err(MaskedBatch::load(&p), &["tok_rgb@224.tensor", "vocabulary"]);

    let p = write("float_ids.safetensors", edit("caption.tensor", &|t| t.to_kind(Kind::Float)));
    expect_err(MaskedBatch::load(&p), &["caption.tensor", "integer"]);

    // A truncated file: the parser's complaint plus the path.
    let full = write("full.safetensors", good.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect());
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    expect_err(MaskedBatch::load(&cut), &["cut.safetensors", "not a valid safetensors"]);
    expect_err(MaskedBatch::load(&dir.path().join("absent.safetensors")), &["absent.safetensors"]);

    // A batch modality the model lacks.
    let other = small_config("caption", Flavor::SwigluNobias);
    let b = MaskedBatch::load(&full).unwrap();
    expect_err(b.check_against(&other, "full.safetensors").map(|_| ()), &["tok_rgb@224", "no embedding"]);
}

#[test]
fn bad_checkpoints_name_the_offending_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config("caption,tok_rgb@224", Flavor::SwigluNobias);
    let ckpt = Checkpoint::init(&cfg, Device::Cpu, 1).unwrap();
    let sd = ckpt.state_dict();
    let md = cfg.to_metadata();
    let save = |name: &str, tensors: Vec<(String, Tensor)>, md: &BTreeMap<String, String>| {
        let p = dir.path().join(name);
        io::write(&p, &tensors, md).unwrap();
        p
    };
    let p = save(
        "missing.safetensors",
        sd.iter().filter(|(n, _)| n != "encoder.1.attn.qkv.weight").map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
        &md,
    );
    expect_err(Checkpoint::load(&p, Device::Cpu), &["missing keys", "encoder.1.attn.qkv.weight", "missing.safetensors"]);

    let mut extra: Vec<_> = sd.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    extra.push(("encoder.9.attn.qkv.weight".into(), Tensor::zeros([3], (Kind::Float, Device::Cpu))));
    let p = save("extra.safetensors", extra, &md);
    expect_err(Checkpoint::load(&p, Device::Cpu), &["unexpected keys", "encoder.9.attn.qkv.weight"]);

    let p = save(
        "shape.safetensors",
        sd.iter()
            .map(|(n, t)| {
                (n.clone(), if n == "mask_token" { Tensor::zeros([1, 1, 8], (Kind::Float, Device::Cpu)) } else { t.shallow_clone() })
            })
            .collect(),
        &md,
    );
    expect_err(Checkpoint::load(&p, Device::Cpu), &["mask_token", "[1, 1, 64]", "[1, 1, 8]"]);

    let mut bad_md = md.clone();
    bad_md.insert("domains_in".into(), "[\"caption\", \"nope\"]".into());
    let p = save("badcfg.safetensors", sd.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(), &bad_md);
    expect_err(Checkpoint::load(&p, Device::Cpu), &["nope", "domains_in"]);
}

fn rows(batch: &MaskedBatch, start: i64, len: i64) -> MaskedBatch {
    MaskedBatch {
        modalities: batch
            .modalities
            .iter()
            .map(|(m, t)| {
                (
                    *m,
                    tessera_model::ModalityTensors {
                        tensor: t.tensor.narrow(0, start, len),
                        input_mask: t.input_mask.narrow(0, start, len),
                        target_mask: t.target_mask.narrow(0, start, len),
                        decoder_attention_mask: t.decoder_attention_mask.narrow(0, start, len),
                    },
                )
            })
            .collect(),
    }
}

/// With the whole batch's target counts as normaliser, the losses and gradients of any split
/// of a batch sum to those of the whole batch ('mod' and 'token' losses): what gradient
/// accumulation and data parallelism rely on to be independent of the split.
#[test]
fn normalised_parts_sum_to_the_whole_batch() {
    tch::set_num_threads(1);
    for loss in [LossType::Mod, LossType::Token] {
        let cfg = small_config("caption,det,tok_rgb@224,tok_depth@224", Flavor::SwigluNobias);
        let ckpt = Checkpoint::init(&cfg, Device::Cpu, 4).unwrap();
        let batch = synthetic_batch(&cfg, &SyntheticSpec { batch_size: 6, input_tokens: 48, target_tokens: 48, seed: 8 });
        let opts =
            ForwardOptions { num_encoder_tokens: 48, num_decoder_tokens: 48, loss, decoder_order_seed: Some(3), ..Default::default() };
        let grads = |parts: &[(i64, i64)], normalise: bool| -> (f64, Vec<Tensor>) {
            for (_, v) in ckpt.vs.variables() {
                let mut g = v.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            let mut total = 0.0;
            let counts = normalise.then(|| {
                let mut c: BTreeMap<Modality, i64> = BTreeMap::new();
                for &(s, l) in parts {
                    for (m, n) in ckpt.model.target_counts(&rows(&batch, s, l), &opts).unwrap() {
                        *c.entry(m).or_default() += n;
                    }
                }
                c
            });
            for &(s, l) in parts {
                let o = ForwardOptions { loss_normalizer: counts.clone(), ..opts.clone() };
                let out = ckpt.model.forward(&rows(&batch, s, l), &o).unwrap();
                out.loss.backward();
                total += out.loss.double_value(&[]);
            }
            let mut names: Vec<String> = ckpt.vs.variables().keys().cloned().collect();
            names.sort();
            let vars = ckpt.vs.variables();
            (total, names.iter().filter(|n| vars[*n].grad().defined()).map(|n| vars[n].grad().copy()).collect())
        };
        let (whole, g_whole) = grads(&[(0, 6)], false);
        let (split, g_split) = grads(&[(0, 2), (2, 1), (3, 3)], true);
        assert!(rel(whole, split) < 1e-6, "{loss:?}: whole {whole} vs parts {split}");
        assert_eq!(g_whole.len(), g_split.len());
        for (a, b) in g_whole.iter().zip(&g_split) {
            let diff = (a - b).abs().max().double_value(&[]);
            let scale = a.abs().max().double_value(&[]).max(1e-8);
            assert!(diff / scale < 1e-4, "{loss:?}: gradient differs by {diff} (scale {scale})");
        }
        // The counts are those the forward itself reports.
        let out = tch::no_grad(|| ckpt.model.forward(&batch, &opts)).unwrap();
        assert_eq!(ckpt.model.target_counts(&batch, &opts).unwrap(), out.target_counts);
    }
}
