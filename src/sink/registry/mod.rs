//! A registry as a sink: push blobs and manifests over the OCI distribution protocol.
//!
//! ```text
//!  Registry::connect(domain)          endpoint: HTTPS first, plain HTTP only for loopback or
//!     │                                         `insecure`; tls: system roots + certs.d
//!     │                               credentials: docker's config.json and helpers
//!     ▼
//!  Registry::repository(path) ──► blob_size (HEAD) · mount · upload · put_manifest
//!                                      │
//!                                 upload: POST, PUT (monolithic) or PATCH chunks, commit
//!                                 http:   one request, redirects, who gets `Authorization`
//!                                 auth:   Basic, Bearer tokens per scope set, 401 → new token
//!                                 retry:  backoff, Retry-After
//! ```
//!
//! The client is synchronous and meant to be shared: a [`Registry`] is `Sync`, and several
//! threads upload through one (connections are pooled per host, tokens cached per scope set).
//! The order of a push is the caller's: HEAD (or mount) each blob, upload what is missing, then
//! put the manifest last, once every blob is confirmed, so that a failed push never leaves a tag
//! pointing at an incomplete image.
//!
//! Secrets (passwords, identity tokens, bearer tokens) live in [`Secret`], whose `Debug` is
//! `<redacted>` and which has no `Display`: no error, log or Debug output of this module can
//! show one. They are sent only to the registry's own origin (and Basic credentials to the token
//! realm the registry names), never to another host a redirect or `Location` points at.
//!
//! HTTP is ureq 3: synchronous (our uploads are threads, not tasks), maintained, rustls for TLS
//! (no OpenSSL), request bodies streamed from a `Read` with the Content-Length we set, automatic
//! redirects switchable off, and per-read/per-write timeouts that catch a stalled connection
//! without limiting a long upload.

mod auth;
pub mod credentials;
mod endpoint;
mod http;
mod retry;
mod secret;
mod tls;
mod upload;
mod url;

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};

use crate::digest::Digest;
use auth::{parse_challenge, Auth, Scopes};
use http::{Body, Failure, Request, Response, Session, Transport};
use url::{encode_component, Target};

pub use credentials::{CredentialLookup, Credentials};
pub use http::Timeouts;
pub use retry::RetryPolicy;
pub use secret::Secret;
pub use tls::DEFAULT_CERTS_DIRS;
pub use upload::{Streamed, UploadOptions};

/// How to reach and log in to registries.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Allow plain HTTP to any host and accept any TLS certificate (`--insecure`). Without it,
    /// plain HTTP is used only for loopback registries that do not speak TLS.
    pub insecure: bool,
    /// Directories holding `<host[:port]>/ca.crt` (and client `*.cert`/`*.key`); default
    /// [`DEFAULT_CERTS_DIRS`] (`--certs-dir`).
    pub certs_dirs: Vec<PathBuf>,
    /// Docker's config directory (holding config.json); `None`: `$DOCKER_CONFIG`, else
    /// `$HOME/.docker`.
    pub docker_config_dir: Option<PathBuf>,
    /// Where `docker-credential-*` helpers are searched (`PATH` syntax); `None`: `$PATH`.
    pub credential_helper_path: Option<OsString>,
    /// Ignore any configured credentials.
    pub anonymous: bool,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    pub upload: UploadOptions,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure: false,
            certs_dirs: DEFAULT_CERTS_DIRS.iter().map(PathBuf::from).collect(),
            docker_config_dir: None,
            credential_helper_path: None,
            anonymous: false,
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            upload: UploadOptions::default(),
        }
    }
}

/// A blob to upload. In practice a finished file (a cached compressed layer, a containerd
/// content blob): its digest and size are known before the upload starts, and it can be read
/// again from any offset (a retry, a resumed chunk).
pub trait BlobSource: Sync {
    fn digest(&self) -> Digest;
    fn size(&self) -> u64;
    /// The blob's bytes from `offset` to its end.
    fn read_from(&self, offset: u64) -> std::io::Result<Box<dyn std::io::Read + Send + '_>>;
}

/// A blob held in memory (configs, small documents).
pub struct BytesBlob<'a> {
    bytes: &'a [u8],
    digest: Digest,
}

impl<'a> BytesBlob<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        BytesBlob {
            bytes,
            digest: Digest::of(bytes),
        }
    }
}

impl BlobSource for BytesBlob<'_> {
    fn digest(&self) -> Digest {
        self.digest
    }
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read_from(&self, offset: u64) -> std::io::Result<Box<dyn std::io::Read + Send + '_>> {
        let start = (offset as usize).min(self.bytes.len());
        Ok(Box::new(&self.bytes[start..]))
    }
}

