//! One run per job directory. A second `tessera train` of the same job would start its own
//! workers, overwrite the first one's secrets and `coordinator.json`, append to the same logs
//! and commit the same checkpoint directories. Every launch mode therefore takes an exclusive
//! `flock` on `OUTPUT/.tessera/lock` first and holds it until it exits; the kernel drops the
//! lock when the process dies, so a crashed run never leaves the directory stuck.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The held lock on a job's output directory (released on drop or process exit).
#[derive(Debug)]
pub struct JobDirLock {
    _lock: Flock<File>,
}

impl JobDirLock {
    /// Takes the lock of the job writing to `output`, or fails at once naming the run that
    /// holds it (its pid, and its addresses when it is a coordinator).
    pub fn acquire(output: &Path) -> anyhow::Result<Self> {
        let dir = super::orchestrate::secrets_dir(output);
        super::orchestrate::secrets_dir_private(&dir)?;
        let path = dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                // Who holds it, for the message a second run prints.
                lock.set_len(0)
                    .and_then(|()| lock.seek(SeekFrom::Start(0)).map(drop))
                    .with_context(|| format!("writing {}", path.display()))?;
                write!(lock, "{}", std::process::id()).with_context(|| format!("writing {}", path.display()))?;
                Ok(Self { _lock: lock })
            }
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                let holder = if pid.is_empty() { "another tessera process".to_string() } else { format!("tessera pid {pid}") };
                let at = match super::orchestrate::read_endpoint(output) {
                    Ok(e) => format!(" (coordinator node {}, API {})", e.node, e.api.map_or("none".into(), |a| format!("http://{a}"))),
                    Err(_) => String::new(),
                };
                anyhow::bail!(
                    "the job directory {} is in use by {holder}{at}: one run per job; wait for it to end or stop it (SIGTERM checkpoints first)",
                    output.display()
                )
            }
            Err((_, e)) => Err(anyhow::anyhow!("locking {}: {e}", path.display())),
        }
    }
}
