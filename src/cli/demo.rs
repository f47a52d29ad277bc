//! `tessera demo`, the README's main job: the whole pipeline on a generated multimodal world,
//! in stages that are skipped when their output already exists:
//! 1. generate the world (aligned RGB, depth, normals, segmentation, captions, boxes, metadata,
//!    palettes; ml-4m shard layout, train/val);
//! 2. train a WordPiece text tokenizer with ml-4m's special-token layout on its captions;
//! 3. train small VQ tokenizers on its dense maps (depth, semantic segmentation, normals);
//! 4. pre-tokenize train/val with them into `tok_<m>@<size>` folders;
//! 5. write the training job (TOML) over the world's shards, the token folders declared as
//!    `[[model.token_modalities]]`;
//! 6. train a 4M model on it through the full data path (masking, checkpoints, validation);
//! 7. report validation loss per modality against the unigram baseline, and draw the loss
//!    curves (`loss_curve.png`);
//! 8. draw the tokenizers' reconstructions of validation samples (`reconstructions.png`);
//! 9. export the model and generate on held-out scenes (RGB → depth, segmentation, normals,
//!    caption, boxes; caption → segmentation), drawn in `generations.png` and scored against the
//!    world's ground truth beside trivial baselines (`generations.json`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use tessera_tokenizers::text::{TextTokenizer, TrainSpec};
use tessera_tokenizers::world::{ShapeClass, WorldSample, WorldSpec, generate};

use super::plot;

mod generation;
mod grid;
mod scores;
mod tokenizers;

/// Arguments of `tessera demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Output directory (every stage's output; rerunning skips the finished stages).
    #[arg(long, default_value = ".tessera/demo")]
    out: PathBuf,
    /// Generated samples (train + val).
    #[arg(long, default_value_t = 1200)]
    samples: usize,
    /// Training steps.
    #[arg(long, default_value_t = 300)]
    steps: u64,
    /// Samples per step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Model preset.
    #[arg(long, default_value = "tiny")]
    preset: tessera_model::Preset,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CPU threads for libtorch (0 = all cores), split between the workers.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Local worker processes training the model together (FSDP under the embedded
    /// coordinator); 1 trains in this process.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// World folders to train VQ tokenizers on and train 4M on as `tok_<m>@<size>` (empty:
    /// none).
    #[arg(long, value_delimiter = ',', default_value = tokenizers::DEFAULT_TOKENIZERS)]
    tokenizers: Vec<String>,
    /// Optimizer steps of each modality tokenizer.
    #[arg(long, default_value_t = 300)]
    tokenizer_steps: usize,
    /// Samples per step of the modality tokenizers.
    #[arg(long, default_value_t = 16)]
    tokenizer_batch: usize,
    /// Encoder (and decoder) tokens per sample of the 4M model.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Held-out scenes the generation stage generates for (0 skips the stage).
    #[arg(long, default_value_t = 8)]
    gen_scenes: usize,
    /// MaskGIT steps per image-like target in the generation stage.
    #[arg(long, default_value_t = 8)]
    gen_steps: usize,
}

