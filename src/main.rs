//! `tessera`: the command-line entry point (model tools now; training and the orchestrator
//! join as they land).

mod cli;

fn main() -> std::process::ExitCode {
    tune_allocator();
    cli::run()
}

/// A training step allocates and frees the same large tensors (gradients, logits, activations)
/// every time. glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh mappings
/// whose pages fault in, kernel-zeroed, on every step. Serving them from the heap and never
/// trimming it recycles that memory instead (measured: less system time per step). Set
/// `TESSERA_SYSTEM_MALLOC=1` to keep glibc's defaults.
fn tune_allocator() {
    if std::env::var_os("TESSERA_SYSTEM_MALLOC").is_some() {
        return;
    }
    // SAFETY: mallopt only changes glibc allocator parameters; it is called before any other
    // thread exists, and both parameters are documented, valid values.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
