//! A fault-injecting HTTP proxy in front of a registry, on loopback, with rules per test.
//!
//! It listens twice: `main` (127.0.0.1), the address the client is given as the registry, and
//! `other` (127.0.0.2), a second host the rules can point redirects and `Location`s at, so
//! that tests can check that nothing meant for the registry's host is sent there. Both forward
//! to the same registry, one request per connection (`Connection: close` both ways).
//! Every request is recorded (listener, method, path, status, headers that matter).

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::http1::{is_chunked, read_body, read_chunked_body, read_head, respond};

/// What a rule does to the requests it matches.
#[derive(Clone, Debug)]
pub enum Action {
    /// Answer this instead of forwarding (the body is read first, as a server would).
    Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Read this many body bytes, then reset the connection (TCP RST).
    ResetAfter(u64),
    /// A body above `max` bytes is answered `status` (413, or GHCR's 416), not forwarded.
    CapBody { max: u64, status: u16 },
    /// Forward, but turn a 202 answer into 201 (ECR's PATCH).
    Created202As201,
    /// Forward, making an absolute `Location` relative (path and query only).
    RelativeLocation,
    /// Forward, pointing an absolute or relative `Location` at the `other` listener.
    LocationToOther,
    /// Answer 307 to the same path and query on the `other` listener.
    RedirectToOther,
    /// Forward, add this header to the answer.
    AddResponseHeader(String, String),
    /// Forward, then wait this long before answering (a slow commit).
    DelayResponse(Duration),
    /// Wait this long before forwarding.
    DelayRequest(Duration),
    /// Forward (the registry acts on it), then answer this instead of what it said.
    ReplaceAnswer { status: u16, body: String },
    /// Without this Basic user:password, answer 401 with a Basic challenge.
    RequireBasic { user: String, password: String },
}

/// Which requests a rule applies to.
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: Option<&'static str>,
    /// A substring of the path and query.
    pub contains: Option<String>,
    /// Only on this listener ("main" or "other"); `None`: both.
    pub listener: Option<&'static str>,
    /// Apply to the matching requests numbered `skip`… (from 0), at most `times` of them.
    pub skip: usize,
    pub times: usize,
    pub action: Action,
    seen: Arc<AtomicUsize>,
}

