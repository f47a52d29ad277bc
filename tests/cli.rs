//! End-to-end tests of the `tessera` binary: real processes, real files.

use std::path::Path;
use std::process::{Command, Output};

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).env("OMP_NUM_THREADS", "1").output().expect("tessera runs")
}

fn ok(args: &[&str]) -> String {
    let out = tessera(args);
    assert!(out.status.success(), "tessera {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn model_info_reports_ml4m_sizes() {
    let v: serde_json::Value = serde_json::from_str(&ok(&["model", "info", "--preset", "base", "--modalities", "4m21", "--json"])).unwrap();
    let ex = v["params_excluding_embeddings"].as_u64().unwrap() as f64;
    assert!((ex / 1e6 - 198.8).abs() < 0.1, "{ex}");
    assert_eq!(v["domains_in"].as_array().unwrap().len(), 19);
    assert_eq!(v["domains_out"].as_array().unwrap().len(), 17);
    let total = v["params_total"].as_u64().unwrap();
    assert_eq!(v["memory_bytes"]["weights_fp32"].as_u64().unwrap(), total * 4);
    assert_eq!(v["memory_bytes"]["adamw_state_fp32"].as_u64().unwrap(), total * 8);

    // The peer benchmark's tiny model over its 11 modalities has 100,316,928 parameters.
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["model", "info", "--preset", "tiny", "--modalities", "mod11", "--json"])).unwrap();
    assert_eq!(v["params_total"].as_u64().unwrap(), 100_316_928);
}

#[test]
fn init_synth_forward_pipeline_writes_losses() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let arch = [
        "--preset",
        "tiny",
        "--dim",
        "64",
        "--encoder-depth",
        "1",
        "--decoder-depth",
        "1",
        "--modalities",
        "caption,det,tok_rgb@224,rgb@224",
    ];
    let mut init = vec!["model", "init", "--out"];
    let w = p("w.safetensors");
    init.push(&w);
    init.extend_from_slice(&arch);
    ok(&init);
    let b = p("b.safetensors");
    ok(&[
        "model",
        "synth-batch",
        "--weights",
        &w,
        "--out",
        &b,
        "--batch-size",
        "2",
        "--num-input-tokens",
        "64",
        "--num-target-tokens",
        "64",
    ]);
    let o = p("o.safetensors");
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "model",
        "forward",
        "--weights",
        &w,
        "--batch",
        &b,
        "--out",
        &o,
        "--num-input-tokens",
        "64",
        "--num-target-tokens",
        "64",
        "--logits",
        "--json",
    ]))
    .unwrap();
    let loss = v["loss"].as_f64().unwrap();
    // Near ln(V) at initialisation: between ln(16384)=9.7 and ln(30000)=10.3, give or take.
    assert!(loss > 8.0 && loss < 11.5, "{loss}");
    let mods = v["mod_loss"].as_object().unwrap();
    assert_eq!(mods.len(), 3, "caption, det, tok_rgb@224 are the outputs");
    let tensors = tensor_names(Path::new(&o));
    assert!(tensors.contains(&"loss".to_string()));
    assert!(tensors.contains(&"caption.loss".to_string()));
    assert!(tensors.contains(&"tok_rgb@224.logits".to_string()));
}

/// Tensor names from a safetensors header (8-byte length, then JSON).
fn tensor_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").cloned().collect()
}

