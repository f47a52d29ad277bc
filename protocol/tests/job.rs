//! Job config parsing, validation and ml-4m import.

use std::path::{Path, PathBuf};

use tessera_protocol::job::{DatasetKind, Flavor, JobConfig, Preset, ResolvedJob, StragglerPolicy, import_ml4m};
use tessera_tokenizers::Modality;

fn ml4m_configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/ml-4m/configs")
}

const MINIMAL: &str = r#"
[job]
name = "t"
output_dir = "out"

[model]
modalities = "caption,tok_rgb@224"

[data]
text_tokenizer = "tok.json"
input_tokens = 64
target_tokens = [16, 64]

[[data.datasets]]
name = "syn"
kind = "synthetic"

[train]
global_batch_size = 32
micro_batch_size = 8
total_tokens = 1_000_000
warmup_steps = 10
"#;

/// The coordinator sends workers the resolved job, not the config: it must survive the wire
/// (JSON, as `messages::Wire` carries it) unchanged, the Dirichlet mixtures and tokenizer-defined
/// modalities included (a worker registers those before it decodes the job's keys).
#[test]
fn a_resolved_job_travels_to_workers_unchanged() {
    let text = MINIMAL.replace(
        "modalities = \"caption,tok_rgb@224\"",
        "modalities = \"caption,tok_wire@16\"\n[[model.token_modalities]]\nkey = \"tok_wire@16\"\nvocab_size = 64\ngrid = 4",
    );
    let cfg = JobConfig::from_toml(&text, "minimal.toml").unwrap();
    let job = ResolvedJob::resolve(&cfg, "minimal.toml", Path::new("/base")).unwrap();
    let spec = tessera_protocol::messages::JobSpec::new(&job);
    let back: tessera_protocol::messages::JobSpec = serde_json::from_slice(&serde_json::to_vec(&spec).unwrap()).unwrap();
    assert_eq!(back.open().unwrap(), job);
    assert_eq!(job.model.token_modalities.len(), 1);
    assert!(!job.datasets[0].mixture.components().is_empty());
    let bad = tessera_protocol::messages::JobSpec { job: "{".into(), ..back };
    let e = bad.open().unwrap_err().to_string();
    assert!(e.contains("field `job`") && e.contains("does not decode"), "{e}");
}

#[test]
fn minimal_config_resolves_with_documented_defaults() {
    let cfg = JobConfig::from_toml(MINIMAL, "minimal.toml").unwrap();
    let job = ResolvedJob::resolve(&cfg, "minimal.toml", Path::new("/base")).unwrap();
    assert_eq!(job.output_dir, Path::new("/base/out"));
    assert_eq!(job.checkpoint.dir, Path::new("/base/out/checkpoints"));
    assert_eq!(job.checkpoint.keep_last, 3);
    assert_eq!(job.datasets[0].kind, DatasetKind::Synthetic);
    assert_eq!(job.datasets[0].mixture.modalities(), &[Modality::Caption, Modality::TokRgb224]);
    // 1M tokens / ((64 + 64) tokens · 32 samples) = 244.1 -> 245 steps.
    assert_eq!(job.train.total_steps, 245);
    assert_eq!(job.train.micro_batch_size, 8);
    // lr = blr · 32 / 256 with the default blr 1e-4.
    assert!((job.train.lr.peak - 1.25e-5).abs() < 1e-18);
    assert_eq!(job.train.betas, [0.9, 0.95]);
    assert_eq!(job.train.weight_decay, 0.05);
    assert!(job.train.skip_nonfinite);
    // Round trip through TOML is lossless.
    assert_eq!(JobConfig::from_toml(&cfg.to_toml(), "again").unwrap(), cfg);
}

