//! Debian's `docker-registry` (distribution 2.8) started by a test, on 127.0.0.1, with its
//! storage and configuration in a private temporary directory, stopped when dropped; and
//! skopeo, as the independent consumer that reads pushed images back.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pki::Pki;
use super::token_server::{ISSUER, SERVICE};

/// How the registry wants to be logged in to.
pub enum Login<'a> {
    Anonymous,
    /// htpasswd (bcrypt) with one user.
    Htpasswd {
        user: &'a str,
        password: &'a str,
    },
    /// The `token` controller, trusting the token server's signing certificate.
    Token {
        realm: &'a str,
        signing_cert: &'a Path,
    },
}

pub struct Config<'a> {
    pub login: Login<'a>,
    /// Serve HTTPS with the PKI's server certificate.
    pub tls: Option<&'a Pki>,
    /// `http.relativeurls`: Locations without scheme and host.
    pub relative_urls: bool,
    /// With `tls`: accept only clients with a certificate from the PKI's CA.
    pub require_client_cert: bool,
    /// `storage.maintenance.readonly`: reads work, every upload is refused (405).
    pub readonly: bool,
}

impl Default for Config<'_> {
    fn default() -> Self {
        Config {
            login: Login::Anonymous,
            tls: None,
            relative_urls: false,
            require_client_cert: false,
            readonly: false,
        }
    }
}

pub struct RegistryServer {
    /// `127.0.0.1:port`.
    pub addr: String,
    child: Child,
    dir: tempfile::TempDir,
}

/// Whether the binaries a registry test needs are here; if not, [`super::skip`] is called
/// (which fails under CI) and `false` returned.
pub fn tools_present(names: &[&str]) -> bool {
    for name in names {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
            .unwrap_or(false);
        if !found {
            super::skip(&format!(
                "{name} is not installed (scripts/install-deps.sh installs it)"
            ));
            return false;
        }
    }
    true
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RegistryServer {
    /// Starts a registry. The port is found free just before; should another process take it
    /// first (the registry then exits), it is tried again on another.
    pub fn start(config: &Config<'_>) -> RegistryServer {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(config) {
                Ok(server) => return server,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    fn try_start(config: &Config<'_>) -> Result<RegistryServer, String> {
        let dir = tempfile::Builder::new()
            .prefix("oe-registry.")
            .tempdir()
            .unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  \
             filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    \
             readonly:\n      enabled: {}\nhttp:\n  addr: {addr}\n  secret: oe-test-secret\n  \
             relativeurls: {}\n",
            dir.path().join("data").display(),
            config.readonly,
            config.relative_urls
        );
        if let Some(pki) = config.tls {
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                pki.server_cert.display(),
                pki.server_key.display()
            ));
            if config.require_client_cert {
                yaml.push_str(&format!(
                    "    clientcas:\n      - {}\n",
                    pki.ca_cert.display()
                ));
            }
        }
        match &config.login {
            Login::Anonymous => {}
            Login::Htpasswd { user, password } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("running htpasswd");
                assert!(out.status.success(), "htpasswd failed");
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout).unwrap();
                yaml.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: oe-test\n    path: {}\n",
                    file.display()
                ));
            }
            Login::Token {
                realm,
                signing_cert,
            } => {
                yaml.push_str(&format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: \
                     {ISSUER}\n    rootcertbundle: {}\n",
                    signing_cert.display()
                ));
            }
        }
        let config_file = dir.path().join("config.yml");
        std::fs::write(&config_file, yaml).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let mut server = RegistryServer { addr, child, dir };
        server.wait_listening()?;
        Ok(server)
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "docker-registry exited ({status}):\n{}",
                    self.log()
                ));
            }
            if TcpStream::connect(&self.addr).is_ok() {
                // A registry that lost the port to someone else exits at once: make sure it
                // is ours that listens.
                std::thread::sleep(Duration::from_millis(50));
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Err(format!(
                        "docker-registry exited ({status}):\n{}",
                        self.log()
                    ));
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "docker-registry did not listen on {}:\n{}",
            self.addr,
            self.log()
        ))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The storage directory (to check what the registry holds, never to write).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A blob as the registry stores it, if it holds it (in any repository).
    pub fn stored_blob(&self, digest: &oci_export::digest::Digest) -> Option<Vec<u8>> {
        let hex = digest.hex();
        std::fs::read(
            self.storage()
                .join("docker/registry/v2/blobs/sha256")
                .join(&hex[..2])
                .join(&hex)
                .join("data"),
        )
        .ok()
    }

    /// Whether the registry holds anything of `repository` (a tag, a layer link, an upload).
    pub fn has_repository(&self, repository: &str) -> bool {
        self.storage()
            .join("docker/registry/v2/repositories")
            .join(repository)
            .exists()
    }

    /// Whether `repository:tag` exists, from the registry's storage (needs no credentials).
    pub fn has_tag(&self, repository: &str, tag: &str) -> bool {
        self.storage()
            .join("docker/registry/v2/repositories")
            .join(repository)
            .join("_manifests/tags")
            .join(tag)
            .exists()
    }

    /// Keeps the registry for the rest of the test binary (tests share it, each in
    /// repositories of its own). A static is never dropped, so it is stopped, and its
    /// directory removed, when the process exits.
    pub fn share(self) -> &'static RegistryServer {
        static AT_EXIT: std::sync::Once = std::sync::Once::new();
        AT_EXIT.call_once(|| {
            // SAFETY: registering a plain `extern "C"` function with no arguments.
            unsafe { libc::atexit(stop_shared_registries) };
        });
        SHARED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((self.child.id(), self.dir.path().to_path_buf()));
        Box::leak(Box::new(self))
    }
}

