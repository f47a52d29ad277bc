//! The user-facing form of `tessera generate`: conditions given as files and text
//! (`--input rgb@224=img.png --input caption="a red cube"`), targets by key (`--target
//! tok_depth@64`; a token modality's input may be a picture, `tok_depth@64=depth.png`,
//! encoded with its tokenizer), a default schedule (MaskGIT for image-like targets, autoregression for
//! sequences), and decoded outputs in a directory: a PNG per image-like target through its
//! modality tokenizer, text per sequence target (plus parsed JSON for boxes, metadata and
//! palettes), the raw ids, and the `cond.safetensors` / `schedule.yaml` the machine interface
//! reads, so a run can be repeated or varied with `--batch/--schedule`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};
use tessera_model::MaskedBatch;
use tessera_model::generate::{TextSpecials, empty_target, full_input};
use tessera_tokenizers::shards::{CropSetting, ResizeFilter, Rgb8Image, rgb_transform};
use tessera_tokenizers::text::TextTokenizer;
use tessera_tokenizers::{Modality, ModalityKind};

use super::decode::{Assets, decode_tokens, parse_sequence, render, row_ids, sequence_text};
use super::encode::image_to_tokens;

/// Settings of the default schedule the user form writes.
#[derive(Debug, Clone)]
pub struct DefaultSchedule {
    /// MaskGIT steps per image-like target.
    pub steps: usize,
    /// Sampling temperature.
    pub temperature: f64,
    /// top-k (1 = greedy).
    pub top_k: usize,
}

/// The model's input for one RGB picture: the whole image (centre square), resized to the
/// modality's side and ImageNet-normalised as the data path does (crop 0, bicubic), (1, 3, S, S).
pub fn rgb_input(img: &Rgb8Image, side: usize) -> anyhow::Result<Tensor> {
    let s = img.width.min(img.height) as i64;
    let c = CropSetting { top: (img.height as i64 - s) / 2, left: (img.width as i64 - s) / 2, height: s, width: s, hflip: false };
    let chw = rgb_transform(img, &c, side, ResizeFilter::Bicubic)?;
    Ok(Tensor::from_slice(&chw.data).view([1, 3, chw.height as i64, chw.width as i64]))
}

/// A caption's input ids: the text tokenized, then `[EOS]` (the data path's layout), (1, L).
pub fn text_input(tok: &TextTokenizer, text: &str) -> anyhow::Result<Tensor> {
    let mut ids: Vec<i64> = tok.encode(text)?.into_iter().map(i64::from).collect();
    ids.push(i64::from(tok.eos_id().context("the text tokenizer has no [EOS]")?));
    Ok(Tensor::from_slice(&ids).view([1, -1]))
}

fn read_png(path: &Path, key: &str) -> anyhow::Result<Rgb8Image> {
    let img = image::open(path).with_context(|| format!("--input {key}={}: not a readable image", path.display()))?.to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Rgb8Image::new(w, h, img.into_raw()).with_context(|| format!("--input {key}={}: malformed image", path.display()))
}

/// Token ids from a JSON list (one sample), checked against the modality's length.
fn read_ids(path: &Path, m: Modality) -> anyhow::Result<Tensor> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--input {m}={}: not readable", path.display()))?;
    let ids: Vec<i64> =
        serde_json::from_str(&text).with_context(|| format!("--input {m}={}: expected a JSON list of token ids", path.display()))?;
    let want = m.spec().max_tokens;
    if ids.len() != want {
        bail!("--input {m}={}: {} ids, {m} has {want} tokens", path.display(), ids.len());
    }
    Ok(Tensor::from_slice(&ids).view([1, -1]))
}

