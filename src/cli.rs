//! Command-line interface: argument parsing and dispatch; each sub-command lives in its module.

mod bench;
mod cluster;
mod config;
mod data;
mod data_source;
mod demo;
mod export;
mod generate;
mod jobctl;
mod joblock;
mod logs;
mod model;
mod neural;
mod orchestrate;
mod output;
mod peak;
mod plot;
mod pool_registry;
mod pool_worker;
#[cfg(test)]
mod readme_check;
mod tokenizer;
mod top;
mod train;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// tessera: trains 4M-21-style any-to-any multimodal models.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect, initialise and run the 4M model.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Generate target modalities from a conditioning batch with a schedule (ml-4m's
    /// GenerationSampler): writes the final batch.
    Generate(generate::GenerateArgs),
    /// Inspect the data path's policies (modality token budgets of an alphas mixture).
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Encode text with a tokenizer JSON, or train ml-4m's WordPiece text tokenizer.
    #[command(subcommand)]
    Tokenizer(tokenizer::TokenizerCommand),
    /// The end-to-end demo: generate a multimodal world, train a text tokenizer and a 4M model
    /// on it, and report validation loss against the unigram baseline.
    Demo(demo::DemoArgs),
    /// Validate job configs, or import ml-4m's YAML configs.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Train a job (TOML config) in this process, resuming from its newest valid checkpoint.
    Train(train::TrainArgs),
    /// Pre-tokenize a world's modality into token shards with a trained neural tokenizer.
    Tokenize(neural::TokenizeArgs),
    /// Steer a running job (status, scale, checkpoint, mixture, metrics).
    #[command(flatten)]
    Job(jobctl::JobCommand),
    /// Join a running job's coordinator as a worker process (adds capacity at the next step
    /// boundary), or with --coordinator a coordinator service's worker pool.
    Worker(worker::WorkerArgs),
    /// Run the coordinator service (cluster mode): jobs submitted over its authenticated API
    /// queue, run on the pool of workers that report to it, and survive its restart.
    Coordinator(cluster::CoordinatorArgs),
    /// Submit a job config to a coordinator service; prints the job id.
    Submit(cluster::SubmitArgs),
    /// List a coordinator service's jobs (state, workers, step, and why each queued job waits).
    Jobs(cluster::JobsArgs),
    /// Cancel a job of a coordinator service (a running one checkpoints first).
    Cancel(cluster::OneJobArgs),
    /// Wait until a job of a coordinator service ends (fails unless it finished).
    Wait(cluster::OneJobArgs),
    /// Print the lines every worker of a coordinator service's job printed (with its rank and
    /// generation), also after the job ended; --follow streams them until it ends.
    Logs(logs::LogsArgs),
    /// Write consolidated ml-4m-compatible weights from a job's newest valid checkpoint.
    Export(export::ExportArgs),
    /// Draw a job's training curves (loss per modality, validation, learning rate, gradient
    /// norm, tokens/s, step time by phase; restarts, resizes and mixture changes marked) as
    /// PNG or SVG.
    Plot(plot::PlotArgs),
    /// A live terminal view of a running job (phase, losses, throughput, ranks, events); keys
    /// c checkpoint, s scale, d drain, q quit. Prints one table when stdout is not a terminal.
    Top(top::TopArgs),
    /// Benchmarks that print a table (compare with the peers in the same run).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Parses arguments, runs the command, and maps errors to a message and exit code 1.
pub fn run() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG").unwrap_or_else(|_| "warn,ractor_cluster=error".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Model(cmd) => model::run(cmd),
        Command::Generate(args) => generate::run(args),
        Command::Data(cmd) => data::run(cmd),
        Command::Tokenizer(cmd) => tokenizer::run(cmd),
        Command::Demo(args) => demo::run(args),
        Command::Config(cmd) => config::run(cmd),
        Command::Train(args) => train::run(args),
        Command::Worker(args) => worker::run_worker(args),
        Command::Coordinator(args) => cluster::run_coordinator(args),
        Command::Submit(args) => cluster::submit(args),
        Command::Jobs(args) => cluster::jobs(args),
        Command::Cancel(args) => cluster::cancel(args),
        Command::Wait(args) => cluster::wait(args),
        Command::Logs(args) => logs::run(args),
        Command::Job(cmd) => jobctl::run(cmd),
        Command::Tokenize(args) => neural::tokenize(args),
        Command::Export(args) => export::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Top(args) => top::run(args),
        Command::Bench(cmd) => bench::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tessera_protocol::say!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: the crates' errors end their own
/// message with their cause (`{path}: {source}`), which `{:#}` would print a second time
/// ("…: Is a directory (os error 21): Is a directory (os error 21)").
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.ends_with(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::from_raw_os_error(21);
        let typed = tessera_protocol::ProtocolError::Io { path: "out/train_log.jsonl".into(), source: io };
        let e = anyhow::Error::new(typed).context("opening the job's logs");
        assert_eq!(error_chain(&e), "opening the job's logs: out/train_log.jsonl: Is a directory (os error 21)");
        assert_eq!(format!("{e:#}").matches("Is a directory").count(), 2, "what `{{:#}}` prints");
        // A cause the message does not already end with is kept.
        let e = anyhow::anyhow!("refused").context("submitting");
        assert_eq!(error_chain(&e), "submitting: refused");
    }
}