#[test]
fn bad_files_fail_with_a_message_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"this is not safetensors").unwrap();
    let j = junk.display().to_string();
    let out = tessera(&["model", "forward", "--weights", &j, "--batch", &j, "--out", "/dev/null"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("junk.safetensors") && err.contains("not a valid safetensors"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = tessera(&["model", "info", "--modalities", "caption,tok_bogus"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tok_bogus"));
}

#[test]
fn demo_runs_every_stage_and_skips_them_when_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo").display().to_string();
    let args = [
        "demo",
        "--out",
        &out_dir,
        "--samples",
        "160",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--tokenizer-steps",
        "4",
        "--gen-scenes",
        "4",
        "--gen-steps",
        "2",
    ];
    let stdout = ok(&args);
    assert!(stdout.contains("[7/9] validation at step 4"), "{stdout}");
    assert!(stdout.contains("[9/9] generation on 4 held-out scenes"), "{stdout}");
    let d = dir.path().join("demo");
    for f in [
        "world/world.json",
        "text_tokenizer.json",
        "job.toml",
        "run/train_log.jsonl",
        "run/eval_log.jsonl",
        "run/report.json",
        "run/loss_curve.png",
        "reconstructions.png",
        "tokenizers/depth/eval.json",
        "tokenizers/semseg/eval.json",
        "tokenizers/normal/eval.json",
        "world/train/tok_semseg@64/modality.json",
        "model.safetensors",
        "generations.png",
        "generations.json",
    ] {
        assert!(d.join(f).is_file(), "{f} missing");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("run/report.json")).unwrap()).unwrap();
    for m in ["caption", "det", "metadata", "color_palette", "tok_depth@64", "tok_semseg@64", "tok_normal@64"] {
        assert!(report["modalities"][m]["loss"].as_f64().unwrap() > 0.0, "{m}: {report}");
    }
    // The generation scores are computed from the scenes: values in range, the baselines'
    // too, and the per-scene captions and their truths recorded.
    let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("generations.json")).unwrap()).unwrap();
    for (k, base) in [
        ("semseg_miou", "majority_class"),
        ("caption_to_semseg_miou", "majority_class"),
        ("caption_object_precision", "most_frequent_caption"),
        ("caption_object_recall", "most_frequent_caption"),
        ("caption_shape_precision", "most_frequent_caption"),
        ("caption_shape_recall", "most_frequent_caption"),
        ("box_iou", "mean_box_per_class"),
    ] {
        for v in [g[k]["model"].as_f64().unwrap(), g[k][base].as_f64().unwrap()] {
            assert!((0.0..=1.0).contains(&v), "{k}: {g}");
        }
    }
    assert!(g["depth_abs_rel"]["model"].as_f64().unwrap() > 0.0 && g["depth_abs_rel"]["mean_depth"].as_f64().unwrap() > 0.0, "{g}");
    assert_eq!(g["samples"].as_array().unwrap().len(), 4);
    assert!(g["samples"][0]["caption_truth"].as_str().unwrap().contains(' '), "{g}");
    let png = std::fs::read(d.join("run/loss_curve.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // A second run finds every stage done.
    let again = ok(&args);
    assert!(again.contains("world: ") && again.contains("skipped") && again.contains("text tokenizer: "), "{again}");
    assert!(again.contains("depth: ") && again.contains("val/tok_normal@64: 1 shards exist, skipped"), "{again}");
    assert!(again.contains("reconstructions: ") && !again.contains("images/s"), "{again}");
    assert!(again.contains("generations: ") && !again.contains("held-out scenes"), "{again}");
}

#[test]
fn data_inspect_mixture_summarises_budgets() {
    let alphas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ml-4m/configs/alphas/mix_mod7_all2all_rgb2all_a0.5.yaml");
    let alphas = alphas.display().to_string();
    let args = ["data", "inspect-mixture", "--alphas", &alphas, "--input-tokens", "128", "--target-tokens", "128", "--samples", "2000"];
    let v: serde_json::Value = serde_json::from_str(&ok(&[&args[..], &["--seed", "1", "--json"]].concat())).unwrap();
    assert_eq!(v["samples"].as_u64().unwrap(), 2000);
    let counts: Vec<u64> = v["component_counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
    assert_eq!(counts.len(), 2);
    assert_eq!(counts.iter().sum::<u64>(), 2000);
    // At 128 tokens no input cap binds (rgb@224 holds 196), so every input budget is spent.
    assert_eq!(v["input_total_mean"].as_f64().unwrap(), 128.0);
    let mods = v["modalities"].as_array().unwrap();
    assert_eq!(mods.len(), 8);
    let rgb = mods.iter().find(|m| m["modality"] == "rgb@224").unwrap();
    assert_eq!(rgb["target_mean"].as_f64().unwrap(), 0.0, "rgb@224 is never a target");
    assert!(rgb["input_freq"].as_f64().unwrap() > 0.5, "rgb2all alone is half the samples: {rgb}");

    let table = ok(&args);
    assert!(table.contains("tok_semseg@224") && table.contains("total") && table.contains("2 components"), "{table}");

    let out = tessera(&["data", "inspect-mixture", "--alphas", "/nonexistent/alphas.yaml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/alphas.yaml"));
}

#[test]
fn tokenizer_encode_and_train_text() {
    let ml4m = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json");
    let ml4m = ml4m.display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let input = p("captions.txt");
    std::fs::write(&input, "v0=12 v1=34 v2=100 v3=200 dining table v0=1 v1=2 v2=3 v3=4 person\r\n[S_1] a\n\nA Dog.\n").unwrap();
    let out = ok(&["tokenizer", "encode", "--tokenizer", &ml4m, "--input", &input]);
    assert_eq!(out, "216 1238 2304 3404 4231 205 1206 2207 3208 4253\n5 4321\n\n4321 4232 4296\n");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["tokenizer", "encode", "--tokenizer", &ml4m, "--input", &input, "--json"])).unwrap();
    assert_eq!(v["lines"][1]["text"], "[S_1] a");
    assert_eq!(v["lines"][1]["ids"], serde_json::json!([5, 4321]));

    // Train with a class file in ml-4m's layout; then the trained JSON encodes through the CLI.
    let corpus = p("corpus.txt");
    let line = "a zebra and a giraffe standing next to a fence in the grass\nthe red bus is parked on the street\n";
    std::fs::write(&corpus, line.repeat(50)).unwrap();
    let classes = p("classes.json");
    std::fs::write(&classes, r#"{"coco": ["giraffe", "zebra"], "lvis": ["bus"]}"#).unwrap();
    let tok = p("tok.json");
    let args = ["tokenizer", "train-text", "--files", &format!("{corpus},{corpus}"), "--out", &tok];
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        &args[..],
        &[
            "--vocab-size",
            "200",
            "--num-sentinels",
            "3",
            "--coord-bins",
            "2",
            "--object-classes",
            &classes,
            "--object-classes-key",
            "lvis",
            "--json",
        ],
    ]
    .concat()))
    .unwrap();
    assert_eq!(v["special_tokens"].as_u64().unwrap(), 4 + 3 + 8 + 1);
    assert!(v["vocab_size"].as_u64().unwrap() <= 200);
    std::fs::write(&input, "[S_2] v3=1 Bus\n").unwrap();
    assert_eq!(ok(&["tokenizer", "encode", "--tokenizer", &tok, "--input", &input]), "6 14 15\n");

    // ml-4m's defaults: 4284 special tokens, COCO classes built in.
    let human = ok(&[&args[..], &["--vocab-size", "4400"]].concat());
    assert!(human.contains("4284 special") && human.contains("80 classes"), "{human}");
    std::fs::write(&input, "dining table v0=999 [S_199]\n").unwrap();
    assert_eq!(ok(&["tokenizer", "encode", "--tokenizer", &tok, "--input", &input]), "4231 1203 203\n");

    // Errors name the file.
    let out = tessera(&["tokenizer", "encode", "--tokenizer", "/nonexistent/tok.json", "--input", &input]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tok.json"));
    let out = tessera(&["tokenizer", "train-text", "--files", "/nonexistent/a.txt", "--out", &tok, "--vocab-size", "5000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/a.txt"));
    let out = tessera(&[&args[..], &["--vocab-size", "100"]].concat());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vocab_size"));
}

