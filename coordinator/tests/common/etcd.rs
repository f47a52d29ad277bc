//! A real etcd server for tests: Debian's `etcd` (package `etcd-server`, 3.4) on free loopback
//! ports (or inside a network namespace), its data in a temp dir, stopped and removed on drop.
//!
//! No stand-in: every etcd test talks to this server. One server can be shared by all tests of
//! a test binary ([`shared`]); each test then works under its own key prefix ([`unique_prefix`]).
//!
//! Cleanup holds even when the test process is killed: etcd runs under a `sh` guard that kills
//! it when its stdin (a pipe from this process) closes, which the kernel does at our exit, and
//! the next start removes data dirs whose owning test process is gone.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Prefix of every data dir this harness creates (leftovers are found by it).
const DIR_PREFIX: &str = "tessera-etcd-";
/// How long a start waits for `/health`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);
/// Starts tried when a port picked free was taken before etcd bound it.
const BIND_ATTEMPTS: usize = 5;

/// Where the server listens.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Address of its client and peer listeners.
    pub ip: IpAddr,
    /// Network namespace to run it in (`ip netns exec`), `None` for this process's own.
    pub netns: Option<String>,
}

impl Placement {
    /// Loopback in this process's namespace.
    pub fn loopback() -> Self {
        Self { ip: IpAddr::V4(Ipv4Addr::LOCALHOST), netns: None }
    }
}

/// A running etcd server; killed, reaped and its data dir removed on drop.
pub struct Etcd {
    guard: Option<(Child, ChildStdin)>,
    dir: PathBuf,
    placement: Placement,
    client_port: u16,
    peer_port: u16,
    log: PathBuf,
    /// Boxed: it is rare, and an `Etcd` is held by value in enums.
    tls: Option<Box<TlsFiles>>,
}

/// The files of an etcd that speaks TLS only and checks client certificates, made with the
/// `openssl` CLI: a CA, the server's certificate (its address as an IP SAN) and a client's.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub server: (PathBuf, PathBuf),
    /// A client's certificate and key, signed by the CA.
    pub client: (PathBuf, PathBuf),
}

impl TlsFiles {
    /// Makes them in `dir` (P-256 keys: quick to make) for a server at `ip`.
    fn make(dir: &Path, ip: IpAddr) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("openssl").args(args).current_dir(dir).output().context("run openssl (scripts/setup.sh installs it)")?;
            if !out.status.success() {
                bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        run(
            &[&["req", "-x509"][..], &key, &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=tessera-test-ca"]].concat()
        )?;
        let exts = [
            ("server", format!("subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n")),
            ("client", "extendedKeyUsage=clientAuth\n".into()),
        ];
        for (serial, (name, ext)) in (2..).zip(exts) {
            std::fs::write(dir.join(format!("{name}.ext")), ext)?;
            run(&[
                &["req"][..],
                &key,
                &["-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN={name}")],
            ]
            .concat())?;
            let serial = serial.to_string();
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ])?;
        }
        let pair = |name: &str| (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        Ok(Self { ca: dir.join("ca.pem"), server: pair("server"), client: pair("client") })
    }
}

