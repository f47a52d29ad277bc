//! Certificates for tests of TLS, made by the `openssl` command-line tool: a CA, and a server
//! certificate for `IP:127.0.0.1` that it signed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `openssl ARGS` (split at spaces) in `dir`.
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("the openssl tool (scripts/setup.sh installs it)");
    assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A new P-256 key, unencrypted (`openssl req` arguments).
const EC_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

/// A self-signed CA `NAME.pem` with its key `NAME.key` in `dir` (P-256, 2 days).
pub fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let cnf = format!(
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ca\n[dn]\nCN = tessera test CA {name}\n\
         [ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n"
    );
    std::fs::write(dir.join(format!("{name}.cnf")), cnf).unwrap();
    openssl(dir, &format!("req -x509 -config {name}.cnf {EC_KEY} -keyout {name}.key -out {name}.pem -days 2"));
    dir.join(format!("{name}.pem"))
}

/// A server certificate for `IP:127.0.0.1` signed by CA `ca` (made by [`make_ca`]): the
/// certificate and key files.
pub fn make_server_cert(dir: &Path, ca: &str) -> (PathBuf, PathBuf) {
    std::fs::write(dir.join("server.cnf"), "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = 127.0.0.1\n").unwrap();
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
         extendedKeyUsage = serverAuth\nauthorityKeyIdentifier = keyid\n",
    )
    .unwrap();
    openssl(dir, &format!("req -new -config server.cnf {EC_KEY} -keyout server.key -out server.csr"));
    openssl(
        dir,
        &format!("x509 -req -in server.csr -CA {ca}.pem -CAkey {ca}.key -set_serial 2 -days 2 -extfile server.ext -out server.pem"),
    );
    (dir.join("server.pem"), dir.join("server.key"))
}