#[test]
fn bench_text_reports_throughput() {
    let ml4m = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ml-4m/text_tokenizer_4m_wordpiece_30k.json");
    let ml4m = ml4m.display().to_string();
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "bench",
        "text",
        "--tokenizer",
        &ml4m,
        "--captions",
        "300",
        "--repeats",
        "1",
        "--threads",
        "2",
        "--json",
    ]))
    .unwrap();
    assert_eq!(v["captions"].as_u64().unwrap(), 300);
    let modes = v["modes"].as_array().unwrap();
    assert_eq!(modes.len(), 3);
    assert!(modes.iter().all(|m| m["captions_per_s_median"].as_f64().unwrap() > 0.0), "{modes:?}");
    assert!(v["tokens_per_caption_mean"].as_f64().unwrap() > 5.0);
}

fn folder_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// A neural tokenizer trained by the CLI on a generated world, then `tessera tokenize`: an
/// interrupted run (`--max-shards`, plus a temp file a killed writer leaves) finishes on a rerun
/// with the bytes of an uninterrupted one; the token shards, declared by their `modality.json`,
/// train a 4M model through the data path, and the checkpoint reloads in another process.
#[test]
fn tokenizer_train_then_tokenize_resumes_and_the_tokens_train() {
    let d = tempfile::tempdir().unwrap();
    let world = d.path().join("world").display().to_string();
    let tok = d.path().join("tok").display().to_string();
    ok(&["data", "generate", "--out", &world, "--samples", "48", "--size", "32", "--shard-size", "16"]);
    let out =
        ok(&["tokenizer", "train", "--modality", "depth", "--data", &world, "--out", &tok, "--steps", "20", "--checkpoint-every", "10"]);
    assert!(out.contains("depth: val MSE") && out.contains("codebook usage"), "{out}");
    assert!(Path::new(&tok).join("tokenizer.json").is_file());
    let folder = d.path().join("world/train/tok_depth@32");
    let out = ok(&["tokenize", "--data", &world, "--tokenizer", &tok, "--max-shards", "1"]);
    assert!(out.contains("stopped early"), "{out}");
    assert_eq!(
        std::fs::read_dir(&folder).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tar")).count(),
        1
    );
    std::fs::write(folder.join("shard-00001.tar.tmp-999999"), b"killed mid-write").unwrap();
    let out = ok(&["tokenize", "--data", &world, "--tokenizer", &tok]);
    assert!(out.contains("train:") && out.contains("val:") && out.contains("1 kept"), "{out}");
    let resumed = folder_bytes(&folder);
    std::fs::remove_dir_all(&folder).unwrap();
    ok(&["tokenize", "--data", &world, "--tokenizer", &tok, "--splits", "train"]);
    assert_eq!(folder_bytes(&folder), resumed, "an interrupted and resumed run equals an uninterrupted one");
    assert_eq!(resumed.iter().filter(|(n, _)| n.ends_with(".tar")).count(), 3);

    // Train on the tokens: the job declares the modality from its modality.json.
    let def: serde_json::Value = serde_json::from_slice(&std::fs::read(folder.join("modality.json")).unwrap()).unwrap();
    assert_eq!((def["key"].as_str(), def["grid"].as_u64()), (Some("tok_depth@32"), Some(8)));
    let job = d.path().join("job.toml");
    let shards = |split: &str, n: usize| format!("{world}/{split}/[rgb,tok_depth@32]/shard-{{00000..{:05}}}.tar", n - 1);
    std::fs::write(
        &job,
        format!(
            r#"[job]
name = "tok"
output_dir = "run"
[model]
modalities = "rgb@224,tok_depth@32"
[[model.token_modalities]]
key = "tok_depth@32"
vocab_size = {vocab}
grid = 8
[data]
input_tokens = 32
target_tokens = 32
decode_threads = 1
[[data.datasets]]
name = "world"
kind = "shards"
path = "{train}"
val_path = "{val}"
[train]
global_batch_size = 4
total_steps = 3
threads = 1
[checkpoint]
every_steps = 3
[eval]
every_steps = 3
samples = 4
baseline_samples = 16
"#,
            vocab = def["vocab_size"],
            train = shards("train", 3),
            val = shards("val", 1),
        ),
    )
    .unwrap();
    ok(&["train", &job.display().to_string()]);
    let log = std::fs::read_to_string(d.path().join("run/train_log.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"].as_u64(), Some(2), "{last}");
    assert!(last["mod_loss"]["tok_depth@32"].as_f64().unwrap() > 0.0, "{last}");
    let eval = std::fs::read_to_string(d.path().join("run/eval_log.jsonl")).unwrap();
    assert!(eval.contains("tok_depth@32"), "{eval}");
    // The exported weights carry the definition: other processes load them without the job.
    let p = |n: &str| d.path().join(n).display().to_string();
    ok(&["export", &job.display().to_string(), "--out", &p("model.safetensors")]);
    let budget = ["--num-input-tokens", "32", "--num-target-tokens", "32"];
    ok(&[&["model", "synth-batch", "--weights", &p("model.safetensors"), "--out", &p("batch.safetensors")][..], &budget].concat());
    let fwd = ok(&[
        &["model", "forward", "--weights", &p("model.safetensors"), "--batch", &p("batch.safetensors"), "--out", &p("fwd.safetensors")][..],
        &budget,
        &["--json"],
    ]
    .concat());
    let v: serde_json::Value = serde_json::from_str(&fwd).unwrap();
    assert!(v["mod_loss"]["tok_depth@32"].as_f64().unwrap() > 0.0, "{v}");
}
