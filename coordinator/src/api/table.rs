//! [`StatusTable::table`]: the plain-text view of a [`JobStatus`] that `tessera status` prints
//! (the status is the contract crate's type; how a terminal shows it is the coordinator's, so
//! the view is an extension trait here rather than a method there).

use std::fmt::Write as _;

use tessera_protocol::reply::JobStatus;

/// The plain-text view of a job status.
pub trait StatusTable {
    /// A readable summary: job-level lines, then one row per member (ranked ones first).
    fn table(&self) -> String;
}

impl StatusTable for JobStatus {
    fn table(&self) -> String {
        status_table(self)
    }
}

fn status_table(status: &JobStatus) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored deliberately.
    let _ = writeln!(out, "job          {}", status.job);
    let _ = writeln!(out, "phase        {}", status.phase.as_str());
    let _ = writeln!(
        out,
        "generation   {} (world {}; workers target {}, min {}, max {})",
        status.generation, status.world_size, status.target_workers, status.min_workers, status.max_workers
    );
    let pct = if status.total_steps > 0 { 100.0 * status.step as f64 / status.total_steps as f64 } else { 0.0 };
    let _ = writeln!(out, "step         {}/{} ({pct:.1}%)", status.step, status.total_steps);
    let _ = writeln!(out, "loss         {}", status.loss.map_or_else(|| "-".to_string(), |l| format!("{l:.4}")));
    let _ = writeln!(out, "checkpoint   {}", opt(status.last_checkpoint));
    let _ = writeln!(out, "restarts     {}", status.restarts);
    let _ = writeln!(out, "mixture      v{}", status.schedule_version);
    if let Some(v) = &status.validation {
        let losses: Vec<String> = v.loss.iter().map(|(m, l)| format!("{m} {l:.4}")).collect();
        let _ = writeln!(out, "validation   step {} ({:.2}s): {}", v.step, v.seconds, losses.join(", "));
    }

    let header = ["WORKER", "ADDR", "RANK", "SEEN", "DRAINING", "STEP_S", "OWN_S", "STRAGGLER"];
    let mut members: Vec<_> = status.members.iter().collect();
    members.sort_by_key(|m| (m.rank.is_none(), m.rank, m.worker));
    let rows: Vec<[String; 8]> = members
        .iter()
        .map(|m| {
            [
                m.worker.to_string(),
                m.addr.clone(),
                m.rank.map_or_else(|| "-".to_string(), |r| r.to_string()),
                format!("{:.1}s", m.seen_ms_ago as f64 / 1000.0),
                if m.draining { "yes" } else { "no" }.to_string(),
                m.last_step_s.map_or_else(|| "-".to_string(), |s| format!("{s:.3}")),
                m.timings.map_or_else(|| "-".to_string(), |t| format!("{:.3}", t.own_s())),
                if m.straggler { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> =
        (0..header.len()).map(|c| rows.iter().map(|r| r[c].len()).chain([header[c].len()]).max().unwrap_or(0)).collect();
    let _ = writeln!(out);
    let mut line = |cells: [&str; 8]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(header);
    for r in &rows {
        line(r.each_ref().map(String::as_str));
    }
    if rows.is_empty() {
        let _ = writeln!(out, "(no workers registered)");
    }
    out
}
