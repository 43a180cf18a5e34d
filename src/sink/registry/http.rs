//! Requests on the wire: one ureq agent per origin (each with that host's TLS settings), bodies
//! streamed from their source, redirects followed by hand, and registry error bodies decoded.
//!
//! ureq's own redirect handling is off. We follow redirects ourselves so that the rule "a
//! credential goes only to the origin it belongs to" is enforced in one place ([`Session::send`]):
//! the `Authorization` header is computed per hop, for the hop's origin, and a redirect or an
//! absolute `Location` to another host gets none.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use ureq::http::{HeaderMap, Method};
use ureq::Agent;

use super::auth::{Auth, Scopes};
use super::retry::{is_transient_status, parse_retry_after};
use super::secret::Secret;
use super::tls::tls_config;
use super::url::{Origin, Scheme, Target};
use super::BlobSource;

/// Redirect hops followed for one request (the same as Go's net/http).
const MAX_REDIRECTS: usize = 10;
/// The most of a response body we read: registry answers are small JSON documents.
const MAX_RESPONSE_BODY: u64 = 1 << 20;

/// Timeouts for one connection. A stalled read or write fails; a slow but moving upload does
/// not (there is deliberately no limit on a whole request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// The longest silence while waiting for or reading an answer. A registry may think for
    /// several seconds before answering a blob's commit (GHCR: 5-11 s).
    pub read: Duration,
    /// The longest a single write of a request body may block.
    pub write: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            read: Duration::from_secs(300),
            write: Duration::from_secs(300),
        }
    }
}

/// A request body. Bodies are described, not held, so that a request can be sent again (after a
/// 401, a redirect or a retry) by reading its source again.
pub(crate) enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// `len` bytes of a blob from `offset`; `progress` hears the blob offset reached.
    Blob {
        source: &'a dyn BlobSource,
        offset: u64,
        len: u64,
        progress: &'a dyn Fn(u64),
    },
    /// A body of unknown length, sent once with chunked transfer encoding: a blob read while it
    /// is made. It cannot be sent again (after a 401 or a redirect the request fails instead).
    Stream(&'a std::sync::Mutex<Option<Box<dyn Read + Send>>>),
}

impl Body<'_> {
    fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::Blob { len, .. } => *len,
            Body::Stream(_) => 0,
        }
    }
}

/// An answer, whatever its status.
pub(crate) struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The URL that answered (after redirects): `Location`s are resolved against it.
    pub target: Target,
    pub method: &'static str,
    /// For a 401 the registry still gave after we answered its challenge: whose login it
    /// refused (or that there was none), since a HEAD's 401 has no body to say so.
    pub refused_login: Option<String>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn header_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .get_all(name)
            .into_iter()
            .filter_map(|v| v.to_str().ok())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The registry's error codes (`{"errors":[{"code":…}]}`, distribution-spec "Error Codes").
    pub fn error_codes(&self) -> Vec<String> {
        parse_errors(&self.body)
            .into_iter()
            .map(|(c, _)| c)
            .collect()
    }

    pub fn has_error_code(&self, code: &str) -> bool {
        self.error_codes().iter().any(|c| c == code)
    }

    /// How long the registry asks us to wait (`Retry-After`), if it says.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    }

    /// This answer as a failure (for statuses the caller did not expect).
    pub fn into_failure(self) -> Failure {
        let retry_after = self.retry_after();
        Failure::Answer(Box::new(Answer {
            status: self.status,
            errors: parse_errors(&self.body),
            text: body_snippet(&self.body),
            retry_after,
            method: self.method,
            target: self.target,
            refused_login: self.refused_login,
        }))
    }
}

/// A registry's answer we did not want, kept for the error message and the retry decision.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub errors: Vec<(String, String)>,
    /// The start of a non-JSON body (a proxy's HTML page), when there are no error codes.
    pub text: String,
    pub retry_after: Option<Duration>,
    pub method: &'static str,
    pub target: Target,
    pub refused_login: Option<String>,
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = ureq::http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        write!(
            f,
            "{} {} answered {} {reason}",
            self.method, self.target, self.status
        )?;
        if !self.errors.is_empty() {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(code, msg)| {
                    if msg.is_empty() {
                        code.clone()
                    } else {
                        format!("{code}: {msg}")
                    }
                })
                .collect();
            write!(f, " ({})", list.join("; "))?;
        } else if !self.text.is_empty() {
            write!(f, " ({})", self.text)?;
        }
        if let Some(login) = &self.refused_login {
            write!(f, ": {login}")?;
        }
        Ok(())
    }
}

