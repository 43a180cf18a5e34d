//! Which certificates a connection trusts and presents: the system's roots plus Docker's
//! per-registry directory `<certs dir>/<host[:port]>/` (`*.crt`: extra CAs; `*.cert` with the
//! `*.key` of the same name: a client certificate), as the Docker engine reads
//! `/etc/docker/certs.d` and podman `/etc/containers/certs.d`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context, Result};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

/// Where registries' certificate directories are looked for when none are given: Docker's and
/// podman's.
pub const DEFAULT_CERTS_DIRS: [&str; 2] = ["/etc/docker/certs.d", "/etc/containers/certs.d"];

/// The TLS settings for one host. `authority` is `host[:port]` as Docker names the directory.
/// `insecure` accepts any certificate (Docker's insecure-registries, crane `--insecure`).
pub fn tls_config(authority: &str, certs_dirs: &[PathBuf], insecure: bool) -> Result<TlsConfig> {
    let mut roots: Vec<Certificate<'static>> = system_roots().to_vec();
    let mut client_cert = None;
    for dir in certs_dirs {
        let dir = dir.join(authority);
        if !dir.is_dir() {
            continue;
        }
        let (cas, client) = read_host_dir(&dir)?;
        roots.extend(cas);
        if client_cert.is_none() {
            client_cert = client;
        }
    }
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .client_cert(client_cert)
        .disable_verification(insecure)
        .build())
}

/// The system's trusted roots (Debian: /etc/ssl/certs), read once per process. A system with
/// none is not an error: certs.d CAs alone may be all a private registry needs.
fn system_roots() -> &'static [Certificate<'static>] {
    static ROOTS: OnceLock<Vec<Certificate<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        rustls_native_certs::load_native_certs()
            .certs
            .into_iter()
            .map(|der| Certificate::from_der(der.as_ref()).to_owned())
            .collect()
    })
}

/// One `<certs dir>/<host>` directory: its CA certificates, and its client certificate if any.
fn read_host_dir(dir: &Path) -> Result<(Vec<Certificate<'static>>, Option<ClientCert>)> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading certificate directory {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading certificate directory {}", dir.display()))?;
    names.sort();
    let mut cas = Vec::new();
    let mut client = None;
    for path in &names {
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => cas.extend(read_certs(path)?),
            Some("cert") => {
                let key_path = path.with_extension("key");
                if !key_path.exists() {
                    bail!(
                        "client certificate {} has no key {} beside it",
                        path.display(),
                        key_path.display()
                    );
                }
                if client.is_none() {
                    let chain = read_certs(path)?;
                    let key = read_key(&key_path)?;
                    client = Some(ClientCert::new_with_certs(&chain, key));
                }
            }
            Some("key") if !path.with_extension("cert").exists() => {
                bail!(
                    "client key {} has no certificate {} beside it",
                    path.display(),
                    path.with_extension("cert").display()
                );
            }
            _ => {}
        }
    }
    Ok((cas, client))
}

fn read_certs(path: &Path) -> Result<Vec<Certificate<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(c) =
            item.with_context(|| format!("parsing certificate file {}", path.display()))?
        {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKey<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::PrivateKey(k) =
            item.with_context(|| format!("parsing key file {}", path.display()))?
        {
            return Ok(k);
        }
    }
    bail!("{} holds no PEM private key", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_without_its_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("reg.example:5000");
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("client.key"), "not used").unwrap();
        let err = tls_config("reg.example:5000", &[dir.path().to_path_buf()], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no certificate"), "{err}");
        // Another host's directory is not read at all.
        assert!(tls_config("other:5000", &[dir.path().to_path_buf()], false).is_ok());
    }

    #[test]
    fn a_crt_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("reg.example");
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("ca.crt"), "garbage").unwrap();
        let err = tls_config("reg.example", &[dir.path().to_path_buf()], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
