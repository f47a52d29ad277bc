//! Tokenizer training step time at the test sizes: the conv and ViT VQ-VAEs for depth (32 px →
//! 8×8 tokens, 32 EMA codes), the conv one for semseg (class embedding + CE), the FSQ
//! feature-map tokenizer (4×4 cells of 32 channels) and the bottleneck-MLP global tokenizer
//! (8 heads), batch 16, with 1 and 2 libtorch threads. Each figure is the median over the timed
//! steps, after warmup.
//!
//! Run: `cargo bench -p tessera-model --bench tokenizer` (add `--profile dev` to reuse the
//! test build). Knobs: `TOKENIZER_BENCH_STEPS` (default 60), `TOKENIZER_BENCH_THREADS`
//! (default `1,2`).

use tch::{Device, Kind, Tensor};
use tessera_model::tokenizer::{ArchKind, Batches, QuantizerKind, ReconLoss, Tokenizer, TokenizerConfig, TrainOptions, Trainer};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn conv(modality: &str, size: usize) -> TokenizerConfig {
    let mut cfg = TokenizerConfig::preset(modality, size).expect("preset");
    cfg.arch = ArchKind::Conv { downsample_log2: 2, channels: 8, res_blocks: 1 };
    cfg.code_dim = 16;
    cfg.quantizer = QuantizerKind::EmaCosine { codebook_size: 32, decay: 0.95, dead_threshold: 1.0 };
    cfg
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps: usize = env_or("TOKENIZER_BENCH_STEPS", "60").parse()?;
    let threads: Vec<i32> = env_or("TOKENIZER_BENCH_THREADS", "1,2").split(',').map(str::parse).collect::<Result<_, _>>()?;
    let depth = TokenizerConfig { loss: ReconLoss::Mse, ..conv("depth", 32) };
    let semseg = conv("semseg", 32);
    let vit = TokenizerConfig { arch: ArchKind::Vit { patch: 4, width: 64, depth: 2, heads: 4 }, ..depth.clone() };
    let mut features = TokenizerConfig::preset("feature_map", 64)?;
    features.arch = ArchKind::Conv { downsample_log2: 0, channels: 16, res_blocks: 1 };
    features.quantizer = QuantizerKind::Fsq { levels: vec![7; 5] };
    features.code_dim = 5;
    let mut global = TokenizerConfig::preset("global_feature", 32)?;
    global.arch = ArchKind::Mlp { hidden: 128, blocks: 1, n_heads: 8 };
    global.code_dim = 8;
    global.quantizer = QuantizerKind::EmaCosine { codebook_size: 32, decay: 0.95, dead_threshold: 0.1 };
    tch::manual_seed(0);
    let cases: Vec<(&str, TokenizerConfig, Tensor)> = vec![
        ("depth conv-VQ 32px 8x8 K=32", depth, Tensor::randn([256, 1, 32, 32], (Kind::Float, Device::Cpu))),
        ("depth ViT-VQ 32px 8x8 K=32", vit, Tensor::randn([256, 1, 32, 32], (Kind::Float, Device::Cpu))),
        ("semseg conv-VQ 32px 8x8 K=32", semseg, Tensor::randint(5, [256, 32, 32], (Kind::Int64, Device::Cpu))),
        ("feature_map FSQ 4x4x32 7^5", features, Tensor::randn([256, 32, 4, 4], (Kind::Float, Device::Cpu))),
        ("global MLP 64-d 8 heads K=32", global, Tensor::randn([256, 64], (Kind::Float, Device::Cpu))),
    ];
    println!("{:<32} {:>7} {:>10}", "tokenizer (batch 16)", "threads", "ms/step");
    for (name, cfg, data) in &cases {
        for &t in &threads {
            tch::set_num_threads(t);
            let opts = TrainOptions { steps: steps + 5, batch_size: 16, ..Default::default() };
            let mut trainer = Trainer::new(Tokenizer::new(cfg, Device::Cpu)?, opts.clone())?;
            let mut batches = Batches::new(data, 16, 0, 0);
            trainer.run_for(&mut batches, 5)?;
            let report = trainer.run(&mut batches)?;
            println!("{name:<32} {t:>7} {:>10.1}", report.median_ms_per_step);
        }
    }
    Ok(())
}
