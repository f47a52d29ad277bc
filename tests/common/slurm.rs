//! A real Slurm cluster of one node for tests: Debian's `munged`, `slurmctld` and `slurmd`
//! (packages `munge`, `slurmctld`, `slurmd`, `slurm-client`) with their key, sockets, config,
//! state, spool and logs in a temp dir, on free loopback ports, stopped and removed on drop.
//!
//! No stand-in: `sbatch`, `srun` and `scontrol` talk to these daemons, which run jobs as the
//! test's user. Nothing in `/etc` is read or written: every command gets `SLURM_CONF` (the temp
//! `slurm.conf`), and munge runs on its own key and socket (`AuthInfo=socket=…`).
//!
//! The node is this machine under its short host name, reached at 127.0.0.1. It claims the CPUs
//! the test asks for, which may be more than the machine has (`SlurmdParameters=
//! config_overrides`), so a 2-core CI machine can run a job of three tasks. Processes are
//! tracked by process group and tasks are not bound (`proctrack/pgid`, `task/none`): no cgroup
//! is needed.
//!
//! Cleanup holds even when the test process is killed: the daemons run under one `sh` guard
//! that, when its stdin (a pipe from this process) closes, cancels every job, waits for the
//! node to finish them, stops the daemons and removes the temp dir; the next start also
//! removes dirs whose owning test process is gone.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Prefix of every temp dir this harness creates (leftovers are found by it).
const DIR_PREFIX: &str = "tessera-slurm-";
/// The one partition.
pub const PARTITION: &str = "tessera";
/// How long a start waits for the node to be idle.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one Slurm client command may take (they retry for `MessageTimeout` on their own).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts tried when a port picked free was taken before a daemon bound it.
const BIND_ATTEMPTS: usize = 3;
/// How long the guard's stop may take: job cancel (`KillWait` included), daemon stops.
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

/// The guard: starts munged, then slurmctld once munge answers, then slurmd once slurmctld
/// answers (each wait bounded), records their pids, and on EOF or a line on its stdin (fd 3: a
/// background job's stdin would be /dev/null) cancels all jobs, waits (bounded) until none is
/// left, stops the daemons (TERM, then KILL) and removes the dir. `$1` is the dir, `$2` the
/// node name.
const GUARD: &str = r#"
d=$1; node=$2; exec 3<&0
log() { echo "guard: $*" >>"$d/log/guard.log"; }
munged -F --key-file="$d/munge.key" --socket="$d/munge.sock" --pid-file="$d/munged.pid" \
  --seed-file="$d/munge.seed" --log-file="$d/log/munged.log" </dev/null 3<&- 2>>"$d/log/munged.out" & m=$!
i=0; until munge -S "$d/munge.sock" -n </dev/null >/dev/null 2>&1 || [ $i -ge 100 ]; do sleep 0.1; i=$((i+1)); done
slurmctld -D -i -f "$d/slurm.conf" </dev/null 3<&- >>"$d/log/slurmctld.out" 2>&1 & c=$!
i=0; until scontrol ping 2>/dev/null | grep -q UP || [ $i -ge 100 ]; do sleep 0.2; i=$((i+1)); done
slurmd -D -N "$node" -f "$d/slurm.conf" </dev/null 3<&- >>"$d/log/slurmd.out" 2>&1 & s=$!
echo "$m $c $s" >"$d/pids"
read cmd <&3
log "stop ($cmd): cancelling jobs"
scancel --partition=tessera >/dev/null 2>&1
i=0; while [ -n "$(squeue -h -p tessera 2>/dev/null)" ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i+1)); done
log "jobs left: $(squeue -h -p tessera 2>&1)"
for p in $s $c $m; do kill -TERM $p 2>/dev/null; done
i=0; while { kill -0 $s || kill -0 $c || kill -0 $m; } 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
for p in $s $c $m; do kill -KILL $p 2>/dev/null; done
wait
[ "$cmd" = keep ] || rm -rf "$d"
"#;

/// A job as `scontrol show job -o` describes it: its `Key=Value` fields.
#[derive(Debug, Clone)]
pub struct JobInfo(pub BTreeMap<String, String>);

impl JobInfo {
    /// A field (`JobState`, `ExitCode`, `Restarts`, `Reason`, …), empty when absent.
    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map(String::as_str).unwrap_or("")
    }

    /// `JobState`.
    pub fn state(&self) -> &str {
        self.get("JobState")
    }

    /// Whether the job is over (it may still be requeued by hand).
    pub fn is_final(&self) -> bool {
        matches!(
            self.state(),
            "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT" | "NODE_FAIL" | "PREEMPTED" | "OUT_OF_MEMORY" | "BOOT_FAIL" | "DEADLINE"
        )
    }

    /// How many times it was requeued.
    pub fn restarts(&self) -> u64 {
        self.get("Restarts").parse().unwrap_or(0)
    }
}