#[test]
fn errors_name_the_field() {
    let unknown = MINIMAL.replace("micro_batch_size = 8", "micro_batch = 8");
    let err = JobConfig::from_toml(&unknown, "x.toml").unwrap_err().to_string();
    assert!(err.contains("x.toml") && err.contains("micro_batch"), "{err}");

    let cases = [
        ("micro_batch_size = 8", "micro_batch_size = 5", "train.micro_batch_size"),
        ("total_tokens = 1_000_000", "total_tokens = 1_000_000\ntotal_steps = 3", "train.total_steps"),
        ("warmup_steps = 10", "warmup_steps = 100000", "train.warmup_steps"),
        ("kind = \"synthetic\"", "kind = \"shards\"", "data.datasets[0].path"),
        ("modalities = \"caption,tok_rgb@224\"", "modalities = \"caption,tok_rgb@448\"", "data.datasets[0].modalities"),
        ("target_tokens = [16, 64]", "target_tokens = [64, 16]", "data.datasets[0].target_tokens"),
    ];
    for (from, to, field) in cases {
        let text = if field == "data.datasets[0].modalities" {
            // The dataset asks for a modality the model does not have.
            MINIMAL.replace("kind = \"synthetic\"", &format!("kind = \"synthetic\"\n{}", to.replace("caption,", "")))
        } else {
            MINIMAL.replace(from, to)
        };
        let cfg = JobConfig::from_toml(&text, "bad.toml").unwrap();
        let err = ResolvedJob::resolve(&cfg, "bad.toml", Path::new("/")).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains(field), "{field}: {err}");
    }
}

/// A preset or flavour outside the closed sets is refused when the job is resolved (at `config
/// check`, `train` or submit), naming the file and the field, not later by a worker; the short
/// spellings that job files use keep working.
#[test]
fn presets_and_flavors_are_checked_at_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, model: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, MINIMAL.replace("[model]\n", &format!("[model]\n{model}\n"))).unwrap();
        path
    };
    let path = write("huge.toml", "preset = \"huge\"");
    let err = ResolvedJob::from_file(&path).unwrap_err().to_string();
    assert_eq!(err, format!("{}: field `model.preset`: unknown preset 'huge' (tiny, small, base, large, xlarge)", path.display()));
    let path = write("relu.toml", "flavor = \"relu\"");
    let err = ResolvedJob::from_file(&path).unwrap_err().to_string();
    assert_eq!(err, format!("{}: field `model.flavor`: unknown flavor 'relu' (swiglu_nobias, gelu)", path.display()));

    let job = ResolvedJob::from_file(&write("xl.toml", "preset = \"xl\"\nflavor = \"swiglu\"")).unwrap();
    assert_eq!((job.model.preset, job.model.flavor), (Preset::Xlarge, Flavor::SwigluNobias));
    let job = ResolvedJob::from_file(&write("default.toml", "")).unwrap();
    assert_eq!((job.model.preset, job.model.flavor), (Preset::Tiny, Flavor::SwigluNobias));
    let job = ResolvedJob::from_file(&write("gelu.toml", "preset = \"b\"\nflavor = \"gelu\"")).unwrap();
    assert_eq!((job.model.preset, job.model.flavor), (Preset::Base, Flavor::Gelu));
}

/// `[stragglers]`: off by default with the documented factor and window; validated once, naming
/// the field; an unknown key is refused.
#[test]
fn the_straggler_section_has_defaults_and_is_validated() {
    let cfg = JobConfig::from_toml(MINIMAL, "s.toml").unwrap();
    let job = ResolvedJob::resolve(&cfg, "s.toml", Path::new("/")).unwrap();
    assert_eq!(job.stragglers, StragglerPolicy { factor: 3.0, steps: 20, drain: false });
    let on = format!("{MINIMAL}\n[stragglers]\ndrain = true\nfactor = 2.5\nsteps = 4\n");
    let job = ResolvedJob::resolve(&JobConfig::from_toml(&on, "s.toml").unwrap(), "s.toml", Path::new("/")).unwrap();
    assert_eq!(job.stragglers, StragglerPolicy { factor: 2.5, steps: 4, drain: true });
    for (bad, field) in [("factor = 1.0", "stragglers.factor"), ("factor = nan", "stragglers.factor"), ("steps = 0", "stragglers.steps")] {
        let text = format!("{MINIMAL}\n[stragglers]\n{bad}\n");
        let err = ResolvedJob::resolve(&JobConfig::from_toml(&text, "s.toml").unwrap(), "s.toml", Path::new("/")).unwrap_err().to_string();
        assert!(err.contains(field), "{bad}: {err}");
    }
    let err = JobConfig::from_toml(&format!("{MINIMAL}\n[stragglers]\ndrian = true\n"), "s.toml").unwrap_err().to_string();
    assert!(err.contains("drian"), "{err}");
}