/// Why a request did not get an answer.
#[derive(Debug)]
pub(crate) struct TransportError {
    pub message: String,
    pub kind: TransportErrorKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TransportErrorKind {
    /// Connection refused or reset, a timeout, a garbled answer: worth another try.
    Transient,
    /// The server's certificate was not trusted.
    Certificate,
    /// Anything else that another try will not change (an unknown host, a bad URL).
    Fatal,
    /// Our own blob source failed to read: never retried, never the registry's fault.
    Source,
}

/// Why an operation failed: no answer, or an answer we did not want.
#[derive(Debug)]
pub(crate) enum Failure {
    Transport(TransportError),
    /// Boxed: the answer is large, and failures travel through every `Result` here.
    Answer(Box<Answer>),
    /// Anything else (a malformed answer, a policy refusal), already worded.
    Other(anyhow::Error),
}

impl Failure {
    pub fn is_transient(&self) -> bool {
        match self {
            Failure::Transport(t) => t.kind == TransportErrorKind::Transient,
            Failure::Answer(a) => is_transient_status(a.status),
            Failure::Other(_) => false,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Answer(a) => a.retry_after,
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Failure::Answer(a) => Some(a.status),
            _ => None,
        }
    }

    pub fn other(message: impl fmt::Display) -> Failure {
        Failure::Other(anyhow::anyhow!("{message}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Transport(t) => f.write_str(&t.message),
            Failure::Answer(a) => a.fmt(f),
            Failure::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for Failure {}

/// One agent per origin, created on first use with the TLS settings for that host.
pub(crate) struct Transport {
    agents: Mutex<HashMap<Origin, Agent>>,
    certs_dirs: Vec<PathBuf>,
    insecure: bool,
    timeouts: Timeouts,
}

impl Transport {
    pub fn new(certs_dirs: Vec<PathBuf>, insecure: bool, timeouts: Timeouts) -> Self {
        Transport {
            agents: Mutex::new(HashMap::new()),
            certs_dirs,
            insecure,
            timeouts,
        }
    }

    fn agent(&self, origin: &Origin) -> Result<Agent, Failure> {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(agent) = agents.get(origin) {
            return Ok(agent.clone());
        }
        let mut config = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(self.timeouts.connect))
            .timeout_per_read(Some(self.timeouts.read))
            .timeout_per_write(Some(self.timeouts.write))
            .user_agent(concat!("oci-export/", env!("CARGO_PKG_VERSION")))
            // Uploads run in parallel to one registry: keep a connection for each.
            .max_idle_connections_per_host(16);
        if origin.scheme == Scheme::Https {
            let tls = tls_config(&origin.authority(), &self.certs_dirs, self.insecure)
                .map_err(Failure::Other)?;
            config = config.tls_config(tls);
        }
        let agent: Agent = config.build().into();
        agents.insert(origin.clone(), agent.clone());
        Ok(agent)
    }

    /// Sends one request and reads its answer; no redirect is followed, no retry made.
    pub fn execute(
        &self,
        method: &'static str,
        target: &Target,
        headers: &[(&'static str, String)],
        authorization: Option<&Secret>,
        body: &Body<'_>,
    ) -> Result<Response, Failure> {
        let agent = self.agent(&target.origin)?;
        let mut builder = ureq::http::Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("a valid method"))
            .uri(target.url());
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        if let Some(secret) = authorization {
            builder = builder.header("authorization", secret.expose());
        }
        if matches!(method, "PUT" | "PATCH" | "POST") && !matches!(body, Body::Stream(_)) {
            builder = builder.header("content-length", body.len().to_string());
        }
        let mut source_error = None;
        let result = match body {
            Body::Empty => agent.run(builder.body(()).map_err(bad_request)?),
            Body::Stream(once) => {
                let reader = once
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .ok_or_else(|| Failure::other("a streamed body cannot be sent twice"))?;
                let mut reader = reader;
                let send = ureq::SendBody::from_reader(&mut reader);
                agent.run(builder.body(send).map_err(bad_request)?)
            }
            Body::Bytes(bytes) => agent.run(builder.body(*bytes).map_err(bad_request)?),
            Body::Blob {
                source,
                offset,
                len,
                progress,
            } => {
                let reader = source.read_from(*offset).map_err(|e| {
                    Failure::Transport(TransportError {
                        message: format!(
                            "reading blob {} at offset {offset}: {e}",
                            source.digest()
                        ),
                        kind: TransportErrorKind::Source,
                    })
                })?;
                let mut tracked = TrackedReader {
                    inner: reader.take(*len),
                    position: *offset,
                    progress: *progress,
                    error: &mut source_error,
                };
                let send = ureq::SendBody::from_reader(&mut tracked);
                agent.run(builder.body(send).map_err(bad_request)?)
            }
        };
        if let Some(e) = source_error {
            return Err(Failure::Transport(TransportError {
                message: format!("reading the blob to upload: {e}"),
                kind: TransportErrorKind::Source,
            }));
        }
        let response = result.map_err(|e| Failure::Transport(classify(e, method, target)))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            response
                .into_body()
                .with_config()
                .limit(MAX_RESPONSE_BODY)
                .read_to_vec()
                .map_err(|e| Failure::Transport(classify(e, method, target)))?
        };
        Ok(Response {
            status,
            headers,
            body,
            target: target.clone(),
            method,
            refused_login: None,
        })
    }
}

fn bad_request(e: ureq::http::Error) -> Failure {
    Failure::other(format!("building the request: {e}"))
}

/// Sorts a ureq error into what the retry logic needs to know.
fn classify(e: ureq::Error, method: &str, target: &Target) -> TransportError {
    use TransportErrorKind::*;
    // rustls's handshake errors reach us directly or wrapped in the stream's io::Error.
    let tls_error = match &e {
        ureq::Error::Rustls(t) => Some(t),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    if let Some(rustls::Error::InvalidCertificate(c)) = tls_error {
        return TransportError {
            message: format!(
                "{method} {target}: the server's TLS certificate is not trusted ({c:?}); put \
                 the CA that signed it in <certs dir>/{}/ca.crt",
                target.origin.authority()
            ),
            kind: Certificate,
        };
    }
    let kind = match &e {
        ureq::Error::Io(_)
        | ureq::Error::Timeout(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::Protocol(_)
        | ureq::Error::Rustls(_) => Transient,
        _ => Fatal,
    };
    TransportError {
        message: format!("{method} {target}: {e}"),
        kind,
    }
}

/// Reads a blob for a request body, telling `progress` how far it got and keeping our own read
/// errors apart from the network's.
struct TrackedReader<'a, R> {
    inner: R,
    position: u64,
    progress: &'a dyn Fn(u64),
    error: &'a mut Option<std::io::Error>,
}

impl<R: Read> Read for TrackedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.position += n as u64;
                (self.progress)(self.position);
                Ok(n)
            }
            Err(e) => {
                let kind = e.kind();
                *self.error = Some(e);
                Err(std::io::Error::new(kind, "reading the blob failed"))
            }
        }
    }
}

/// A request to the registry, with the scopes its token needs.
pub(crate) struct Request<'a> {
    pub method: &'static str,
    pub target: Target,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body<'a>,
    pub scopes: &'a Scopes,
}

