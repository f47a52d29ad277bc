//! `tessera bench data-path --job CONFIG`: is the data path the bottleneck? Times (1) the
//! loader alone (read + transform + mask + collate, samples/s) at several decode-thread counts
//! and (2) training steps of the job's model fed by the full data path (with prefetch) against
//! the same steps fed by pre-built synthetic batches.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use tessera_protocol::{ResolvedJob, SampleLedger};
use tessera_worker::data::open_job_data;
use tessera_worker::{BatchSource, PrebuiltSynthetic, Prefetcher, Trainer, four_m_config};

use super::{Stats, stats};
use crate::cli::output::emit;

/// Arguments of `bench data-path`.
#[derive(Debug, Args)]
pub struct DataPathArgs {
    /// Job config whose model and datasets are used.
    #[arg(long)]
    job: PathBuf,
    /// Decode-thread counts to time the loader with, comma separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    decode_threads: Vec<usize>,
    /// Micro-batches timed per loader configuration.
    #[arg(long, default_value_t = 10)]
    loader_batches: usize,
    /// Timed training steps per source (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct LoaderRow {
    decode_threads: usize,
    samples_per_s: Stats,
}

#[derive(Serialize)]
struct StepRow {
    source: &'static str,
    step_s: Stats,
    data_wait_s: Stats,
}

#[derive(Serialize)]
struct Report {
    job: String,
    micro_batch: usize,
    libtorch_threads: i32,
    loader: Vec<LoaderRow>,
    steps: Vec<StepRow>,
    data_path_over_prebuilt: f64,
}

/// Runs the benchmark.
pub fn run(a: DataPathArgs) -> anyhow::Result<()> {
    let mut job = ResolvedJob::from_file(&a.job)?;
    if job.train.threads > 0 {
        tch::set_num_threads(job.train.threads as i32);
    }
    let cfg = four_m_config(&job.model, &job.origin)?;
    let mods = cfg.all_domains();
    let micro = job.train.micro_batch_size;

    let mut loader = Vec::new();
    for &threads in &a.decode_threads {
        job.decode_threads = threads;
        let mut p = open_job_data(&job, &mods)?;
        let ledger = SampleLedger::new(job.seed, job.schedule.clone(), p.dataset_lens())?;
        p.batch(&ledger.locate_range(0, micro as u64))?; // warm-up
        let mut rates = Vec::new();
        for k in 1..=a.loader_batches as u64 {
            let t = Instant::now();
            p.batch(&ledger.locate_range(k * micro as u64, micro as u64))?;
            rates.push(micro as f64 / t.elapsed().as_secs_f64());
        }
        loader.push(LoaderRow { decode_threads: threads, samples_per_s: stats(rates) });
    }

    job.decode_threads = *a.decode_threads.last().unwrap_or(&1);
    let mut steps = Vec::new();
    let pipeline = open_job_data(&job, &mods)?;
    let lens = pipeline.dataset_lens();
    let ledger = SampleLedger::new(job.seed, job.schedule.clone(), lens.clone())?;
    let fed = Prefetcher::new(pipeline, ledger, micro, 2);
    let (n_in, n_tgt) = (job.train.num_input_tokens, job.train.num_target_tokens);
    let prebuilt = PrebuiltSynthetic::new(cfg.clone(), job.seed, n_in, n_tgt);
    // Alternate the two sources step by step so that machine noise hits both alike.
    let mut a_t = Trainer::new(job.clone(), &cfg, fed, lens.clone())?;
    let mut b_t = Trainer::new(job.clone(), &cfg, prebuilt, lens)?;
    a_t.step()?; // warm-up (allocator, first prefetch)
    b_t.step()?;
    let (mut a_s, mut a_d, mut b_s, mut b_d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.steps {
        let r = a_t.step()?;
        a_s.push(r.step_s);
        a_d.push(r.data_s);
        let r = b_t.step()?;
        b_s.push(r.step_s);
        b_d.push(r.data_s);
    }
    steps.push(StepRow { source: "data path (prefetch)", step_s: stats(a_s), data_wait_s: stats(a_d) });
    steps.push(StepRow { source: "pre-built batches", step_s: stats(b_s), data_wait_s: stats(b_d) });
    let ratio = steps[0].step_s.median / steps[1].step_s.median;
    let report = Report {
        job: job.origin.clone(),
        micro_batch: micro,
        libtorch_threads: tch::get_num_threads(),
        loader,
        steps,
        data_path_over_prebuilt: ratio,
    };
    emit(a.json, &report, || {
        let mut s = format!("data path of {} (micro-batch {micro}, {} libtorch threads)\n", report.job, report.libtorch_threads);
        s.push_str("loader alone      decode threads   samples/s (median [min, max])\n");
        for r in &report.loader {
            let st = &r.samples_per_s;
            s.push_str(&format!("                  {:>14}   {:>9.1} [{:.1}, {:.1}]\n", r.decode_threads, st.median, st.min, st.max));
        }
        s.push_str("training step     source                 s/step (median)   data wait s (median)\n");
        for r in &report.steps {
            s.push_str(&format!("                  {:<22} {:>15.3}   {:>18.4}\n", r.source, r.step_s.median, r.data_wait_s.median));
        }
        s.push_str(&format!("step time, data path / pre-built: {ratio:.3}\n"));
        s
    })
}