/// Tokenizer-defined keys declared in `[[model.token_modalities]]` resolve everywhere a key is
/// accepted; a redefinition with other numbers names the field.
#[test]
fn token_modalities_are_declared_by_the_job() {
    let text = MINIMAL.replace(
        "modalities = \"caption,tok_rgb@224\"",
        "modalities = \"caption,tok_jobtest@32\"\n[[model.token_modalities]]\nkey = \"tok_jobtest@32\"\nvocab_size = 64\ngrid = 4",
    );
    let cfg = JobConfig::from_toml(&text, "tok.toml").unwrap();
    let job = ResolvedJob::resolve(&cfg, "tok.toml", Path::new("/")).unwrap();
    let m = Modality::from_key("tok_jobtest@32").unwrap();
    assert_eq!((m.spec().vocab_size, m.spec().max_tokens, m.spec().patch_size), (64, 16, 8));
    assert_eq!(job.datasets[0].mixture.modalities(), &[Modality::Caption, m]);
    assert_eq!(JobConfig::from_toml(&cfg.to_toml(), "again").unwrap(), cfg);
    // The same declaration again is fine; other numbers under the same key are not.
    ResolvedJob::resolve(&cfg, "tok.toml", Path::new("/")).unwrap();
    let cfg = JobConfig::from_toml(&text.replace("vocab_size = 64", "vocab_size = 65"), "bad.toml").unwrap();
    let err = ResolvedJob::resolve(&cfg, "bad.toml", Path::new("/")).unwrap_err().to_string();
    assert!(err.contains("model.token_modalities[0]") && err.contains("tok_jobtest@32") && err.contains("already registered"), "{err}");
    // Undeclared keys say how to declare them.
    let cfg = JobConfig::from_toml(&MINIMAL.replace("tok_rgb@224", "tok_undeclared@32"), "u.toml").unwrap();
    let err = ResolvedJob::resolve(&cfg, "u.toml", Path::new("/")).unwrap_err().to_string();
    assert!(err.contains("tok_undeclared@32") && err.contains("token_modalities"), "{err}");
}

/// ml-4m's 4M-B 4M-21 run config: the derived numbers equal reference §5.1-5.2.
#[test]
fn imports_ml4m_4m21_base_config() {
    let run = ml4m_configs().join("models/4m-b_mod21_500b.yaml");
    let import = import_ml4m(&run, None, 64).unwrap();
    let c = &import.config;
    assert_eq!(c.train.global_batch_size, 4096);
    assert_eq!(c.train.total_steps, Some(239_218));
    assert_eq!(c.train.warmup_steps, Some(4769));
    assert_eq!((c.model.preset.as_str(), c.model.flavor.as_str()), ("base", "swiglu_nobias"));
    let names: Vec<&str> = c.data.datasets.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["cc12m", "coyo700m", "c4"]);
    assert_eq!(c.data.datasets.iter().map(|d| d.weight).collect::<Vec<_>>(), [0.6, 0.2, 0.2]);
    assert_eq!(c.data.datasets[2].kind, DatasetKind::Text);
    assert_eq!(c.data.datasets[2].input_alphas.as_deref(), Some("1.0"));
    // The COYO alphas file is missing from ml-4m itself (reference §3.2): reported, not hidden.
    assert!(import.warnings.iter().any(|w| w.contains("coyo700m") && w.contains("not found")), "{:?}", import.warnings);
    assert!(c.data.datasets[0].alphas.as_ref().unwrap().is_file());

    // Filling in what the import cannot know gives a job that resolves, with lr = 1.6e-3.
    let mut cfg = c.clone();
    cfg.data.datasets.remove(1);
    let dir = tempfile::tempdir().unwrap();
    for d in &mut cfg.data.datasets {
        d.path = Some(dir.path().join("x").display().to_string());
    }
    cfg.data.text_tokenizer = Some(ml4m_configs().join("../text_tokenizer_4m_wordpiece_30k.json"));
    let job = ResolvedJob::resolve(&cfg, "imported", dir.path()).unwrap();
    assert!((job.train.lr.peak - 1.6e-3).abs() < 1e-15);
    assert_eq!(job.datasets[0].mixture.components().len(), 7);
    assert_eq!(job.datasets[1].mixture.modalities(), &[Modality::Caption]);
    assert_eq!(job.model.modalities.all().len(), 19);
}

#[test]
fn imports_ml4m_4m7_data_with_uniform_mixture() {
    let run = ml4m_configs().join("models/4m-b_mod7_500b.yaml");
    let import = import_ml4m(&run, None, 64).unwrap();
    let ds = &import.config.data.datasets;
    assert_eq!(ds.len(), 1);
    assert!(ds[0].alphas.as_ref().unwrap().ends_with("mix_mod7_all2all_rgb2all_a0.5.yaml"));
    assert_eq!(import.config.model.modalities.split(',').count(), 8);
}
