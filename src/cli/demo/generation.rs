//! The demo's generation stage: the trained model on held-out (val) scenes, RGB → depth,
//! segmentation, normals (MaskGIT), caption and boxes (autoregressive), and caption →
//! segmentation, each target generated from its condition alone, greedily. Decoded through the
//! demo's tokenizers, drawn as one grid (`generations.png`) and scored against the world's exact
//! ground truth beside trivial baselines computed from the train split (`generations.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use image::{Rgb, RgbImage};
use serde_json::json;
use tch::{Device, Kind, Tensor};
use tessera_model::generate::{GenerateOptions, GenerationSampler, ScheduleSpec, TextSpecials, empty_target, full_input};
use tessera_model::tokenizer::mean_iou;
use tessera_model::{Checkpoint, MaskedBatch, ModalityTensors};
use tessera_tokenizers::Modality;
use tessera_tokenizers::serialize::Detections;
use tessera_tokenizers::serialize::det::boxes_from_text;
use tessera_tokenizers::shards::Rgb8Image;
use tessera_tokenizers::world::{WorldSample, WorldSpec};

use super::grid;
use super::scores::{MatchBy, NamedBox, abs_rel_aligned, align, box_ious, caption_counts, caption_mentions, caption_objects};
use crate::cli::generate::decode::{Assets, classes, decode_tokens, grey, row_ids, sequence_text, signed_rgb};
use crate::cli::generate::user::{DefaultSchedule, rgb_input, schedule_yaml, text_input};

/// Train scenes the baselines are computed from.
const BASELINE_SCENES: usize = 64;
/// Semantic classes of the world (background and four shapes).
const CLASSES: usize = 5;
/// Positions of the generated caption and box sequences.
const SEQ_TOKENS: i64 = 64;

/// What the stage needs from the earlier ones.
pub struct Inputs<'a> {
    /// The demo's output directory.
    pub out: &'a Path,
    /// The exported model weights.
    pub weights: &'a Path,
    /// The world's spec (scenes are regenerated from it, exactly).
    pub spec: &'a WorldSpec,
    /// The modality tokenizers' directories (`out/tokenizers/<folder>`).
    pub tokenizers: &'a Path,
    /// The text tokenizer.
    pub text_tokenizer: &'a Path,
    /// Held-out scenes to generate for.
    pub scenes: usize,
    /// MaskGIT steps per image-like target.
    pub steps: usize,
}