/// The registry's transport and auth state together: what every operation sends through.
pub(crate) struct Session {
    pub origin: Origin,
    pub transport: Transport,
    pub auth: Auth,
    pub insecure: bool,
    /// What a final 401 means for this login ([`Response::refused_login`]).
    pub refused_login: String,
    /// Until when the registry asked every client of ours to wait (a 429's `Retry-After`):
    /// each thread's next request waits, not only the one that was told.
    pub paused_until: Mutex<Option<Instant>>,
    /// The longest such pause: the retry policy's longest wait.
    pub max_pause: Duration,
}

impl Session {
    /// Waits out a pause the registry asked for, if one is running.
    fn wait_for_pause(&self) {
        let until = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(wait) = until.and_then(|u| u.checked_duration_since(Instant::now())) {
            std::thread::sleep(wait);
        }
    }

    /// Remembers a 429's `Retry-After`, for every request from now on.
    fn note_pause(&self, response: &Response) {
        if response.status != 429 {
            return;
        }
        let Some(wait) = response.retry_after() else {
            return;
        };
        let until = Instant::now() + wait.min(self.max_pause);
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    /// Sends `request`, authorizing each hop for its own origin only, answering one 401 with a
    /// fresh token (expired mid-push) and following redirects. The answer may be any status.
    pub fn send(&self, request: &Request<'_>) -> Result<Response, Failure> {
        self.wait_for_pause();
        let response = self.send_now(request)?;
        self.note_pause(&response);
        Ok(response)
    }

    fn send_now(&self, request: &Request<'_>) -> Result<Response, Failure> {
        let mut target = request.target.clone();
        let mut method = request.method;
        let mut body = &request.body;
        let empty = Body::Empty;
        let mut scopes = request.scopes.clone();
        let mut reauthorized = false;
        let mut hops = 0;
        loop {
            let ours = target.origin == self.origin;
            let authorization = if ours {
                self.auth.authorization(&self.transport, &scopes)?
            } else {
                None
            };
            let response = self.transport.execute(
                method,
                &target,
                &request.headers,
                authorization.as_ref(),
                body,
            )?;
            if response.status == 401 && ours {
                let retry = if reauthorized {
                    None
                } else {
                    reauthorized = true;
                    self.auth
                        .unauthorized(&response, &scopes, authorization.as_ref())
                };
                match retry {
                    Some(retry_scopes) => {
                        scopes = retry_scopes;
                        continue;
                    }
                    None => {
                        let mut response = response;
                        response.refused_login = Some(self.refused_login.clone());
                        return Ok(response);
                    }
                }
            }
            let Some(location) = redirect_location(&response, method) else {
                return Ok(response);
            };
            hops += 1;
            if hops > MAX_REDIRECTS {
                return Err(Failure::other(format!(
                    "{} {}: more than {MAX_REDIRECTS} redirects",
                    request.method, request.target
                )));
            }
            let next = target.resolve(location).map_err(Failure::Other)?;
            if target.origin.scheme == Scheme::Https
                && next.origin.scheme == Scheme::Http
                && !self.insecure
            {
                return Err(Failure::other(format!(
                    "{method} {target}: refusing a redirect from HTTPS to plain HTTP ({})",
                    next
                )));
            }
            if response.status == 303 {
                method = "GET";
                body = &empty;
            }
            target = next;
        }
    }
}

/// Where a redirect points, if this answer is one we follow: 307/308 for any method (same
/// method and body), 301/302 for GET and HEAD, 303 (turned into a GET).
fn redirect_location<'r>(response: &'r Response, method: &str) -> Option<&'r str> {
    let follow = match response.status {
        307 | 308 | 303 => true,
        301 | 302 => matches!(method, "GET" | "HEAD"),
        _ => false,
    };
    if follow {
        response.header("location")
    } else {
        None
    }
}