/// The shared registries' processes and directories, for [`stop_shared_registries`].
static SHARED: std::sync::Mutex<Vec<(u32, PathBuf)>> = std::sync::Mutex::new(Vec::new());

extern "C" fn stop_shared_registries() {
    let shared = std::mem::take(&mut *SHARED.lock().unwrap_or_else(|e| e.into_inner()));
    for (pid, dir) in shared {
        // SAFETY: signalling and reaping our own child by its pid.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
            libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A registry whose `token` controller trusts a token server of our own (a fresh PKI in `dir`),
/// which hands out tokens for `user`/`password` and the refresh token `refresh`.
pub fn token_registry(
    dir: &Path,
    user: &str,
    password: &str,
    refresh: &str,
) -> (super::token_server::TokenServer, RegistryServer) {
    let pki = super::pki::make(dir);
    let tokens = super::token_server::TokenServer::start(
        &pki.token_key,
        &pki.token_cert,
        user,
        password,
        refresh,
    );
    let realm = tokens.realm();
    let registry = RegistryServer::start(&Config {
        login: Login::Token {
            realm: &realm,
            signing_cert: &pki.token_cert,
        },
        ..Default::default()
    });
    (tokens, registry)
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How skopeo reaches a registry.
#[derive(Default, Clone)]
pub struct SkopeoAccess {
    /// A directory holding the CA (`ca.crt`), i.e. `<certs.d>/<host:port>`.
    pub cert_dir: Option<PathBuf>,
    pub creds: Option<String>,
    /// Plain HTTP (skopeo's `--tls-verify=false`).
    pub plain_http: bool,
}

impl SkopeoAccess {
    fn args(&self, prefix: &str) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(dir) = &self.cert_dir {
            args.push(format!("--{prefix}cert-dir={}", dir.display()));
        }
        if let Some(creds) = &self.creds {
            args.push(format!("--{prefix}creds={creds}"));
        }
        args.push(format!("--{prefix}tls-verify={}", !self.plain_http));
        args
    }
}

/// A skopeo command that reads no configuration of the machine's user.
fn skopeo(scratch: &Path) -> Command {
    let mut cmd = Command::new("skopeo");
    let auth = scratch.join("skopeo-auth.json");
    if !auth.exists() {
        std::fs::write(&auth, "{}").unwrap();
    }
    cmd.env("REGISTRY_AUTH_FILE", &auth)
        .env("DOCKER_CONFIG", scratch)
        .env("HOME", scratch);
    cmd
}

/// `skopeo inspect --raw docker://<image>`: the manifest bytes as the registry serves them.
pub fn skopeo_inspect_raw(
    scratch: &Path,
    image: &str,
    access: &SkopeoAccess,
) -> Result<Vec<u8>, String> {
    let out = skopeo(scratch)
        .arg("inspect")
        .arg("--raw")
        .args(access.args(""))
        .arg(format!("docker://{image}"))
        .output()
        .expect("running skopeo");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `skopeo inspect docker://<image>`: skopeo's summary (it reads the manifest and the config).
pub fn skopeo_inspect(
    scratch: &Path,
    image: &str,
    access: &SkopeoAccess,
) -> Result<serde_json::Value, String> {
    let out = skopeo(scratch)
        .arg("inspect")
        .args(access.args(""))
        .arg(format!("docker://{image}"))
        .output()
        .expect("running skopeo");
    if out.status.success() {
        serde_json::from_slice(&out.stdout).map_err(|e| format!("skopeo inspect's output: {e}"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `skopeo copy docker://<image> dir:<dest>`: every blob fetched and checked against its digest.
pub fn skopeo_copy_to_dir(
    scratch: &Path,
    image: &str,
    access: &SkopeoAccess,
    dest: &Path,
) -> Result<(), String> {
    skopeo_copy(scratch, image, access, &format!("dir:{}", dest.display()))
}

/// `skopeo copy docker://<image> oci:<dest>`: an OCI layout (blobs/sha256/<hex>), every blob
/// checked against its digest.
pub fn skopeo_copy_to_oci(
    scratch: &Path,
    image: &str,
    access: &SkopeoAccess,
    dest: &Path,
) -> Result<(), String> {
    skopeo_copy(scratch, image, access, &format!("oci:{}", dest.display()))
}

fn skopeo_copy(
    scratch: &Path,
    image: &str,
    access: &SkopeoAccess,
    dest: &str,
) -> Result<(), String> {
    let out = skopeo(scratch)
        .arg("copy")
        .arg("--quiet")
        .args(access.args("src-"))
        .arg(format!("docker://{image}"))
        .arg(dest)
        .output()
        .expect("running skopeo");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