/// Runs the stage; writes `generations.png` and `generations.json` under `out`.
pub fn run(i: &Inputs<'_>) -> anyhow::Result<serde_json::Value> {
    let t = Instant::now();
    let ckpt = Checkpoint::load(i.weights, Device::Cpu)?;
    let assets = Assets::load(i.tokenizers, Some(i.text_tokenizer))?;
    let text = assets.text()?;
    let specials = TextSpecials::from_tokenizer(text)?;
    let (_, start, count) = i.spec.splits()[1];
    let scenes: Vec<WorldSample> = (start..start + i.scenes.min(count)).map(|k| WorldSample::generate(i.spec, k)).collect();
    let n = scenes.len() as i64;
    anyhow::ensure!(n > 0, "the world has no val scenes");
    let side = i.spec.size;
    let rgb = Modality::from_key("rgb@224")?;
    let rgb_bt = Tensor::cat(
        &scenes
            .iter()
            .map(|s| rgb_input(&Rgb8Image::new(side, side, s.frame.rgb.clone()).context("scene image")?, rgb.spec().image_size))
            .collect::<anyhow::Result<Vec<_>>>()?,
        0,
    );
    let rgb_cond = full_input(rgb, rgb_bt, None, &specials)?;
    let caption_cond = caption_batch(text, &scenes, &specials)?;
    let sampler = GenerationSampler::new(&ckpt.model, specials.clone());
    let run_target = |cond: Modality, cond_t: &ModalityTensors, target: Modality| -> anyhow::Result<ModalityTensors> {
        let tokens = if target.kind() == tessera_tokenizers::ModalityKind::Sequence { SEQ_TOKENS } else { target.spec().max_tokens as i64 };
        let mut batch = MaskedBatch { modalities: Default::default() };
        batch.modalities.insert(
            cond,
            ModalityTensors {
                tensor: cond_t.tensor.shallow_clone(),
                input_mask: cond_t.input_mask.shallow_clone(),
                target_mask: cond_t.target_mask.shallow_clone(),
                decoder_attention_mask: cond_t.decoder_attention_mask.shallow_clone(),
            },
        );
        batch.modalities.insert(target, empty_target(target, n, tokens, &specials, Device::Cpu)?);
        let d = DefaultSchedule { steps: i.steps, temperature: 1.0, top_k: 1 };
        let plan =
            ScheduleSpec::from_yaml(&schedule_yaml(&[cond], &[target], &batch, &d), "demo generation")?.resolve("demo generation")?;
        let opts = GenerateOptions { top_k: plan.top_k, top_p: plan.top_p, seed: Some(0), kv_cache: true };
        sampler.generate(&batch, &plan.steps, &opts)?.modalities.remove(&target).context("target missing from the result")
    };
    let key = |m: &str| Modality::from_key(&format!("tok_{m}@{side}"));
    let (depth_m, semseg_m, normal_m) = (key("depth")?, key("semseg")?, key("normal")?);
    let decoded = |m: Modality, t: &ModalityTensors| decode_tokens(&assets, m, &t.tensor);
    let depth = decoded(depth_m, &run_target(rgb, &rgb_cond, depth_m)?)?;
    let semseg = decoded(semseg_m, &run_target(rgb, &rgb_cond, semseg_m)?)?;
    let normal = decoded(normal_m, &run_target(rgb, &rgb_cond, normal_m)?)?;
    let cap_semseg = decoded(semseg_m, &run_target(Modality::Caption, &caption_cond, semseg_m)?)?;
    let texts = |t: &ModalityTensors| -> anyhow::Result<Vec<String>> {
        (0..n).map(|r| sequence_text(text, &row_ids(&t.tensor, &t.input_mask, r)?)).collect()
    };
    let captions = texts(&run_target(rgb, &rgb_cond, Modality::Caption)?)?;
    let dets = texts(&run_target(rgb, &rgb_cond, Modality::Det)?)?;
    let gen_seconds = t.elapsed().as_secs_f64();

    // Ground truth and baselines, from the world itself.
    let s2 = (side * side) as i64;
    let gt_semseg = Tensor::cat(&scenes.iter().map(|s| semseg_of(s, side)).collect::<Vec<_>>(), 0);
    let train: Vec<WorldSample> = (0..BASELINE_SCENES.min(i.spec.splits()[0].2)).map(|k| WorldSample::generate(i.spec, k)).collect();
    let mut class_pixels = [0usize; CLASSES];
    train.iter().flat_map(|s| s.frame.semseg.iter()).for_each(|&c| class_pixels[usize::from(c).min(CLASSES - 1)] += 1);
    let majority = (0..CLASSES).max_by_key(|&c| class_pixels[c]).unwrap_or(0) as i64;
    let majority_map = Tensor::full([n, side as i64, side as i64], majority, (Kind::Int64, Device::Cpu));
    let mean_depth: Vec<f32> = (0..s2 as usize).map(|p| train.iter().map(|s| s.frame.depth[p]).sum::<f32>() / train.len() as f32).collect();
    let depth_rows: Vec<Vec<f32>> =
        (0..n).map(|r| Vec::try_from(depth.get(r).reshape([-1]).to_kind(Kind::Float))).collect::<Result<_, _>>()?;
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let abs_rel = mean(scenes.iter().zip(&depth_rows).map(|(s, p)| abs_rel_aligned(p, &s.frame.depth)).collect());
    let abs_rel_base = mean(scenes.iter().map(|s| abs_rel_aligned(&mean_depth, &s.frame.depth)).collect());

    let mut freq: BTreeMap<&str, usize> = BTreeMap::new();
    train.iter().for_each(|s| *freq.entry(s.caption.as_str()).or_default() += 1);
    let frequent = freq.iter().max_by_key(|(_, c)| **c).map(|(t, _)| t.to_string()).unwrap_or_default();
    // [exact, by shape] × [model, most frequent caption]: (matched, predicted, true) counts.
    let mut cap = [[(0, 0, 0); 2]; 2];
    let mut unparsed = 0;
    let base = caption_mentions(&frequent);
    for (s, text) in scenes.iter().zip(&captions) {
        let truth = caption_objects(&s.caption).context("a world caption that does not parse")?;
        unparsed += usize::from(caption_objects(text).is_none());
        let pred = caption_mentions(text);
        for (k, by) in [MatchBy::Exact, MatchBy::Shape].into_iter().enumerate() {
            add(&mut cap[k][0], caption_counts(&pred, &truth, by));
            add(&mut cap[k][1], caption_counts(&base, &truth, by));
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };

    let truth_boxes: Vec<Vec<NamedBox>> = scenes.iter().map(boxes_of).collect::<anyhow::Result<_>>()?;
    let mut per_class: BTreeMap<String, ([f64; 4], usize)> = BTreeMap::new();
    for s in &train {
        for (b, c) in boxes_of(s)? {
            let e = per_class.entry(c).or_insert(([0.0; 4], 0));
            (0..4).for_each(|k| e.0[k] += b[k]);
            e.1 += 1;
        }
    }
    let base_boxes: Vec<NamedBox> = per_class.into_iter().map(|(c, (sum, k))| (sum.map(|v| v / k as f64), c)).collect();
    let pred_boxes: Vec<Vec<NamedBox>> = dets
        .iter()
        .map(|d| boxes_from_text(d).map(|bs| bs.into_iter().map(|b| (b.coords, b.class_name)).collect()).unwrap_or_default())
        .collect();
    let box_iou = mean(truth_boxes.iter().zip(&pred_boxes).flat_map(|(t, p)| box_ious(p, t)).collect());
    let box_iou_base = mean(truth_boxes.iter().flat_map(|t| box_ious(&base_boxes, t)).collect());

    let report = json!({
        "scenes": n,
        "generation_seconds": gen_seconds,
        "semseg_miou": {"model": mean_iou(&semseg, &gt_semseg, CLASSES), "majority_class": mean_iou(&majority_map, &gt_semseg, CLASSES)},
        "caption_to_semseg_miou": {"model": mean_iou(&cap_semseg, &gt_semseg, CLASSES), "majority_class": mean_iou(&majority_map, &gt_semseg, CLASSES)},
        "depth_abs_rel": {"model": abs_rel, "mean_depth": abs_rel_base},
        "caption_object_precision": {"model": ratio(cap[0][0].0, cap[0][0].1), "most_frequent_caption": ratio(cap[0][1].0, cap[0][1].1)},
        "caption_object_recall": {"model": ratio(cap[0][0].0, cap[0][0].2), "most_frequent_caption": ratio(cap[0][1].0, cap[0][1].2)},
        "caption_shape_precision": {"model": ratio(cap[1][0].0, cap[1][0].1), "most_frequent_caption": ratio(cap[1][1].0, cap[1][1].1)},
        "caption_shape_recall": {"model": ratio(cap[1][0].0, cap[1][0].2), "most_frequent_caption": ratio(cap[1][1].0, cap[1][1].2)},
        "captions_outside_grammar": unparsed,
        "box_iou": {"model": box_iou, "mean_box_per_class": box_iou_base},
        "most_frequent_caption": frequent,
        "samples": scenes.iter().zip(captions.iter().zip(&dets)).map(|(s, (c, d))| json!({"key": s.key, "caption": c, "caption_truth": s.caption, "det": d})).collect::<Vec<_>>(),
    });
    std::fs::write(i.out.join("generations.json"), serde_json::to_vec_pretty(&report)?)?;
    draw(i, &scenes, [&depth, &semseg, &normal, &cap_semseg], &gt_semseg, (&pred_boxes, &truth_boxes))?;
    Ok(report)
}

fn add(acc: &mut (usize, usize, usize), c: (usize, usize, usize)) {
    (acc.0, acc.1, acc.2) = (acc.0 + c.0, acc.1 + c.1, acc.2 + c.2);
}

/// The scenes' captions as conditions, one row at a time (each row's own `[EOS]`), right-padded.
fn caption_batch(
    text: &tessera_tokenizers::text::TextTokenizer,
    scenes: &[WorldSample],
    sp: &TextSpecials,
) -> anyhow::Result<ModalityTensors> {
    let rows: Vec<Tensor> = scenes.iter().map(|s| text_input(text, &s.caption)).collect::<anyhow::Result<_>>()?;
    let len = rows.iter().map(|r| r.size()[1]).max().unwrap_or(1);
    let mut parts = Vec::new();
    for r in rows {
        let padded = Tensor::cat(&[&r, &Tensor::full([1, len - r.size()[1]], sp.pad, (Kind::Int64, Device::Cpu))], 1);
        parts.push(full_input(Modality::Caption, padded, None, sp)?);
    }
    let cat = |f: &dyn Fn(&ModalityTensors) -> &Tensor| Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0);
    Ok(ModalityTensors {
        tensor: cat(&|p| &p.tensor),
        input_mask: cat(&|p| &p.input_mask),
        target_mask: cat(&|p| &p.target_mask),
        decoder_attention_mask: cat(&|p| &p.decoder_attention_mask),
    })
}