impl Etcd {
    /// Starts a server on free loopback ports.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_at(Placement::loopback())
    }

    /// Starts a server at `placement`. In this namespace the ports are picked free (and the
    /// start retried on a bind race); in another namespace (fresh, made by the test) the
    /// standard ports are free by construction.
    pub fn start_at(placement: Placement) -> anyhow::Result<Self> {
        Self::start_with(placement, false)
    }

    /// Starts a server on free loopback ports that speaks TLS only (`https://`) and checks
    /// client certificates (`--client-cert-auth`); [`Etcd::tls`] has the files.
    pub fn start_tls() -> anyhow::Result<Self> {
        Self::start_with(Placement::loopback(), true)
    }

    fn start_with(placement: Placement, tls: bool) -> anyhow::Result<Self> {
        sweep_leftovers();
        let dir = new_data_dir()?;
        let mut last = None;
        for _ in 0..BIND_ATTEMPTS {
            let (client_port, peer_port) = match placement.netns {
                Some(_) => (2379, 2380),
                None => (free_port(placement.ip)?, free_port(placement.ip)?),
            };
            let log = dir.with_extension("log");
            // Made per attempt: a failed attempt's drop removes them.
            let tls = if tls { Some(Box::new(TlsFiles::make(&dir.with_extension("tls"), placement.ip)?)) } else { None };
            let mut etcd = Self { guard: None, dir: dir.clone(), placement: placement.clone(), client_port, peer_port, log, tls };
            match etcd.launch() {
                Ok(()) => return Ok(etcd),
                Err(e) => {
                    let bind_race = std::fs::read_to_string(&etcd.log).is_ok_and(|l| l.contains("address already in use"));
                    etcd.stop();
                    if !bind_race || placement.netns.is_some() {
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(e);
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                    std::fs::create_dir_all(&dir)?;
                    last = Some(e);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last.expect("at least one attempt").context(format!("etcd: ports taken {BIND_ATTEMPTS} times in a row")))
    }

    /// The client URL (`http://IP:PORT`, `https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", SocketAddr::new(self.placement.ip, self.client_port))
    }

    /// The TLS files of a server from [`Etcd::start_tls`].
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_deref()
    }

    /// Adds the user `root` with `password` and enables authentication (`etcdctl`, which
    /// grants `root` its role): from then on every request needs the user.
    pub fn enable_auth(&self, password: &str) -> anyhow::Result<()> {
        for args in [&["user", "add", &format!("root:{password}"), "--interactive=false"][..], &["auth", "enable"]] {
            let out = self.etcdctl().args(args).output().context("run etcdctl")?;
            if !out.status.success() {
                bail!("etcdctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    }

    /// `etcdctl` against this server, in its namespace, with its client certificate, short
    /// deadlines and no proxy (these machines set proxy variables, which etcdctl's gRPC would
    /// honour).
    fn etcdctl(&self) -> Command {
        let mut c = match &self.placement.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcdctl"]);
                c
            }
            None => Command::new("etcdctl"),
        };
        c.args(["--endpoints", &self.url(), "--dial-timeout=1s", "--command-timeout=2s"]).env("ETCDCTL_API", "3");
        if let Some(t) = &self.tls {
            c.arg("--cacert").arg(&t.ca).arg("--cert").arg(&t.client.0).arg("--key").arg(&t.client.1);
        }
        for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"] {
            c.env_remove(var);
        }
        c
    }

    /// Its data dir.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server (SIGKILL: what a crash looks like) and starts it again on the same
    /// ports and data, waiting for health.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()
    }

    /// Spawns etcd under its guard and waits for it to answer healthy.
    fn launch(&mut self) -> anyhow::Result<()> {
        let ip = self.placement.ip;
        let client = self.url();
        let peer = format!("http://{}", SocketAddr::new(ip, self.peer_port));
        let log = std::fs::File::create(&self.log).with_context(|| format!("create {}", self.log.display()))?;
        let mut cmd = match &self.placement.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "sh"]);
                c
            }
            None => Command::new("sh"),
        };
        // The guard: a reader kills etcd once our end of stdin closes (fd 3: a background job's
        // stdin would be /dev/null) and, unless told `keep` first (a restart), removes its data
        // dir: so does a shared server at our exit. The guard exits with etcd, so a failed
        // start shows at once.
        cmd.args([
            "-c",
            "d=$1; shift; exec 3<&0; etcd \"$@\" </dev/null 3<&- & e=$!; \
             { read c <&3; kill -9 $e 2>/dev/null; [ \"$c\" = keep ] || { sleep 0.2; rm -rf \"$d\" \"$d.log\"; }; } & r=$!; \
             wait $e; s=$?; [ $s -eq 137 ] && wait $r; kill $r 2>/dev/null; exit $s",
            "etcd-guard",
        ]);
        cmd.arg(&self.dir);
        cmd.args(["--name", "t", "--data-dir"]).arg(&self.dir);
        cmd.args(["--listen-client-urls", &client, "--advertise-client-urls", &client]);
        cmd.args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer]);
        cmd.args(["--initial-cluster", &format!("t={peer}"), "--initial-cluster-state", "new"]);
        cmd.args(["--logger=zap", "--log-outputs=stderr"]);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file").arg(&t.server.0).arg("--key-file").arg(&t.server.1);
            cmd.arg("--trusted-ca-file").arg(&t.ca).arg("--client-cert-auth");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn etcd (is Debian's etcd-server installed? scripts/setup.sh)")?;
        let stdin = child.stdin.take().expect("piped stdin");
        self.guard = Some((child, stdin));
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        loop {
            if self.healthy() {
                return Ok(());
            }
            if let Some((child, _)) = &mut self.guard
                && let Some(status) = child.try_wait()?
            {
                self.guard = None;
                bail!("etcd exited at start ({status}); log: {}", tail(&self.log));
            }
            if Instant::now() > deadline {
                bail!("etcd at {client} not healthy within {HEALTH_TIMEOUT:?}; log: {}", tail(&self.log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One health probe: a direct HTTP request in this namespace (no proxy, no TLS),
    /// `etcdctl` otherwise (in the server's namespace, with the client certificate).
    fn healthy(&self) -> bool {
        if self.placement.netns.is_none() && self.tls.is_none() {
            return http_health(SocketAddr::new(self.placement.ip, self.client_port));
        }
        self.etcdctl().args(["endpoint", "health"]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    }

    /// Kills the server and reaps it and its guard; the data dir stays.
    pub fn stop(&mut self) {
        if let Some((mut child, mut stdin)) = self.guard.take() {
            // Closing the pipe makes the guard kill etcd and wait for it; then reap the guard.
            let _ = stdin.write_all(b"keep\n");
            drop(stdin);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        // A guard that did not react: kill it; etcd then dies on the sweep.
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_dir_all(self.dir.with_extension("tls"));
    }
}

/// One server for every test of this test binary, started on first use. It outlives the tests
/// (statics are not dropped): its guard kills it when the process exits, and the next run's
/// sweep removes its data dir.
pub fn shared() -> &'static Etcd {
    static SHARED: OnceLock<Etcd> = OnceLock::new();
    SHARED.get_or_init(|| Etcd::start().expect("start the shared etcd"))
}

/// A key prefix no other test of this run uses: `/tessera-test/<name>/<pid>-<n>`.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("/tessera-test/{name}/{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A new data dir `tessera-etcd-<pid>-<n>` under the temp dir.
fn new_data_dir() -> anyhow::Result<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// Removes data dirs (and logs) of earlier runs whose test process is gone. Their etcd died
/// with its guard; a server still running there (guard killed by hand) is left alone, since
/// only the process that started it may end it.
fn sweep_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else { continue };
        let Some(pid) = rest.split(['-', '.']).next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let path = entry.path();
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
}

/// A port free on `ip` right now (etcd binds it a moment later: see the retry in `start_at`).
fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0)).context("bind a free port")?.local_addr()?.port())
}

/// `GET /health` answered `{"health":"true"}`.
fn http_health(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}