/// A blob in a file, read with positioned reads (so that threads can share the handle).
pub struct FileBlob {
    file: std::fs::File,
    digest: Digest,
    size: u64,
}

impl FileBlob {
    /// `digest` and `size` are the caller's word (from a verified cache entry, a content store);
    /// the registry checks the digest when the upload is committed.
    pub fn new(file: std::fs::File, digest: Digest, size: u64) -> Self {
        FileBlob { file, digest, size }
    }
}

impl BlobSource for FileBlob {
    fn digest(&self) -> Digest {
        self.digest
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_from(&self, offset: u64) -> std::io::Result<Box<dyn std::io::Read + Send + '_>> {
        Ok(Box::new(PositionedReader {
            file: &self.file,
            offset,
            end: self.size,
        }))
    }
}

struct PositionedReader<'f> {
    file: &'f std::fs::File,
    offset: u64,
    end: u64,
}

impl std::io::Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = buf.len().min(self.end.saturating_sub(self.offset) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.offset)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the blob file ends at {} bytes, before its size",
                    self.offset
                ),
            ));
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// Where a registry's login came from (see [`Registry::login`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginSource {
    /// The config.json consulted (`None`: neither `DOCKER_CONFIG` nor `HOME` is set).
    pub config_file: Option<PathBuf>,
    /// Whether it exists.
    pub config_found: bool,
    /// `credHelpers (docker-credential-NAME)`, `credsStore (…)`, `auths` or `none`.
    pub source: String,
    /// The user name, if there are credentials (empty for an identity token from a helper).
    pub username: Option<String>,
}

/// One registry host: its endpoint, its TLS and its login, shared by every thread pushing to it.
pub struct Registry {
    domain: String,
    session: Session,
    credentials: CredentialLookup,
    retry: RetryPolicy,
    upload: UploadOptions,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("domain", &self.domain)
            .field("origin", &self.session.origin.to_string())
            .field("credentials", &self.credentials.source)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Finds the registry for `domain` (as in [`crate::reference::Reference::domain`]:
    /// `docker.io`, `host:port`, `[v6]:port`), decides HTTPS or plain HTTP, looks up the
    /// credentials and learns how the registry wants them (`GET /v2/`).
    pub fn connect(domain: &str, options: &ClientOptions) -> Result<Registry> {
        let credentials = if options.anonymous {
            CredentialLookup {
                config_file: None,
                config_found: false,
                source: "none (anonymous)".into(),
                credentials: None,
            }
        } else {
            let dir = credentials::config_dir(options.docker_config_dir.as_deref());
            credentials::lookup(
                domain,
                dir.as_deref(),
                options.credential_helper_path.as_deref(),
            )
            .with_context(|| format!("finding the credentials for {domain}"))?
        };
        let transport = Transport::new(
            options.certs_dirs.clone(),
            options.insecure,
            options.timeouts.clone(),
        );
        // The first contact is retried like any request: a reset or a timeout may pass.
        let mut failures = 0;
        let (origin, ping) = loop {
            match endpoint::discover(domain, &transport, options.insecure) {
                Ok(found) => break found,
                Err(e) => {
                    let transient = e
                        .downcast_ref::<endpoint::Unreachable>()
                        .is_some_and(|u| u.transient);
                    failures += 1;
                    if !transient || failures >= options.retry.attempts() {
                        return Err(e);
                    }
                    std::thread::sleep(options.retry.delay(failures, None));
                }
            }
        };
        let challenge = if ping.status == 401 {
            parse_challenge(ping.header_all("www-authenticate"))
        } else {
            auth::Challenge::None
        };
        let auth = Auth::new(credentials.credentials.clone(), challenge, options.insecure);
        Ok(Registry {
            domain: domain.to_string(),
            session: Session {
                paused_until: std::sync::Mutex::new(None),
                max_pause: options.retry.max_delay,
                origin,
                transport,
                auth,
                insecure: options.insecure,
                refused_login: refused_login(domain, &credentials),
            },
            credentials,
            retry: options.retry.clone(),
            upload: options.upload.clone(),
        })
    }

    /// The domain as given to [`Registry::connect`].
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Where the API is served (`https://host:port`).
    pub fn base_url(&self) -> String {
        self.session.origin.to_string()
    }

    /// Which config file was consulted and who supplied the credentials, for a message such
    /// as "credentials for ghcr.io from ~/.docker/config.json (credsStore …)" (under sudo
    /// that is root's file unless `DOCKER_CONFIG` says otherwise). Never the secrets.
    pub fn login(&self) -> LoginSource {
        LoginSource {
            config_file: self.credentials.config_file.clone(),
            config_found: self.credentials.config_found,
            source: self.credentials.source.clone(),
            username: self
                .credentials
                .credentials
                .as_ref()
                .map(|c| c.username().to_string()),
        }
    }

    pub fn repository(&self, path: &str) -> Repository<'_> {
        Repository {
            registry: self,
            path: path.to_string(),
            scopes: Scopes::push(path),
        }
    }