/// Builds the conditioning batch (one sample) from `--input` and `--target` arguments; a
/// token modality's picture is encoded with its tokenizer from `assets`.
pub fn build_batch(
    inputs: &[String],
    targets: &[Modality],
    assets: Option<&Assets>,
    text: Option<&TextTokenizer>,
    specials: &TextSpecials,
    max_tokens: i64,
) -> anyhow::Result<MaskedBatch> {
    let mut batch = MaskedBatch { modalities: Default::default() };
    for arg in inputs {
        let (key, value) = arg.split_once('=').with_context(|| format!("--input {arg}: expected KEY=VALUE (rgb@224=img.png)"))?;
        let m = Modality::from_key(key).with_context(|| format!("--input {arg}: unknown modality '{key}'"))?;
        let tensor = match m.kind() {
            ModalityKind::Pixels => rgb_input(&read_png(Path::new(value), key)?, m.spec().image_size)?,
            ModalityKind::Sequence => {
                let tok = text.with_context(|| format!("--input {key}: text needs a text tokenizer (--tokenizers or --text-tokenizer)"))?;
                text_input(tok, value)?
            }
            // A JSON list is the ids themselves; anything else is a picture to tokenize.
            ModalityKind::ImageTokens | ModalityKind::GlobalTokens if value.ends_with(".json") => read_ids(Path::new(value), m)?,
            ModalityKind::ImageTokens | ModalityKind::GlobalTokens => image_to_tokens(m, Path::new(value), assets)?,
            ModalityKind::SequenceEmbedding => bail!("--input {key}: sequence embeddings are not supported as user inputs"),
        };
        batch.modalities.insert(m, full_input(m, tensor, None, specials)?);
    }
    for &m in targets {
        if batch.modalities.contains_key(&m) {
            bail!("--target {m}: it is also an --input");
        }
        let n = if m.kind() == ModalityKind::Sequence { max_tokens } else { m.spec().max_tokens as i64 };
        batch.modalities.insert(m, empty_target(m, 1, n, specials, Device::Cpu)?);
    }
    Ok(batch)
}

/// The schedule YAML (ml-4m's keyword names) of the default chain: the inputs condition,
/// targets in the given order, each conditioning the next.
pub fn schedule_yaml(conds: &[Modality], targets: &[Modality], batch: &MaskedBatch, d: &DefaultSchedule) -> String {
    let list = |v: Vec<String>| format!("[{}]", v.join(", "));
    let per = |f: &dyn Fn(Modality) -> String| list(targets.iter().map(|&m| f(m)).collect());
    let seq = |m: Modality| m.kind() == ModalityKind::Sequence;
    format!(
        "cond_domains: {}\ntarget_domains: {}\ntokens_per_target: {}\nautoregression_schemes: {}\ndecoding_steps: {}\n\
         token_decoding_schedules: {}\ntemps: {}\ntemp_schedules: {}\ncfg_scales: {}\ncfg_schedules: {}\n\
         cfg_grow_conditioning: false\ntop_k: {}\ntop_p: 0.0\n",
        list(conds.iter().map(|m| m.key().to_string()).collect()),
        per(&|m| m.key().to_string()),
        per(&|m| batch.modalities[&m].tensor.size()[1].to_string()),
        per(&|m| if seq(m) { "autoregressive".into() } else { "maskgit".into() }),
        per(&|m| if seq(m) { "1".into() } else { d.steps.to_string() }),
        per(&|_| "cosine".into()),
        per(&|_| format!("{:?}", d.temperature)),
        per(&|_| "constant".into()),
        per(&|_| "1.0".into()),
        per(&|_| "constant".into()),
        d.top_k,
    )
}

