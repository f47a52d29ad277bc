//! `tessera`: the command-line entry point (model tools now; training and the orchestrator
//! join as they land).

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