    /// Runs `op` until it succeeds, fails for cause, or the attempts run out.
    fn retrying<T>(
        &self,
        what: impl Fn() -> String,
        mut op: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T> {
        let mut failures = 0;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(f) => {
                    failures += 1;
                    if !f.is_transient() || failures >= self.retry.attempts() {
                        let attempts = if failures > 1 {
                            format!(" (after {failures} failed attempts)")
                        } else {
                            String::new()
                        };
                        return Err(anyhow!("{}: {f}{attempts}", what()));
                    }
                    std::thread::sleep(self.retry.delay(failures, f.retry_after()));
                }
            }
        }
    }
}

/// What a 401 the registry keeps answering means for this login, for the error message:
/// whose credentials it refused and where they came from, or that none were found (and
/// where they were looked for). Never the secret.
fn refused_login(domain: &str, lookup: &CredentialLookup) -> String {
    let config = match &lookup.config_file {
        Some(path) if lookup.config_found => path.display().to_string(),
        Some(path) => format!("{}, which does not exist", path.display()),
        None => "no docker config (neither DOCKER_CONFIG nor HOME is set)".to_string(),
    };
    match &lookup.credentials {
        Some(Credentials::Password { username, .. }) => format!(
            "the registry did not accept the login of {username:?} ({} in {config})",
            lookup.source
        ),
        Some(Credentials::IdentityToken { .. }) => format!(
            "the registry did not accept the identity token ({} in {config})",
            lookup.source
        ),
        None if lookup.config_file.is_none() && lookup.source.contains("anonymous") => {
            "no credentials were sent (anonymous)".to_string()
        }
        None => format!("no credentials for {domain} in {config}: docker login {domain}"),
    }
}

/// One repository (`team/app`) on a registry.
pub struct Repository<'a> {
    registry: &'a Registry,
    path: String,
    scopes: Scopes,
}