/// `{"errors":[{"code","message"}]}` → (code, message) pairs.
fn parse_errors(body: &[u8]) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    serde_json::from_slice::<Errors>(body)
        .map(|e| e.errors.into_iter().map(|e| (e.code, e.message)).collect())
        .unwrap_or_default()
}

/// The first line of a body that is not the registry's JSON, printable and short.
fn body_snippet(body: &[u8]) -> String {
    if !parse_errors(body).is_empty() {
        return String::new();
    }
    let text = String::from_utf8_lossy(body);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_decoded() {
        let body = br#"{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN","message":"blob upload unknown to registry","detail":{}}]}"#;
        assert_eq!(
            parse_errors(body),
            vec![(
                "BLOB_UPLOAD_UNKNOWN".to_string(),
                "blob upload unknown to registry".to_string()
            )]
        );
        assert_eq!(body_snippet(body), "");
        assert_eq!(
            body_snippet(b"\n<html>\x07Bad gateway</html>\n"),
            "<html>Bad gateway</html>"
        );
    }

    #[test]
    fn answers_read_as_one_sentence() {
        let target = Target::parse("http://127.0.0.1:5000/v2/a/blobs/uploads/u?_state=x").unwrap();
        let a = Answer {
            status: 404,
            errors: vec![("BLOB_UPLOAD_UNKNOWN".into(), "blob upload unknown".into())],
            text: String::new(),
            retry_after: None,
            method: "PUT",
            target,
            refused_login: None,
        };
        assert_eq!(
            a.to_string(),
            "PUT http://127.0.0.1:5000/v2/a/blobs/uploads/u answered 404 Not Found \
             (BLOB_UPLOAD_UNKNOWN: blob upload unknown)"
        );
    }
}