fn semseg_of(s: &WorldSample, side: usize) -> Tensor {
    Tensor::from_slice(&s.frame.semseg).to_kind(Kind::Int64).view([1, side as i64, side as i64])
}

fn boxes_of(s: &WorldSample) -> anyhow::Result<Vec<NamedBox>> {
    Ok(Detections::from_json(&s.detections().to_string())?.boxes(None, false).into_iter().map(|b| (b.coords, b.class_name)).collect())
}

/// `generations.png`: per scene, the RGB input, then prediction | truth for depth,
/// segmentation, normals and boxes (drawn over the RGB), and caption → segmentation | truth.
fn draw(
    i: &Inputs<'_>,
    scenes: &[WorldSample],
    [depth, semseg, normal, cap_semseg]: [&Tensor; 4],
    gt_semseg: &Tensor,
    (pred_boxes, truth_boxes): (&Vec<Vec<NamedBox>>, &Vec<Vec<NamedBox>>),
) -> anyhow::Result<()> {
    let side = i.spec.size;
    let s = side as i64;
    let mut rows = Vec::new();
    for (r, sc) in scenes.iter().enumerate() {
        let r64 = r as i64;
        let rgb = RgbImage::from_raw(side as u32, side as u32, sc.frame.rgb.clone()).context("scene image")?;
        let gt_depth = Tensor::from_slice(&sc.frame.depth).view([1, s, s]);
        let (lo, hi) = (gt_depth.min().double_value(&[]), gt_depth.max().double_value(&[]));
        let pred: Vec<f32> = Vec::try_from(depth.get(r64).reshape([-1]).to_kind(Kind::Float))?;
        let aligned = Tensor::from_slice(&align(&pred, &sc.frame.depth)).view([1, s, s]);
        let gt_normal = Tensor::from_slice(&sc.frame.normal).view([s, s, 3]).permute([2, 0, 1]);
        rows.push(vec![
            rgb.clone(),
            grey(&aligned, lo, hi),
            grey(&gt_depth, lo, hi),
            classes(&semseg.get(r64)),
            classes(&gt_semseg.get(r64)),
            signed_rgb(&normal.get(r64)),
            signed_rgb(&gt_normal),
            with_boxes(&rgb, &pred_boxes[r]),
            with_boxes(&rgb, &truth_boxes[r]),
            classes(&cap_semseg.get(r64)),
            classes(&gt_semseg.get(r64)),
        ]);
    }
    grid::tile_grid(&rows, 2, &[1, 3, 5, 7, 9], &i.out.join("generations.png"))
}

/// The RGB image with box outlines (one colour per class).
fn with_boxes(rgb: &RgbImage, boxes: &[NamedBox]) -> RgbImage {
    let mut img = rgb.clone();
    let (w, h) = (img.width() as f64, img.height() as f64);
    for (b, c) in boxes {
        let colour = match c.as_str() {
            "sphere" => Rgb([255, 255, 0]),
            "cube" => Rgb([255, 0, 255]),
            "cylinder" => Rgb([0, 255, 255]),
            _ => Rgb([255, 255, 255]),
        };
        let px = |v: f64, m: f64| ((v * m) as i64).clamp(0, m as i64 - 1) as u32;
        let (x0, y0, x1, y1) = (px(b[0], w), px(b[1], h), px(b[2], w), px(b[3], h));
        for x in x0..=x1 {
            img.put_pixel(x, y0, colour);
            img.put_pixel(x, y1, colour);
        }
        for y in y0..=y1 {
            img.put_pixel(x0, y, colour);
            img.put_pixel(x1, y, colour);
        }
    }
    img
}

/// Where the stage's outputs go.
pub fn outputs(out: &Path) -> [PathBuf; 2] {
    [out.join("generations.png"), out.join("generations.json")]
}
