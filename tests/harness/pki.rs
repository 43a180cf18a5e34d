//! Certificates of the tests' own, made with the openssl command: a CA and a server
//! certificate for 127.0.0.1 and localhost, and a self-signed token-signing certificate.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pki {
    pub ca_cert: PathBuf,
    /// A client certificate signed by the CA (extended key usage clientAuth).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub token_cert: PathBuf,
    pub token_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes everything in `dir` (EC P-256 keys: fast to make, accepted by Go and rustls).
pub fn make(dir: &Path) -> Pki {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=oci-export test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    let mut client = vec!["req"];
    client.extend(ec);
    client.extend([
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=oe-test-client",
    ]);
    openssl(dir, &client);
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.cert",
            "-days",
            "2",
            "-extfile",
            "client.ext",
        ],
    );
    let mut token = vec!["req", "-x509"];
    token.extend(ec);
    token.extend([
        "-keyout",
        "token.key",
        "-out",
        "token.crt",
        "-days",
        "2",
        "-subj",
        "/CN=oci-export test token signer",
    ]);
    openssl(dir, &token);
    Pki {
        ca_cert: dir.join("ca.crt"),
        client_cert: dir.join("client.cert"),
        client_key: dir.join("client.key"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        token_cert: dir.join("token.crt"),
        token_key: dir.join("token.key"),
    }
}

/// A certs.d-style directory (`<dir>/<host:port>/ca.crt`) trusting the CA for `authority`.
pub fn certs_dir(dir: &Path, authority: &str, ca_cert: &Path) -> PathBuf {
    let host_dir = dir.join(authority);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(ca_cert, host_dir.join("ca.crt")).unwrap();
    dir.to_path_buf()
}

/// Adds the client certificate and key to a certs.d host directory (`client.cert`,
/// `client.key`, as Docker and containers/image look for them).
pub fn add_client_cert(certs_dir: &Path, authority: &str, pki: &Pki) {
    let host_dir = certs_dir.join(authority);
    std::fs::copy(&pki.client_cert, host_dir.join("client.cert")).unwrap();
    std::fs::copy(&pki.client_key, host_dir.join("client.key")).unwrap();
}