impl Rule {
    /// A rule for every request with this method (and path substring), on either listener.
    pub fn new(method: Option<&'static str>, contains: Option<&str>, action: Action) -> Self {
        Rule {
            method,
            contains: contains.map(str::to_string),
            listener: None,
            skip: 0,
            times: usize::MAX,
            action,
            seen: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Only the `times` matching requests after the first `skip`.
    pub fn window(mut self, skip: usize, times: usize) -> Self {
        self.skip = skip;
        self.times = times;
        self
    }

    pub fn on(mut self, listener: &'static str) -> Self {
        self.listener = Some(listener);
        self
    }

    fn applies(&self, listener: &str, method: &str, target: &str, length: u64) -> bool {
        if self.method.is_some_and(|m| m != method)
            || self.listener.is_some_and(|l| l != listener)
            || self
                .contains
                .as_deref()
                .is_some_and(|c| !target.contains(c))
        {
            return false;
        }
        // A body cap only counts requests it refuses.
        if let Action::CapBody { max, .. } = self.action {
            if length <= max {
                return false;
            }
        }
        let n = self.seen.fetch_add(1, Ordering::SeqCst);
        n >= self.skip && n - self.skip < self.times
    }
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub listener: &'static str,
    pub method: String,
    pub target: String,
    /// The status sent back; 0 for a reset.
    pub status: u16,
    pub authorization: Option<String>,
    pub content_length: u64,
    pub content_range: Option<String>,
    /// When its head arrived.
    pub at: Instant,
}

struct Shared {
    upstream: String,
    main: String,
    other: String,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
}

pub struct FaultProxy {
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Starts a proxy for the registry at `upstream` (`127.0.0.1:port`, plain HTTP).
    pub fn start(upstream: &str, rules: Vec<Rule>) -> FaultProxy {
        let main = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let other = TcpListener::bind("127.0.0.2:0").expect("binding the proxy's other host");
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            main: main.local_addr().unwrap().to_string(),
            other: other.local_addr().unwrap().to_string(),
            rules: Mutex::new(rules),
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        for (listener, name) in [(main, "main"), (other, "other")] {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        let _ = serve(&shared, name, stream);
                    });
                }
            });
        }
        FaultProxy { shared }
    }

    /// The address to give the client as the registry (`127.0.0.1:port`).
    pub fn addr(&self) -> &str {
        &self.shared.main
    }

    pub fn other_addr(&self) -> &str {
        &self.shared.other
    }

    pub fn set_rules(&self, rules: Vec<Rule>) {
        *self.shared.rules.lock().unwrap() = rules;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The log as lines, for assertion messages.
    pub fn log(&self) -> String {
        self.seen()
            .iter()
            .map(|s| {
                format!(
                    "{} {} {} -> {} (len {}{})",
                    s.listener,
                    s.method,
                    s.target,
                    s.status,
                    s.content_length,
                    s.content_range
                        .as_ref()
                        .map(|r| format!(", range {r}"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake both accept loops so that they see the flag.
        let _ = TcpStream::connect(&self.shared.main);
        let _ = TcpStream::connect(&self.shared.other);
    }
}

fn serve(shared: &Shared, listener: &'static str, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut client = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let Some(mut head) = read_head(&mut reader)? else {
        return Ok(());
    };
    let at = Instant::now();
    let (method, target) = head.method_and_target();
    // A chunked body (docker push's) is read whole first and forwarded with a Content-Length:
    // rules see its length, and the registry one plain body.
    let mut reader: Box<dyn Read + Send> = if is_chunked(&head) {
        let body = read_chunked_body(&mut reader)?;
        head.remove_header("Transfer-Encoding");
        head.set_header("Content-Length", &body.len().to_string());
        Box::new(std::io::Cursor::new(body))
    } else {
        Box::new(reader)
    };
    let length = head.content_length();
    let rules: Vec<Rule> = {
        let rules = shared.rules.lock().unwrap();
        rules
            .iter()
            .filter(|r| r.applies(listener, &method, &target, length))
            .cloned()
            .collect()
    };
    let mut seen = Seen {
        listener,
        method: method.clone(),
        target: target.clone(),
        status: 0,
        authorization: head.header("authorization").map(str::to_string),
        content_length: length,
        content_range: head.header("content-range").map(str::to_string),
        at,
    };
    let record = |seen: Seen| shared.seen.lock().unwrap().push(seen);

    // Before forwarding: refusals, resets, waits.
    for rule in &rules {
        match &rule.action {
            Action::RequireBasic { user, password } => {
                let expected = format!(
                    "Basic {}",
                    base64_encode(format!("{user}:{password}").as_bytes())
                );
                if head.header("authorization") != Some(expected.as_str()) {
                    read_body(&mut reader, length)?;
                    seen.status = 401;
                    record(seen);
                    return respond(
                        &mut client,
                        401,
                        "Unauthorized",
                        &[("WWW-Authenticate", "Basic realm=\"fault-proxy\"".into())],
                        br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                    );
                }
            }
            Action::DelayRequest(d) => std::thread::sleep(*d),
            Action::Reply {
                status,
                headers,
                body,
            } => {
                read_body(&mut reader, length)?;
                seen.status = *status;
                record(seen);
                let headers: Vec<(&str, String)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.clone()))
                    .collect();
                return respond(&mut client, *status, "Fault", &headers, body.as_bytes());
            }
            Action::CapBody { status, .. } => {
                read_body(&mut reader, length)?;
                seen.status = *status;
                record(seen);
                let body = if *status == 413 {
                    r#"{"errors":[{"code":"SIZE_INVALID","message":"request body too large"}]}"#
                } else {
                    r#"{"errors":[{"code":"RANGE_INVALID","message":"chunk too large"}]}"#
                };
                return respond(&mut client, *status, "Refused", &[], body.as_bytes());
            }
            Action::ResetAfter(n) => {
                let _ = read_body(&mut reader, (*n).min(length));
                record(seen);
                reset(&client);
                return Ok(());
            }
            Action::RedirectToOther => {
                read_body(&mut reader, length)?;
                seen.status = 307;
                record(seen);
                return respond(
                    &mut client,
                    307,
                    "Temporary Redirect",
                    &[("Location", format!("http://{}{target}", shared.other))],
                    b"",
                );
            }
            _ => {}
        }
    }

    // Forward.
    let body = read_body(&mut reader, length)?;
    head.set_header("Connection", "close");
    let mut upstream = TcpStream::connect(&shared.upstream)?;
    upstream.write_all(&head.to_bytes())?;
    upstream.write_all(&body)?;
    let mut up_reader = BufReader::new(upstream.try_clone()?);
    let mut answer = read_head(&mut up_reader)?.expect("the registry answered");
    let mut answer_body = Vec::new();
    if method != "HEAD" && !matches!(answer.status(), 204 | 304) {
        up_reader.read_to_end(&mut answer_body)?;
    }
    let _ = upstream.shutdown(Shutdown::Both);

    // After: rewrite the answer.
    for rule in &rules {
        match &rule.action {
            Action::Created202As201 if answer.status() == 202 => answer.set_status(201, "Created"),
            Action::RelativeLocation => {
                if let Some(loc) = answer.header("location").map(str::to_string) {
                    if let Some(rest) = loc.split_once("://").map(|(_, r)| r) {
                        let path = &rest[rest.find('/').unwrap_or(rest.len())..];
                        answer.set_header("Location", path);
                    }
                }
            }
            Action::LocationToOther => {
                if let Some(loc) = answer.header("location").map(str::to_string) {
                    let path = match loc.split_once("://") {
                        Some((_, rest)) => rest[rest.find('/').unwrap_or(rest.len())..].to_string(),
                        None => loc,
                    };
                    answer.set_header("Location", &format!("http://{}{path}", shared.other));
                }
            }
            Action::AddResponseHeader(n, v) => answer.set_header(n, v),
            Action::ReplaceAnswer { status, body } => {
                answer.set_status(*status, "Replaced");
                answer.remove_header("Location");
                answer.remove_header("Docker-Content-Digest");
                answer.set_header("Content-Type", "application/json");
                answer_body = body.clone().into_bytes();
            }
            _ => {}
        }
    }
    if method != "HEAD" {
        answer.set_header("Content-Length", &answer_body.len().to_string());
    }
    answer.remove_header("Transfer-Encoding");
    answer.set_header("Connection", "close");
    seen.status = answer.status();
    record(seen);
    // Recorded first: the client may have given up waiting by the time this answer is sent.
    for rule in &rules {
        if let Action::DelayResponse(d) = &rule.action {
            std::thread::sleep(*d);
        }
    }
    client.write_all(&answer.to_bytes())?;
    client.write_all(&answer_body)?;
    client.flush()?;
    Ok(())
}

/// Closes with RST rather than FIN: the peer sees "connection reset".
fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    // Closed when the caller drops its handles: with a zero linger, close sends the RST.
}

pub fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