impl Repository<'_> {
    /// `domain/path`, for messages and for the caller's `name@digest` line.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry.domain, self.path)
    }

    fn target(&self, suffix: &str) -> Target {
        Target::new(
            &self.registry.session.origin,
            format!("/v2/{}{suffix}", self.path),
        )
    }

    fn send(&self, request: Request<'_>) -> Result<Response, Failure> {
        self.registry.session.send(&request)
    }

    /// The blob's size if the repository has it (`HEAD`), `None` if not.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.registry.retrying(
            || format!("asking {} for blob {digest}", self.name()),
            || self.blob_size_once(digest),
        )
    }

    fn blob_size_once(&self, digest: &Digest) -> Result<Option<u64>, Failure> {
        let response = self.send(Request {
            method: "HEAD",
            target: self.target(&format!("/blobs/{digest}")),
            headers: Vec::new(),
            body: Body::Empty,
            scopes: &self.scopes,
        })?;
        match response.status {
            200 => {
                let size = response
                    .header("content-length")
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| {
                        Failure::other(format!(
                            "HEAD {} answered 200 without a Content-Length",
                            response.target
                        ))
                    })?;
                Ok(Some(size))
            }
            404 => Ok(None),
            _ => Err(response.into_failure()),
        }
    }

    /// Asks the registry to link a blob it holds in repository `from` (same registry) into this
    /// one, without uploading it. `false` means "not mounted, upload it": the registry refused
    /// (202, starting an upload session, which is cancelled), answered 401, 403 or 404 (Harbor,
    /// for a source it cannot read), or failed in any other way — a mount is only a shortcut,
    /// and the upload that follows reports what is really wrong. A mount is never attempted
    /// without a source (Quay fails such requests), nor from the repository itself.
    pub fn mount(&self, digest: &Digest, from: &str) -> bool {
        self.try_mount(digest, from).unwrap_or(false)
    }

    fn try_mount(&self, digest: &Digest, from: &str) -> Result<bool> {
        if from.is_empty() || from == self.path {
            return Ok(false);
        }
        let scopes = self.scopes.with_pull(from);
        let target = self.target(&format!(
            "/blobs/uploads/?mount={}&from={}",
            encode_component(&digest.to_string()),
            encode_component(from)
        ));
        let response = self.registry.retrying(
            || format!("mounting blob {digest} from {from} into {}", self.name()),
            || {
                let response = self.send(Request {
                    method: "POST",
                    target: target.clone(),
                    headers: Vec::new(),
                    body: Body::Empty,
                    scopes: &scopes,
                })?;
                match response.status {
                    201 | 202 | 401 | 403 | 404 => Ok(response),
                    _ => Err(response.into_failure()),
                }
            },
        )?;
        if response.status == 202 {
            // Refused, and a session was opened for us: close it rather than leave it to expire.
            if let Ok(session) = upload::location_of(&response) {
                upload::abandon(self, &session);
            }
        }
        Ok(response.status == 201)
    }

    /// Uploads a blob (HEAD it first with [`Repository::blob_size`] if it may be there).
    /// `progress` hears how many of its bytes have been sent so far in the current attempt (it
    /// can go back when an upload starts over).
    pub fn upload(&self, blob: &dyn BlobSource, progress: &dyn Fn(u64)) -> Result<()> {
        upload::upload(self, blob, progress)
    }

    /// Uploads a blob while it is being made (see [`Streamed`]): `false` when that did not
    /// work out, and the finished blob is to be uploaded with [`Repository::upload`].
    pub fn upload_streamed(&self, streamed: Streamed) -> bool {
        upload::upload_streamed(self, streamed)
    }

    /// Whether a blob the repository holds is gzip or zstd, from its first bytes (a ranged
    /// `GET`): for blobs known only by digest (Docker's v2metadata records no media type), so
    /// that a manifest never names a zstd blob gzip. `None` when it is neither, or the registry
    /// cannot say (that blob is then simply not reused).
    pub fn blob_format(&self, digest: &Digest) -> Result<Option<crate::model::BlobCompression>> {
        use crate::model::BlobCompression;
        let response = self.send(Request {
            method: "GET",
            target: self.target(&format!("/blobs/{digest}")),
            headers: vec![("range", "bytes=0-3".to_string())],
            body: Body::Empty,
            scopes: &self.scopes,
        });
        let Ok(response) = response else {
            return Ok(None);
        };
        if !response.is_success() {
            return Ok(None);
        }
        Ok(match response.body.get(..4) {
            Some([0x1f, 0x8b, _, _]) => Some(BlobCompression::Gzip),
            Some([0x28, 0xb5, 0x2f, 0xfd]) => Some(BlobCompression::Zstd),
            _ => None,
        })
    }

    /// Puts a manifest under `reference` (a tag, or its own digest) with Content-Type
    /// `media_type`, and returns its digest (the SHA-256 of `body`, which the registry's
    /// `Docker-Content-Digest` must confirm when it sends one). Push it only after every blob
    /// it references is confirmed.
    pub fn put_manifest(&self, reference: &str, media_type: &str, body: &[u8]) -> Result<Digest> {
        let digest = Digest::of(body);
        let response = self.registry.retrying(
            || format!("putting manifest {digest} as {}:{reference}", self.name()),
            || {
                let response = self.send(Request {
                    method: "PUT",
                    target: self.target(&format!("/manifests/{reference}")),
                    headers: vec![("content-type", media_type.to_string())],
                    body: Body::Bytes(body),
                    scopes: &self.scopes,
                })?;
                if response.status == 201 || response.status == 200 {
                    Ok(response)
                } else {
                    Err(response.into_failure())
                }
            },
        )?;
        if let Some(theirs) = response.header("docker-content-digest") {
            if theirs.trim() != digest.to_string() {
                return Err(anyhow!(
                    "putting manifest {digest} as {}:{reference}: the registry stored it as {}",
                    self.name(),
                    theirs.trim()
                ));
            }
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_is_shared_between_threads() {
        fn assert_sync<T: Sync + Send>() {}
        assert_sync::<Registry>();
        assert_sync::<Repository<'_>>();
    }

    #[test]
    fn file_blobs_read_from_any_offset_and_stop_at_their_size() {
        use std::io::{Read, Write};
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"0123456789extra").unwrap();
        let blob = FileBlob::new(f, Digest::of(b"0123456789"), 10);
        let mut s = String::new();
        blob.read_from(4).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "456789");
        let short = FileBlob::new(tempfile::tempfile().unwrap(), Digest::of(b""), 3);
        let err = short
            .read_from(0)
            .unwrap()
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