/// Checks, before any generation, that every target can be decoded with `assets`.
pub fn check_decodable(targets: &[Modality], assets: Option<&Assets>, text: Option<&TextTokenizer>) -> anyhow::Result<()> {
    for &m in targets {
        match m.kind() {
            ModalityKind::Sequence if text.is_none() => {
                bail!("--target {m}: decoding it needs a text tokenizer (--tokenizers DIR with text_tokenizer.json, or --text-tokenizer)")
            }
            ModalityKind::ImageTokens | ModalityKind::GlobalTokens => {
                assets
                    .with_context(|| format!("--target {m}: decoding it needs --tokenizers DIR (its modality tokenizer)"))?
                    .tokenizer(m)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes every target of `out` (row 0) into `dir`: `<key>.png` for image-like targets,
/// `<key>.txt` (and `<key>.json` when structured) for sequences, `<key>.ids.json` always.
/// Returns the files written.
pub fn write_outputs(
    out: &MaskedBatch,
    targets: &[Modality],
    assets: Option<&Assets>,
    text: Option<&TextTokenizer>,
    dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut write = |name: String, bytes: Vec<u8>| -> anyhow::Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        files.push(p);
        Ok(())
    };
    for &m in targets {
        let t = &out.modalities[&m];
        let key = m.key();
        match m.kind() {
            ModalityKind::Sequence => {
                let ids = row_ids(&t.tensor, &t.input_mask, 0)?;
                let tok = text.context("no text tokenizer")?;
                let s = sequence_text(tok, &ids)?;
                write(format!("{key}.ids.json"), serde_json::to_vec(&ids)?)?;
                write(format!("{key}.txt"), format!("{s}\n").into_bytes())?;
                let parsed = match parse_sequence(m, &s) {
                    Ok(v) => v,
                    // A model may write text the grammar does not accept: keep it, say so.
                    Err(e) => Some(json!({"text": s, "error": format!("{e:#}")})),
                };
                if let Some(v) = parsed {
                    write(format!("{key}.json"), serde_json::to_vec_pretty(&v)?)?;
                }
            }
            _ => {
                let ids: Vec<i64> = Vec::try_from(t.tensor.get(0).to_kind(Kind::Int64))?;
                write(format!("{key}.ids.json"), serde_json::to_vec(&ids)?)?;
                let assets = assets.context("no tokenizers")?;
                let x = decode_tokens(assets, m, &t.tensor.narrow(0, 0, 1))?;
                let img = render(&assets.tokenizer(m)?.config().modality, &x.get(0), None);
                let mut png = std::io::Cursor::new(Vec::new());
                img.write_to(&mut png, image::ImageFormat::Png)?;
                write(format!("{key}.png"), png.into_inner())?;
            }
        }
    }
    Ok(files)
}

/// The summary line of one written output file.
pub fn describe(files: &[PathBuf]) -> Value {
    Value::Array(files.iter().map(|f| json!(f.display().to_string())).collect())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tch::Device;
    use tessera_model::tokenizer::{ModalityTokenizer, Tokenizer, TokenizerConfig, token_modality_def};
    use tessera_model::{Checkpoint, Flavor, FourMConfig, Preset};
    use tessera_tokenizers::ModalitySet;
    use tessera_tokenizers::text::{TextTokenizer, TrainSpec};
    use tessera_tokenizers::world::{ShapeClass, WorldSample, WorldSpec};

    use super::super::decode::{Assets, classes};
    use super::super::{GenerateArgs, run};
    use crate::cli::model::DeviceArg;

    fn args(weights: &Path, out: &Path, tokenizers: &Path, input: &[String], target: &[&str]) -> GenerateArgs {
        GenerateArgs {
            weights: weights.to_path_buf(),
            batch: None,
            schedule: None,
            out: out.to_path_buf(),
            input: input.to_vec(),
            target: target.iter().map(|s| s.to_string()).collect(),
            tokenizers: Some(tokenizers.to_path_buf()),
            steps: 4,
            max_tokens: 12,
            temperature: 1.0,
            top_k: 1,
            seed: 0,
            text_tokenizer: None,
            device: DeviceArg::Cpu,
            bf16: false,
            no_kv_cache: false,
            json: true,
        }
    }

    /// End to end on tiny artefacts (an untrained semseg tokenizer, a text tokenizer trained on
    /// a few world captions, a micro model over rgb, caption and tok_semseg@64): RGB → semseg
    /// and caption, then caption → semseg. The PNG is the tokenizer's decoding of the ids written
    /// beside it, the text the text tokenizer's; a missing tokenizer, an unknown modality and an
    /// unreadable image fail naming them.
    #[test]
    fn user_form_writes_decoded_outputs_and_names_bad_input() {
        tch::set_num_threads(1);
        let dir = tempfile::tempdir().unwrap();
        let toks = dir.path().join("tokenizers");
        let tok = Tokenizer::new(&TokenizerConfig::preset("semseg", 64).unwrap(), Device::Cpu).unwrap();
        tok.save(&toks.join("semseg")).unwrap();
        let semseg = token_modality_def(&tok).unwrap().register().unwrap();
        let spec = WorldSpec { samples: 20, ..WorldSpec::default() };
        let captions: Vec<String> = (0..20).map(|i| WorldSample::generate(&spec, i).caption).collect();
        let corpus = dir.path().join("captions.txt");
        std::fs::write(&corpus, captions.join("\n")).unwrap();
        let classes_list = ShapeClass::ALL.iter().map(|c| c.name().to_string()).collect();
        TextTokenizer::train(&[&corpus], &TrainSpec { vocab_size: 5_000, object_classes: classes_list, ..TrainSpec::default() })
            .unwrap()
            .save(toks.join("text_tokenizer.json"))
            .unwrap();
        let mods = ModalitySet::parse(&format!("rgb@224,caption,{semseg}")).unwrap();
        let mut cfg = FourMConfig::preset(Preset::Tiny, Flavor::SwigluNobias, &mods);
        (cfg.dim, cfg.encoder_depth, cfg.decoder_depth, cfg.num_heads) = (32, 1, 1, 2);
        let weights = dir.path().join("w.safetensors");
        Checkpoint::init(&cfg, Device::Cpu, 3).unwrap().save(&weights).unwrap();
        let sample = WorldSample::generate(&spec, 0);
        let png = dir.path().join("scene.png");
        image::RgbImage::from_raw(64, 64, sample.frame.rgb.clone()).unwrap().save(&png).unwrap();

        let out = dir.path().join("out");
        let rgb_in = vec![format!("rgb@224={}", png.display())];
        run(args(&weights, &out, &toks, &rgb_in, &[semseg.key(), "caption"])).unwrap();
        for f in ["cond.safetensors", "schedule.yaml", "out.safetensors", "caption.txt", "caption.ids.json"] {
            assert!(out.join(f).is_file(), "{f} missing");
        }
        let assets = Assets::load(&toks, None).unwrap();
        let ids: Vec<i64> = serde_json::from_str(&std::fs::read_to_string(out.join(format!("{semseg}.ids.json"))).unwrap()).unwrap();
        assert_eq!(ids.len(), 64);
        let decoded = assets.tokenizer(semseg).unwrap().decode(&tch::Tensor::from_slice(&ids).view([1, 64])).unwrap();
        let drawn = image::open(out.join(format!("{semseg}.png"))).unwrap().to_rgb8();
        assert_eq!(drawn, classes(&decoded.get(0)), "the PNG is the tokenizer's decoding of the ids");
        let cap_ids: Vec<i64> = serde_json::from_str(&std::fs::read_to_string(out.join("caption.ids.json")).unwrap()).unwrap();
        assert!(!cap_ids.is_empty() && cap_ids.len() <= 12, "{cap_ids:?}");
        let text = super::super::decode::sequence_text(assets.text().unwrap(), &cap_ids).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("caption.txt")).unwrap(), format!("{text}\n"));

        let out2 = dir.path().join("out2");
        run(args(&weights, &out2, &toks, &[format!("caption={}", sample.caption)], &[semseg.key()])).unwrap();
        assert!(out2.join(format!("{semseg}.png")).is_file());

        // A token modality given as a picture (the world's grey class-id PNG) is encoded with
        // its tokenizer, exactly as `tessera tokenize` encodes the world's map.
        let seg_png = dir.path().join("semseg.png");
        image::GrayImage::from_raw(64, 64, sample.frame.semseg.clone()).unwrap().save(&seg_png).unwrap();
        let seg_in = vec![format!("{semseg}={}", seg_png.display())];
        let out3 = dir.path().join("out3");
        run(args(&weights, &out3, &toks, &seg_in, &["caption"])).unwrap();
        let cond = tessera_model::MaskedBatch::load(&out3.join("cond.safetensors")).unwrap();
        let raw = tch::Tensor::from_slice(&sample.frame.semseg).to_kind(tch::Kind::Int64).reshape([64, 64]);
        let seg_tok = assets.tokenizer(semseg).unwrap();
        let x = tessera_model::tokenizer::prepare("semseg", "0", &raw, None, seg_tok.config()).unwrap();
        let want = seg_tok.encode(&x.unsqueeze(0)).unwrap();
        let got = cond.modalities[&semseg].tensor.to_kind(tch::Kind::Int64);
        assert!(got.equal(&want.to_kind(tch::Kind::Int64)), "the picture's ids are the tokenizer's encoding of the map");
        assert!(out3.join("caption.txt").is_file());
        // Without a tokenizer for it, the error names the modality and what to give.
        let err = format!(
            "{:#}",
            run(GenerateArgs {
                tokenizers: None,
                text_tokenizer: Some(toks.join("text_tokenizer.json")),
                ..args(&weights, &out3, &toks, &seg_in, &["caption"])
            })
            .unwrap_err()
        );
        assert!(err.contains(semseg.key()) && err.contains("--tokenizers"), "{err}");

        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let mut only_text = args(&weights, &out3, &empty, &seg_in, &["caption"]);
        only_text.text_tokenizer = Some(toks.join("text_tokenizer.json"));
        let err = format!("{:#}", run(only_text).unwrap_err());
        assert!(err.contains(semseg.key()) && err.contains("no tokenizer") && err.contains("empty"), "{err}");
        let err = format!("{:#}", run(args(&weights, &out, &empty, &rgb_in, &[semseg.key()])).unwrap_err());
        assert!(err.contains(semseg.key()) && err.contains("empty"), "{err}");
        let err = format!("{:#}", run(args(&weights, &out, &toks, &rgb_in, &["tok_bogus@64"])).unwrap_err());
        assert!(err.contains("tok_bogus@64"), "{err}");
        let bad = vec![format!("rgb@224={}", dir.path().join("nope.png").display())];
        let err = format!("{:#}", run(args(&weights, &out, &toks, &bad, &[semseg.key()])).unwrap_err());
        assert!(err.contains("nope.png"), "{err}");
    }
}