/// Runs the demo.
pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let t_all = Instant::now();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let out = std::path::absolute(&a.out)?;
    let world_dir = out.join("world");
    let spec = WorldSpec { samples: a.samples, size: 64, seed: a.seed, ..WorldSpec::default() };

    // 1. The world.
    let t = Instant::now();
    let marker = world_dir.join("world.json");
    if marker.is_file() {
        println!("[1/9] world: {} exists, skipped", marker.display());
    } else {
        println!("[1/9] generating {} scenes at {} px into {}", spec.samples, spec.size, world_dir.display());
        let mut last = 0;
        let summary = generate(&world_dir, &spec, &mut |p| {
            if p.done * 10 / p.total.max(1) > last {
                last = p.done * 10 / p.total.max(1);
                println!("      {}/{} samples", p.done, p.total);
            }
        })?;
        println!(
            "      {:.0} samples/s, {:.1} MB, {:.1}s",
            summary.samples_per_second(),
            summary.bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
    }

    // 2. The text tokenizer.
    let t = Instant::now();
    let tok_path = out.join("text_tokenizer.json");
    if tok_path.is_file() && TextTokenizer::from_file(&tok_path).is_ok() {
        println!("[2/9] text tokenizer: {} exists, skipped", tok_path.display());
    } else {
        let corpus = out.join("captions.txt");
        let train_n = spec.splits()[0].2;
        let text: Vec<String> = (0..train_n).map(|i| WorldSample::generate(&spec, i).caption).collect();
        std::fs::write(&corpus, text.join("\n") + "\n").with_context(|| format!("writing {}", corpus.display()))?;
        let classes = ShapeClass::ALL.iter().map(|c| c.name().to_string()).collect();
        let tok = TextTokenizer::train(&[&corpus], &TrainSpec { vocab_size: 5_000, object_classes: classes, ..TrainSpec::default() })?;
        tok.save(&tok_path)?;
        println!(
            "[2/9] trained a WordPiece tokenizer on {train_n} captions ({} tokens) in {:.1}s",
            tok.vocab_size(),
            t.elapsed().as_secs_f64()
        );
    }

    // 3. and 4. The modality tokenizers and the token shards.
    let tokenizers = &a.tokenizers;
    let threads = if a.threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { a.threads };
    tch::set_num_threads(threads as i32);
    let t = Instant::now();
    println!("[3/9] modality tokenizers ({}) at {} px, {} steps each", tokenizers.join(", "), spec.size, a.tokenizer_steps);
    let tok_dirs = tokenizers::train_all(&world_dir, &out, tokenizers, spec.size, a.tokenizer_steps, a.tokenizer_batch)?;
    println!("      {:.1}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    println!("[4/9] tokenizing train and val");
    // The world's splits have one big shard and a small one (1000 samples a shard), so one
    // shard at a time on every core beats a shard per core here.
    let token_defs = tokenizers::tokenize_all(&world_dir, &tok_dirs, 1)?;
    println!("      {:.1}s", t.elapsed().as_secs_f64());

    // 5. The job.
    let job_path = out.join("job.toml");
    let mut folders = vec!["rgb", "caption", "det", "metadata", "color_palette"];
    folders.extend(token_defs.iter().map(|d| d.key.as_str()));
    let folders = folders.join(",");
    let split_path = |split: &str| format!("{}/{split}/[{folders}]/shard-{{00000..{:05}}}.tar", world_dir.display(), 0);
    let shards = |split: &str| -> anyhow::Result<String> {
        // world.json names every split's data_path; use it so the shard count is right.
        let text = std::fs::read_to_string(&marker).with_context(|| format!("reading {}", marker.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let found = v["splits"].as_array().and_then(|s| s.iter().find(|x| x["name"] == split)).and_then(|x| x["data_path"].as_str());
        let full = found.map(str::to_string).unwrap_or_else(|| split_path(split));
        // Keep the modalities this demo trains on.
        Ok(match (full.find('['), full.find(']')) {
            (Some(a), Some(b)) => format!("{}[{folders}]{}", &full[..a], &full[b + 1..]),
            _ => full,
        })
    };
    let mut modalities = "rgb@224,caption,det,metadata,color_palette".to_string();
    let mut declared = String::new();
    for d in &token_defs {
        modalities += &format!(",{}", d.key);
        declared += &format!(
            "\n[[model.token_modalities]]\n# from {}/train/{}/modality.json\nkey = \"{}\"\nvocab_size = {}\ngrid = {}\n",
            world_dir.display(),
            d.key,
            d.key,
            d.vocab_size,
            d.grid
        );
    }
    let job = format!(
        r#"# Written by `tessera demo`: a {preset} 4M model on the generated world (RGB in; captions,
# boxes, metadata, palettes and the VQ tokens of the dense maps in and out), {tokens}/{tokens}
# tokens per sample.
[job]
name = "demo"
seed = {seed}
output_dir = "run"

[model]
preset = "{preset}"
modalities = "{modalities}"
{declared}
[data]
text_tokenizer = "text_tokenizer.json"
input_tokens = {tokens}
target_tokens = {tokens}
decode_threads = 1

[[data.datasets]]
name = "world"
kind = "shards"
path = "{train}"
val_path = "{val}"
input_alphas = "1.0"
target_alphas = "1.0"

[train]
global_batch_size = {batch}
blr = 0.016
total_steps = {steps}
warmup_steps = {warmup}
clip_grad = 1.0
threads = {threads}

[checkpoint]
every_steps = 100
keep_last = 2

[eval]
every_steps = 100
samples = {eval_samples}
baseline_samples = {baseline_samples}
"#,
        preset = a.preset,
        seed = a.seed,
        train = shards("train")?,
        val = shards("val")?,
        batch = a.batch_size,
        steps = a.steps,
        warmup = (a.steps / 15).min(20),
        eval_samples = spec.splits()[1].2.clamp(1, 96),
        baseline_samples = spec.splits()[0].2.min(1024),
        threads = a.threads,
        tokens = a.tokens,
    );
    std::fs::write(&job_path, job).with_context(|| format!("writing {}", job_path.display()))?;
    println!("[5/9] job: {}", job_path.display());

    // 6. Training (resumes from the newest checkpoint; done when every step is).
    let t = Instant::now();
    println!("[6/9] training (`tessera train {} --workers {}`)", job_path.display(), a.workers);
    super::train::run(super::train::TrainArgs::new(job_path.clone()).with_workers(a.workers))?;
    println!("      {:.1}s", t.elapsed().as_secs_f64());

    // 7. Report.
    let run_dir = out.join("run");
    report(&run_dir)?;

    // 8. Reconstructions.
    let png = out.join("reconstructions.png");
    if png.is_file() {
        println!("[8/9] reconstructions: {} exists, skipped", png.display());
    } else if !tok_dirs.is_empty() {
        tokenizers::reconstruction_grid(&world_dir, &tok_dirs, spec.size, &png)?;
        println!(
            "[8/9] reconstructions of {} val samples (columns: rgb, then original | reconstruction of {}): {}",
            6,
            tokenizers.join(", "),
            png.display()
        );
    }
    // 9. Generation.
    let [gen_png, _] = generation::outputs(&out);
    let needed = ["depth", "semseg", "normal"].iter().all(|m| tokenizers.iter().any(|t| t == m));
    if gen_png.is_file() {
        println!("[9/9] generations: {} exists, skipped", gen_png.display());
    } else if a.gen_scenes == 0 || !needed {
        println!("[9/9] generation skipped (needs --gen-scenes > 0 and the depth, semseg and normal tokenizers)");
    } else {
        let t = Instant::now();
        let weights = out.join("model.safetensors");
        super::export::run(super::export::ExportArgs::new(job_path.clone(), weights.clone()))?;
        let inputs = generation::Inputs {
            out: &out,
            weights: &weights,
            spec: &spec,
            tokenizers: &out.join("tokenizers"),
            text_tokenizer: &tok_path,
            scenes: a.gen_scenes,
            steps: a.gen_steps,
        };
        let r = generation::run(&inputs)?;
        print_generation(&r, &gen_png, t.elapsed().as_secs_f64());
    }
    println!("done in {:.1}s; everything is under {}", t_all.elapsed().as_secs_f64(), out.display());
    Ok(())
}

/// Prints the generation scores beside their baselines.
fn print_generation(r: &serde_json::Value, png: &Path, seconds: f64) {
    println!(
        "[9/9] generation on {} held-out scenes ({:.1}s, of which generating {:.1}s):",
        r["scenes"],
        seconds,
        r["generation_seconds"].as_f64().unwrap_or(f64::NAN)
    );
    println!("      {:<28} {:>8} {:>9}  baseline", "score", "model", "baseline");
    for (name, key, base, better) in [
        ("segmentation mIoU", "semseg_miou", "majority_class", "higher"),
        ("caption -> segmentation mIoU", "caption_to_semseg_miou", "majority_class", "higher"),
        ("depth abs. rel. error", "depth_abs_rel", "mean_depth", "lower"),
        ("caption object precision", "caption_object_precision", "most_frequent_caption", "higher"),
        ("caption object recall", "caption_object_recall", "most_frequent_caption", "higher"),
        ("caption shape precision", "caption_shape_precision", "most_frequent_caption", "higher"),
        ("caption shape recall", "caption_shape_recall", "most_frequent_caption", "higher"),
        ("box IoU (matched, per object)", "box_iou", "mean_box_per_class", "higher"),
    ] {
        let (m, b) = (r[key]["model"].as_f64().unwrap_or(f64::NAN), r[key][base].as_f64().unwrap_or(f64::NAN));
        println!("      {name:<28} {m:>8.3} {b:>9.3}  {base} ({better} is better)");
    }
    println!(
        "      captions outside the world's grammar: {} of {} (their complete object phrases still count)",
        r["captions_outside_grammar"], r["scenes"]
    );
    println!(
        "      pictures: {} (per scene: rgb, then prediction | truth of depth, segmentation, normals, boxes, caption -> segmentation)",
        png.display()
    );
}

/// Prints the last validation against the unigram baseline, writes report.json and the loss
/// curves.
fn report(run_dir: &Path) -> anyhow::Result<()> {
    let eval_path = run_dir.join("eval_log.jsonl");
    let text = std::fs::read_to_string(&eval_path).with_context(|| format!("reading {}", eval_path.display()))?;
    let last: serde_json::Value = serde_json::from_str(text.lines().last().context("no validation was logged")?)?;
    println!("[7/9] validation at step {} (nats per target token):", last["step"]);
    println!("      {:<16} {:>9} {:>9} {:>8}", "modality", "4M", "unigram", "better");
    let mut all_better = true;
    for (m, e) in last["modalities"].as_object().context("malformed eval log")? {
        let (loss, uni) = (e["loss"].as_f64().unwrap_or(f64::NAN), e["unigram"].as_f64().unwrap_or(f64::NAN));
        let better = loss < uni;
        all_better &= better;
        println!("      {m:<16} {loss:>9.4} {uni:>9.4} {:>8}", if better { "yes" } else { "NO" });
    }
    let mut report = last.clone();
    report["beats_unigram_everywhere"] = all_better.into();
    std::fs::write(run_dir.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    let png = run_dir.join("loss_curve.png");
    plot::write(run_dir, &png, "demo")?;
    println!("      loss curves: {}; report: {}", png.display(), run_dir.join("report.json").display());
    if !all_better {
        println!("      not every modality beats the unigram baseline yet: train longer (--steps)");
    }
    Ok(())
}
