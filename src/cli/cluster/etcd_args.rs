//! The etcd options `tessera coordinator` and `tessera worker` share: where etcd is, the
//! cluster's key prefix, and the TLS and user options of a secured etcd. The files are read
//! here, so that one that cannot be read is named with its flag.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use tessera_coordinator::store::EtcdAccess;

/// Where etcd is and how to reach it.
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd v3 client URLs, comma-separated (`https://` with the TLS files below): the
    /// coordinator keeps its durable state there; a pool worker registers there under a lease.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Key prefix of this cluster in etcd.
    #[arg(long, default_value = "/tessera")]
    pub etcd_prefix: String,
    /// PEM file of the CA that signed etcd's server certificate (for https:// URLs).
    #[arg(long)]
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM certificate this client presents to an etcd that checks client certificates.
    #[arg(long, requires_all = ["etcd_key_file", "etcd_ca_file"])]
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM private key of --etcd-cert-file.
    #[arg(long, requires = "etcd_cert_file")]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd user, for an etcd with authentication enabled.
    #[arg(long, requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// File holding --etcd-user's password (one line).
    #[arg(long, requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
}

/// The contents of `path`, given as `flag`.
fn read(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))
}

impl EtcdArgs {
    /// The TLS and user options, their files read; refuses TLS files with `http://` URLs and
    /// `https://` URLs without a CA.
    pub fn access(&self) -> anyhow::Result<EtcdAccess> {
        let tls_files = self.etcd_ca_file.is_some() || self.etcd_cert_file.is_some();
        for url in &self.etcd {
            let https = url.starts_with("https://");
            if tls_files && !https {
                bail!("--etcd {url}: the TLS files (--etcd-ca-file, --etcd-cert-file) need https:// URLs");
            }
            if https && self.etcd_ca_file.is_none() {
                bail!("--etcd {url}: give --etcd-ca-file, the CA that signed etcd's certificate");
            }
        }
        let ca_pem = self.etcd_ca_file.as_deref().map(|p| read("--etcd-ca-file", p)).transpose()?;
        let identity = match (&self.etcd_cert_file, &self.etcd_key_file) {
            (Some(cert), Some(key)) => Some((read("--etcd-cert-file", cert)?, read("--etcd-key-file", key)?)),
            _ => None,
        };
        let user = match (&self.etcd_user, &self.etcd_password_file) {
            (Some(name), Some(file)) => {
                let text = String::from_utf8(read("--etcd-password-file", file)?)
                    .with_context(|| format!("--etcd-password-file {}: not UTF-8 text", file.display()))?;
                let password = text.trim_end_matches(['\n', '\r']).to_string();
                if password.is_empty() {
                    bail!("--etcd-password-file {}: the file is empty", file.display());
                }
                Some((name.clone(), password))
            }
            _ => None,
        };
        Ok(EtcdAccess { ca_pem, identity, user })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdArgs,
    }

    fn parse(args: &[&str]) -> Result<EtcdArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|c| c.etcd)
    }

    #[test]
    fn files_are_read_and_a_missing_one_is_named_with_its_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let (ca, cert, key, pw) = (file("ca.pem", "CA"), file("c.pem", "CERT"), file("k.pem", "KEY"), file("pw", "s3cret\n"));
        let a = parse(&["--etcd", "https://10.0.0.9:2379", "--etcd-ca-file", &ca, "--etcd-cert-file", &cert, "--etcd-key-file", &key])
            .unwrap()
            .access()
            .unwrap();
        assert_eq!((a.ca_pem.as_deref(), a.identity), (Some(&b"CA"[..]), Some((b"CERT".to_vec(), b"KEY".to_vec()))));
        let a = parse(&["--etcd", "http://e:2379", "--etcd-user", "root", "--etcd-password-file", &pw]).unwrap().access().unwrap();
        assert_eq!(a.user, Some(("root".to_string(), "s3cret".to_string())), "the line end is not part of the password");

        let missing = dir.path().join("nope.pem").display().to_string();
        let e = parse(&["--etcd", "https://e:2379", "--etcd-ca-file", &missing]).unwrap().access().unwrap_err();
        assert!(format!("{e:#}").starts_with(&format!("--etcd-ca-file {missing}: cannot read it")), "{e:#}");
        let e = parse(&["--etcd", "http://e:2379", "--etcd-user", "u", "--etcd-password-file", &missing]).unwrap().access().unwrap_err();
        assert!(format!("{e:#}").starts_with(&format!("--etcd-password-file {missing}")), "{e:#}");
    }

    #[test]
    fn tls_needs_https_urls_and_a_ca_and_half_given_pairs_are_refused() {
        let e = parse(&["--etcd", "http://e:2379", "--etcd-ca-file", "/x"]).unwrap().access().unwrap_err();
        assert!(e.to_string().contains("need https:// URLs"), "{e}");
        let e = parse(&["--etcd", "https://e:2379"]).unwrap().access().unwrap_err();
        assert!(e.to_string().contains("give --etcd-ca-file"), "{e}");
        for half in [&["--etcd-cert-file", "/c"][..], &["--etcd-key-file", "/k"], &["--etcd-user", "u"], &["--etcd-password-file", "/p"]] {
            assert!(parse(half).is_err(), "{half:?} alone is refused");
        }
    }
}