/// A running one-node Slurm cluster; its jobs cancelled, daemons stopped and temp dir removed
/// on drop.
pub struct Slurm {
    guard: Option<(Child, ChildStdin)>,
    dir: PathBuf,
    node: String,
}

impl Slurm {
    /// Starts munged, slurmctld and slurmd with a node of `cpus` CPUs and waits until the node
    /// is idle. Fails with the daemons' log tails when they do not come up.
    pub fn start(cpus: u32) -> anyhow::Result<Self> {
        for tool in ["munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol"] {
            if which(tool).is_none() {
                bail!("{tool} not found: install Debian's munge, slurmctld, slurmd and slurm-client (scripts/setup.sh)");
            }
        }
        sweep_leftovers();
        let node = short_hostname()?;
        let mut last = None;
        for _ in 0..BIND_ATTEMPTS {
            let dir = new_dir()?;
            let mut slurm = Self { guard: None, dir, node: node.clone() };
            match slurm.launch(cpus) {
                Ok(()) => return Ok(slurm),
                Err(e) => {
                    let bind_race = slurm.logs().contains("Address already in use");
                    drop(slurm);
                    if !bind_race {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one attempt").context(format!("slurm: ports taken {BIND_ATTEMPTS} times in a row")))
    }

    /// The temp dir (config, state, spool, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `slurm.conf` every command of this cluster reads.
    pub fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }

    /// The node's name (this machine's short host name).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A Slurm client command (`sbatch`, `scontrol`, …) for this cluster: `SLURM_CONF` set, any
    /// `SLURM_*` variable of an enclosing allocation removed.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SLURM_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("SLURM_CONF", self.conf());
        cmd
    }

    /// `sbatch --parsable` for this cluster; add options, then the script and its arguments, and
    /// run it with [`Slurm::submit`].
    pub fn sbatch(&self) -> Command {
        let mut cmd = self.command("sbatch");
        cmd.arg("--parsable");
        cmd
    }

    /// Runs `cmd` (from [`Slurm::sbatch`]); returns the job id.
    pub fn submit(&self, cmd: Command) -> anyhow::Result<u64> {
        let (status, out, err) = run_bounded(cmd, COMMAND_TIMEOUT)?;
        if !status.success() {
            bail!("sbatch failed ({status}): {err}");
        }
        let id = out.trim().split(';').next().unwrap_or("");
        id.parse().with_context(|| format!("sbatch printed {out:?}, not a job id"))
    }

    /// The job's fields from `scontrol show job -o ID`.
    pub fn job(&self, id: u64) -> anyhow::Result<JobInfo> {
        let mut cmd = self.command("scontrol");
        cmd.args(["show", "job", "-o", &id.to_string()]);
        let (status, out, err) = run_bounded(cmd, COMMAND_TIMEOUT)?;
        if !status.success() {
            bail!("scontrol show job {id} failed ({status}): {err}");
        }
        Ok(JobInfo(out.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()))
    }

    /// Polls the job until `done` holds; fails after `limit` (cancelling the job) with the
    /// daemons' log tails.
    pub fn wait_job(&self, id: u64, limit: Duration, done: impl Fn(&JobInfo) -> bool) -> anyhow::Result<JobInfo> {
        let deadline = Instant::now() + limit;
        loop {
            let info = self.job(id)?;
            if done(&info) {
                return Ok(info);
            }
            if Instant::now() > deadline {
                self.cancel(id);
                bail!("job {id} not done within {limit:?}: {:?}\n{}", info.0, self.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the job is over (see [`JobInfo::is_final`]).
    pub fn wait_final(&self, id: u64, limit: Duration) -> anyhow::Result<JobInfo> {
        self.wait_job(id, limit, JobInfo::is_final)
    }

    /// Runs `scontrol ARGS`; fails on a non-zero exit.
    pub fn scontrol(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.command("scontrol");
        cmd.args(args);
        let (status, out, err) = run_bounded(cmd, COMMAND_TIMEOUT)?;
        if !status.success() {
            bail!("scontrol {args:?} failed ({status}): {err}");
        }
        Ok(out)
    }

    /// Runs `scancel ARGS`; fails on a non-zero exit.
    pub fn scancel(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut cmd = self.command("scancel");
        cmd.args(args);
        let (status, _, err) = run_bounded(cmd, COMMAND_TIMEOUT)?;
        if !status.success() {
            bail!("scancel {args:?} failed ({status}): {err}");
        }
        Ok(())
    }

    /// Cancels a job, ignoring errors (it may be gone).
    pub fn cancel(&self, id: u64) {
        let _ = self.scancel(&[&id.to_string()]);
    }

    /// The last lines of every daemon log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(self.dir.join("log")) else { return out };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            out.push_str(&format!("== {}\n{}\n", p.display(), tail(&p, 15)));
        }
        out
    }

    /// Writes the key and config, spawns the guard and waits for an idle node.
    fn launch(&mut self, cpus: u32) -> anyhow::Result<()> {
        let d = &self.dir;
        for sub in ["state", "spool", "log"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        write_key(&d.join("munge.key"))?;
        let localhost = Ipv4Addr::LOCALHOST;
        let (ctld_port, slurmd_port) = (free_port(localhost)?, free_port(localhost)?);
        std::fs::write(self.conf(), slurm_conf(d, &self.node, cpus, ctld_port, slurmd_port))?;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", GUARD, "slurm-guard"]).arg(d).arg(&self.node);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SLURM_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .env("SLURM_CONF", self.conf())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn the slurm guard (sh)")?;
        let stdin = child.stdin.take().expect("piped stdin");
        self.guard = Some((child, stdin));
        let deadline = Instant::now() + START_TIMEOUT;
        let mut state = String::new();
        loop {
            if let Some(pids) = std::fs::read_to_string(d.join("pids")).ok().filter(|p| p.ends_with('\n')) {
                for (name, pid) in ["munged", "slurmctld", "slurmd"].iter().zip(pids.split_whitespace()) {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        bail!("{name} exited at start\n{}", self.logs());
                    }
                }
                let mut cmd = self.command("sinfo");
                cmd.args(["-h", "-N", "-o", "%T"]);
                state = run_bounded(cmd, COMMAND_TIMEOUT).map(|(_, out, _)| out.trim().to_string()).unwrap_or_default();
                if state == "idle" {
                    return Ok(());
                }
            }
            if let Some((child, _)) = &mut self.guard
                && let Some(status) = child.try_wait()?
            {
                self.guard = None;
                bail!("slurm guard exited at start ({status})\n{}", self.logs());
            }
            if Instant::now() > deadline {
                bail!("slurm node {} not idle within {START_TIMEOUT:?} (state {state:?})\n{}", self.node, self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Tells the guard to stop everything and waits for it (bounded).
    fn stop(&mut self) {
        if let Some((mut child, mut stdin)) = self.guard.take() {
            let _ = stdin.write_all(b"stop\n");
            drop(stdin);
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cluster's `slurm.conf`: one node, one partition, munge on the temp dir's socket, no
/// accounting, no cgroups, everything the daemons write under `d`.
fn slurm_conf(d: &Path, node: &str, cpus: u32, ctld_port: u16, slurmd_port: u16) -> String {
    let d = d.display();
    format!(
        "# Written by tests/common/slurm.rs for one test; removed with its directory.
ClusterName=tessera-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.sock
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=10
MessageTimeout=10
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"
    )
}

/// Runs `cmd` with stdout and stderr captured; kills it after `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> anyhow::Result<(ExitStatus, String, String)> {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let mut stderr = String::new();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = err.read_to_string(&mut stderr);
    let stdout = reader.join().unwrap_or_default();
    Ok((status, stdout, stderr))
}

/// This machine's host name up to the first dot (what slurmctld compares `SlurmctldHost` with).
fn short_hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").context("read the host name")?;
    Ok(name.trim().split('.').next().unwrap_or_default().to_string())
}

/// A fresh munge key: 1 KiB from the kernel's RNG, readable by its owner only.
fn write_key(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = vec![0u8; 1024];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(&key)?;
    Ok(())
}

/// The program's path on `PATH` (with the sbin directories, where Debian puts the daemons).
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').chain(["/usr/sbin", "/sbin"]).map(|dir| Path::new(dir).join(program)).find(|p| p.is_file())
}

/// A new dir `tessera-slurm-<pid>-<n>` under the temp dir, mode 0755 (munged refuses a socket
/// dir others may write to).
fn new_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// Removes dirs of earlier runs whose test process is gone (their guard stopped the daemons).
fn sweep_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A port free on `ip` right now (a daemon binds it a moment later: see the retry in `start`).
fn free_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0)).context("bind a free port")?.local_addr()?.port())
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
