//! Cluster mode over TLS: `tessera coordinator --tls-cert/--tls-key` with a CA and a server
//! certificate (SAN `IP:127.0.0.1`) made by the `openssl` command-line tool; clients and a pool
//! worker reach it at `https://` with `--ca-file`/`TESSERA_CA_FILE`, and proxy variables aimed
//! at a dead port are ignored. A client trusting another CA, a plain-HTTP client and random
//! bytes are refused, the service logs each with the peer's address, and keeps answering; a
//! peer that connects and says nothing holds up no client and is dropped at the handshake limit.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::tls::{make_ca, make_server_cert};
use common::{Proc, bin, log_lines, wait_for, write_job};

/// Runs `cmd` to its end, killing it (and failing) after `limit`; output through files, so a
/// chatty process cannot block on a full pipe.
fn run_bounded(mut cmd: Command, scratch: &Path, limit: Duration) -> Output {
    let (out, err) = (scratch.join("run.out"), scratch.join("run.err"));
    let mut child = cmd
        .env("OMP_NUM_THREADS", "1")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("tessera runs");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not end within {limit:?}: {}", std::fs::read_to_string(&err).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: std::fs::read(&out).unwrap(), stderr: std::fs::read(&err).unwrap() }
}

/// `tessera ARGS` as a client of `url` with `token`, trusting `ca` (none: no CA at all), with
/// every proxy variable aimed at a port where nothing listens: a client that read them fails.
fn client(url: &str, token: &Path, ca: Option<&Path>, args: &[&str], scratch: &Path) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env("TESSERA_COORDINATOR", url).env("TESSERA_TOKEN_FILE", token);
    for proxy in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        cmd.env(proxy, "http://127.0.0.1:9");
    }
    match ca {
        Some(ca) => cmd.env("TESSERA_CA_FILE", ca),
        None => cmd.env_remove("TESSERA_CA_FILE"),
    };
    run_bounded(cmd, scratch, Duration::from_secs(150))
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn failed(out: Output) -> String {
    assert!(!out.status.success(), "expected a failure; stdout: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A coordinator command serving TLS with `cert` and `key`, its state in `state`.
fn coordinator(state: &Path, cert: &Path, key: &Path, addr_file: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args([
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().unwrap(),
        "--addr-file",
        addr_file.to_str().unwrap(),
    ])
    .args(["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    cmd
}

/// The URL a coordinator wrote to its --addr-file.
fn url_of(addr_file: &Path) -> String {
    let mut url = String::new();
    wait_for("the coordinator's --addr-file", Duration::from_secs(30), || {
        url = std::fs::read_to_string(addr_file).unwrap_or_default().trim().to_string();
        !url.is_empty()
    });
    url
}

/// How many TLS refusals from 127.0.0.1 the log holds.
fn refusals(log: &str) -> usize {
    log.lines().filter(|l| l.contains("[service] refused a connection from 127.0.0.1:") && l.contains("TLS handshake")).count()
}

#[test]
fn a_tls_service_serves_https_clients_and_workers_and_refuses_other_cas_plain_http_and_junk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ca = make_ca(root, "cluster");
    let other_ca = make_ca(root, "other");
    let (cert, key) = make_server_cert(root, "cluster");
    let state = root.join("state");
    let addr_file = root.join("addr");
    let service = Proc::spawn(coordinator(&state, &cert, &key, &addr_file), &root.join("coordinator.log"));
    let url = url_of(&addr_file);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    wait_for("the API line", Duration::from_secs(30), || service.text().contains(&format!("API {url} (")));
    let token = state.join("token");

    // A peer that connects and never starts its handshake holds up nobody (each handshake has
    // its own task; one in the accept loop would stall this client for the 10 s limit).
    let mut silent = std::net::TcpStream::connect(url.trim_start_matches("https://")).unwrap();
    // The flags work as well as the variables.
    let mut flags = Command::new(bin());
    flags.args(["jobs", "--coordinator", &url, "--ca-file", ca.to_str().unwrap(), "--token-file", token.to_str().unwrap()]);
    flags.env_remove("TESSERA_COORDINATOR").env_remove("TESSERA_CA_FILE").env("HTTPS_PROXY", "http://127.0.0.1:9");
    assert!(ok(run_bounded(flags, root, Duration::from_secs(60))).starts_with("JOB"));
    silent.set_nonblocking(true).unwrap();
    let open = matches!(silent.read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    assert!(open, "the client was answered only once the silent peer had been dropped");
    silent.set_nonblocking(false).unwrap();

    // Refused: no CA, another CA, plain HTTP on the TLS port, random bytes.
    let no_ca = failed(client(&url, &token, None, &["jobs"], root));
    assert!(no_ca.contains(&format!("{url}: an https:// coordinator needs the CA")) && no_ca.contains("--ca-file"), "{no_ca}");
    let wrong_ca = failed(client(&url, &token, Some(&other_ca), &["jobs"], root));
    assert!(wrong_ca.contains(&format!("{url}: TLS handshake: invalid peer certificate")), "{wrong_ca}");
    let plain = url.replacen("https://", "http://", 1);
    let plain_err = failed(client(&plain, &token, Some(&ca), &["jobs"], root));
    assert!(plain_err.contains(&format!("{plain}: bad response: the server speaks TLS: give its https:// URL")), "{plain_err}");
    wait_for("the plain-HTTP client's refusal logged with its peer", Duration::from_secs(10), || refusals(&service.text()) >= 2);
    let before = refusals(&service.text());
    let mut junk = std::net::TcpStream::connect(url.trim_start_matches("https://")).unwrap();
    junk.write_all(b"\x16\x03\x01\xff\xff random bytes \x00\x13\x37\r\n\r\n").unwrap();
    drop(junk);
    wait_for("the random bytes' refusal logged with the peer", Duration::from_secs(15), || refusals(&service.text()) > before);
    // Over TLS the API still sees the peer: a wrong token is refused and logged with it.
    let wrong = root.join("wrong-token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let refused = failed(client(&url, &wrong, Some(&ca), &["jobs"], root));
    assert!(refused.contains(&format!("{url}: HTTP 401")), "{refused}");
    wait_for("the token refusal logged with the peer", Duration::from_secs(5), || {
        service.text().contains("[service] refused GET /v1/jobs from 127.0.0.1:")
    });

    // The service keeps answering: a pool worker over https trains a submitted job to its end,
    // and the per-job routes answer over https too.
    let mut worker = Command::new(bin());
    worker.args(["worker", "--name", "w0"]).env("TESSERA_COORDINATOR", &url).env("TESSERA_TOKEN_FILE", &token).env("TESSERA_CA_FILE", &ca);
    worker.env("HTTPS_PROXY", "http://127.0.0.1:9").env("https_proxy", "http://127.0.0.1:9");
    let _worker = Proc::spawn(worker, &root.join("w0.log"));
    let job_dir = root.join("job");
    std::fs::create_dir_all(&job_dir).unwrap();
    let job = write_job(&job_dir, 4, "");
    assert_eq!(ok(client(&url, &token, Some(&ca), &["submit", &job], root)).trim(), "job-1");
    ok(client(&url, &token, Some(&ca), &["wait", "job-1", "--timeout-s", "120"], root));
    let status: serde_json::Value = serde_json::from_str(&ok(client(&url, &token, Some(&ca), &["status", "1", "--json"], root))).unwrap();
    assert_eq!((status["state"].as_str(), status["step"].as_u64()), (Some("Finished"), Some(4)), "{status}");
    assert_eq!(log_lines(&job_dir).len(), 4, "every step trained once");
    assert!(!service.text().contains("refused POST"), "no token refusal of the real clients: {}", service.text());

    // The silent peer is dropped at the handshake limit (10 s after it connected), and logged.
    silent.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    assert_eq!(silent.read(&mut [0u8; 1]).expect("closed by the service, not timed out"), 0);
    wait_for("the silent peer's refusal", Duration::from_secs(5), || {
        service.text().lines().any(|l| l.contains("refused a connection from 127.0.0.1:") && l.ends_with("no TLS handshake within 10 s"))
    });

    // A second coordinator on the same state waits for it, answering 503 over TLS meanwhile.
    let standby_addr = root.join("standby-addr");
    let mut standby = coordinator(&state, &cert, &key, &standby_addr);
    standby.arg("--standby");
    let _standby = Proc::spawn(standby, &root.join("standby.log"));
    let standby_url = url_of(&standby_addr);
    let busy = failed(client(&standby_url, &token, Some(&ca), &["jobs"], root));
    assert!(busy.contains("HTTP 503") && busy.contains("does not hold the job store"), "{busy}");
}

#[test]
fn bad_tls_files_stop_the_coordinator_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    make_ca(root, "cluster");
    let other = make_ca(root, "other");
    let (cert, key) = make_server_cert(root, "cluster");
    let state = root.join("state");
    let addr_file = root.join("addr");
    let start = |cert: &Path, key: &Path| failed(run_bounded(coordinator(&state, cert, key, &addr_file), root, Duration::from_secs(60)));

    let missing = root.join("missing.pem");
    let err = start(&missing, &key);
    assert!(err.contains(&format!("{}: the certificate chain: ", missing.display())), "{err}");
    let junk = root.join("junk.pem");
    std::fs::write(&junk, "-----BEGIN PRIVATE KEY-----\nnot base64 at all!\n-----END PRIVATE KEY-----\n").unwrap();
    let err = start(&cert, &junk);
    assert!(err.contains(&format!("{}: the private key: ", junk.display())), "{err}");
    // The other CA's key does not go with the server's certificate.
    let err = start(&cert, &other.with_extension("key"));
    assert!(err.contains(&format!("{} (the key of {})", other.with_extension("key").display(), cert.display())), "{err}");
    assert!(!addr_file.exists(), "nothing was served");

    let mut half = Command::new(bin());
    half.args(["coordinator", "--listen", "127.0.0.1:0", "--state-dir", state.to_str().unwrap(), "--tls-cert", cert.to_str().unwrap()]);
    let err = failed(run_bounded(half, root, Duration::from_secs(60)));
    assert!(err.contains("--tls-key"), "{err}");
}
