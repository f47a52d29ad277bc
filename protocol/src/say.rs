//! Whole-line logging to stderr for processes that share it.
//!
//! Why: `eprintln!` writes every formatted piece with a separate `write` call, so the lines of a
//! job's worker processes (which share the launcher's stderr) interleave mid-line. A line
//! formatted first and written with one call up to `PIPE_BUF` (4 KiB) bytes is atomic on a pipe.
//! A worker process serving a job also appends each line to its log file in the job's output
//! directory ([`crate::worker_log`]).

/// `eprintln!` that formats the line first and writes it with one call.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say::line(::std::format!($($arg)*))
    };
}

/// Writes `text` and a newline to stderr in one call (errors are ignored, as `eprintln!`
/// would panic instead; a log line is not worth a crash), and to the job's log file while one
/// is open ([`crate::worker_log::open`]).
pub fn line(mut text: String) {
    use std::io::Write;
    crate::worker_log::record(&text);
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    const CHILD_ENV: &str = "TESSERA_SAY_CHILD";
    const LINES: usize = 400;

    fn expected(id: &str, i: usize) -> String {
        format!("child {id} line {i} {}", "x".repeat(200))
    }

    #[test]
    fn lines_of_concurrent_processes_sharing_a_pipe_stay_whole() {
        if let Ok(id) = std::env::var(CHILD_ENV) {
            for i in 0..LINES {
                crate::say!("{}", expected(&id, i));
            }
            return;
        }
        let (mut reader, writer) = std::io::pipe().unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut children: Vec<_> = (0..4)
            .map(|id| {
                Command::new(&exe)
                    .args(["--exact", "say::tests::lines_of_concurrent_processes_sharing_a_pipe_stay_whole", "--nocapture"])
                    .env(CHILD_ENV, id.to_string())
                    .stdout(Stdio::null())
                    .stderr(writer.try_clone().unwrap())
                    .spawn()
                    .unwrap()
            })
            .collect();
        drop(writer);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = String::new();
            let _ = reader.read_to_string(&mut out);
            let _ = tx.send(out);
        });
        let out = rx.recv_timeout(Duration::from_secs(60));
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let out = out.expect("children finished within 60 s");
        let lines: std::collections::HashSet<&str> = out.lines().collect();
        for id in 0..4 {
            let id = id.to_string();
            let whole = (0..LINES).filter(|&i| lines.contains(expected(&id, i).as_str())).count();
            assert_eq!(whole, LINES, "child {id}: only {whole} of {LINES} lines arrived whole");
        }
    }
}
