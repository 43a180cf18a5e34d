//! One blob's upload, as a state machine that survives what registries do to uploads.
//!
//! ```text
//!  POST …/blobs/uploads/ ──202 + Location──► PUT <location>?digest=  (monolithic, streamed)
//!        │                                        │ 413: the body is too large here
//!        │                                        ▼
//!        └─────────────────────────────► PATCH <location> (Content-Range: a-b, Content-Length)
//!                                           … one chunk at a time, 202 (or ECR's 201) + Location
//!                                        PUT <location>?digest=  (empty body: the commit)
//! ```
//!
//! - Monolithic is the default: one request, and the only way some registries (Google Artifact
//!   Registry) accept blobs. Chunks are used when the registry refuses a body as too large (413,
//!   or 416 on a first chunk, as GHCR answers above 4 MiB): the chunk size then shrinks (16, 4,
//!   1 MiB) but never below the registry's `OCI-Chunk-Min-Length` (ECR: 5 MB).
//! - A failure that may pass (reset, timeout, 408, 429, 5xx) is retried with backoff, within one
//!   budget of attempts per blob. A chunked upload resumes from the registry's `Range` (`GET
//!   <location>`); one whose session is gone starts over with a new one.
//! - Before any new start, a HEAD asks whether the blob landed after all: a commit that timed
//!   out, or a retried commit answered `BLOB_UPLOAD_UNKNOWN` though the blob is there
//!   (jib#4301), must not upload the blob again.
//! - The body is always streamed from the [`BlobSource`], never held in memory.

use anyhow::{anyhow, Result};

use super::http::{Body, Failure, Request, Response};
use super::url::Target;
use super::{BlobSource, Repository};

const MIB: u64 = 1 << 20;
/// The first chunk size once a registry has refused a monolithic body.
const FIRST_CHUNK: u64 = 16 * MIB;
/// Chunks never get smaller than this (unless the registry's minimum is larger).
const SMALLEST_CHUNK: u64 = MIB;

/// How blobs are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadOptions {
    /// Send chunks from the start instead of one monolithic PUT.
    pub chunked: bool,
    /// The chunk size when chunking (raised to the registry's `OCI-Chunk-Min-Length`).
    pub chunk_size: u64,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            chunked: false,
            chunk_size: FIRST_CHUNK,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Monolithic,
    Chunked(u64),
}

/// How one attempt (one upload session) ended.
enum Outcome {
    Done,
    /// The registry refused a request body as too large (on the first chunk, if chunked).
    TooLarge {
        failure: Failure,
        min_chunk: u64,
    },
    /// Worth starting over with a new session (after a HEAD).
    Retry(Failure),
    /// Starting over will not help.
    Fatal(Failure),
    /// The attempts ran out (already counted).
    Exhausted(Failure),
}

struct Upload<'r, 'a> {
    repo: &'r Repository<'a>,
    blob: &'r dyn BlobSource,
    progress: &'r dyn Fn(u64),
    failures: u32,
}

pub(crate) fn upload(
    repo: &Repository<'_>,
    blob: &dyn BlobSource,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let options = &repo.registry.upload;
    let mut mode = if options.chunked {
        Mode::Chunked(options.chunk_size.max(1))
    } else {
        Mode::Monolithic
    };
    let mut up = Upload {
        repo,
        blob,
        progress,
        failures: 0,
    };
    let failure = loop {
        let outcome = up.attempt(mode);
        match outcome {
            Outcome::Done => return Ok(()),
            Outcome::TooLarge { failure, min_chunk } => {
                // Each step sends a smaller body than the one refused, so this ends.
                let refused = match mode {
                    Mode::Monolithic => blob.size(),
                    Mode::Chunked(size) => size.min(blob.size()),
                };
                let next = [FIRST_CHUNK, FIRST_CHUNK / 4, SMALLEST_CHUNK]
                    .into_iter()
                    .find(|c| *c < refused)
                    .map(|c| c.max(min_chunk));
                match next {
                    Some(next) if next < refused => mode = Mode::Chunked(next),
                    _ => {
                        up.failures += 1;
                        break failure;
                    }
                }
            }
            Outcome::Fatal(failure) => {
                up.failures += 1;
                break failure;
            }
            Outcome::Exhausted(failure) => break failure,
            Outcome::Retry(failure) => {
                if !up.spend_attempt(&failure) {
                    break failure;
                }
                // Did it land after all (a commit that timed out, a session gone after commit)?
                if let Ok(Some(size)) = repo.blob_size_once(&blob.digest()) {
                    if size == blob.size() {
                        return Ok(());
                    }
                }
            }
        }
    };
    let attempts = if up.failures > 1 {
        format!(" (after {} failed attempts)", up.failures)
    } else {
        String::new()
    };
    Err(anyhow!(
        "uploading blob {} ({} bytes) to {}: {failure}{attempts}",
        blob.digest(),
        blob.size(),
        repo.name()
    ))
}

impl Upload<'_, '_> {
    /// Counts a failure; waits before the next try, or says there is none left.
    fn spend_attempt(&mut self, failure: &Failure) -> bool {
        self.failures += 1;
        let policy = &self.repo.registry.retry;
        if self.failures >= policy.attempts() {
            return false;
        }
        std::thread::sleep(policy.delay(self.failures, failure.retry_after()));
        true
    }

    /// One upload session: start it, send the blob, commit.
    fn attempt(&mut self, mode: Mode) -> Outcome {
        let start = match self.start_session() {
            Ok(s) => s,
            Err(f) if f.is_transient() => return Outcome::Retry(f),
            Err(f) => return Outcome::Fatal(f),
        };
        let (location, min_chunk) = start;
        match mode {
            Mode::Monolithic => self.monolithic(location, min_chunk),
            Mode::Chunked(size) => self.chunked(location, size.max(min_chunk), min_chunk),
        }
    }

    fn start_session(&self) -> Result<(Target, u64), Failure> {
        start_session(self.repo)
    }

    fn monolithic(&mut self, location: Target, min_chunk: u64) -> Outcome {
        let blob = self.blob;
        let commit = location.with_query("digest", &blob.digest().to_string());
        let response = self.repo.send(Request {
            method: "PUT",
            target: commit,
            headers: octet_stream(),
            body: Body::Blob {
                source: blob,
                offset: 0,
                len: blob.size(),
                progress: self.progress,
            },
            scopes: &self.repo.scopes,
        });
        match response {
            Ok(r) if r.status == 413 => Outcome::TooLarge {
                failure: r.into_failure(),
                min_chunk,
            },
            other => self.committed(other),
        }
    }

    /// The commit's answer: 201 (checked against our digest) or a failure.
    fn committed(&self, response: Result<Response, Failure>) -> Outcome {
        let response = match response {
            Ok(r) => r,
            Err(f) => return classify(f),
        };
        if response.status == 201 || response.status == 204 || response.status == 200 {
            let ours = self.blob.digest().to_string();
            if let Some(theirs) = response.header("docker-content-digest") {
                if theirs.trim() != ours {
                    return Outcome::Fatal(Failure::other(format!(
                        "the registry stored it as {theirs}, not {ours}"
                    )));
                }
            }
            return Outcome::Done;
        }
        // The session is gone (expired, or already committed by a request whose answer we
        // lost): start over, after the HEAD that may find the blob there.
        if response.status == 404 && response.has_error_code("BLOB_UPLOAD_UNKNOWN") {
            return Outcome::Retry(response.into_failure());
        }
        classify(response.into_failure())
    }

    fn chunked(&mut self, mut location: Target, chunk: u64, min_chunk: u64) -> Outcome {
        let blob = self.blob;
        let size = blob.size();
        let mut offset = 0u64;
        while offset < size {
            let len = chunk.min(size - offset);
            let end = offset + len - 1;
            let mut headers = octet_stream();
            // Inclusive, without the `bytes ` prefix (distribution-spec "Pushing a blob in chunks").
            headers.push(("content-range", format!("{offset}-{end}")));
            let response = self.repo.send(Request {
                method: "PATCH",
                target: location.clone(),
                headers,
                body: Body::Blob {
                    source: blob,
                    offset,
                    len,
                    progress: self.progress,
                },
                scopes: &self.repo.scopes,
            });
            let failure = match response {
                // ECR answers 201 where the spec says 202.
                Ok(r) if r.status == 202 || r.status == 201 => {
                    match r.header("location").map(|l| r.target.resolve(l)) {
                        Some(Ok(next)) => location = next,
                        Some(Err(e)) => return Outcome::Fatal(Failure::Other(e)),
                        None => {}
                    }
                    offset = end + 1;
                    continue;
                }
                Ok(r) if offset == 0 && (r.status == 413 || r.status == 416) => {
                    return Outcome::TooLarge {
                        failure: r.into_failure(),
                        min_chunk,
                    }
                }
                Ok(r) if r.status == 413 => return Outcome::Fatal(r.into_failure()),
                // Out of order: ask where the registry is.
                Ok(r) if r.status == 416 => r.into_failure(),
                Ok(r) => r.into_failure(),
                Err(f) => f,
            };
            let resumable = failure.is_transient() || failure.status() == Some(416);
            if !resumable {
                return Outcome::Fatal(failure);
            }
            if !self.spend_attempt(&failure) {
                return Outcome::Exhausted(failure);
            }
            match self.resume_point(&location) {
                Ok(Some((next_offset, next_location))) if next_offset <= size => {
                    offset = next_offset;
                    location = next_location;
                }
                // The session is gone, or says something we cannot resume from: start over.
                Ok(_) => return Outcome::Retry(failure),
                Err(f) if f.is_transient() => return Outcome::Retry(f),
                Err(_) => return Outcome::Retry(failure),
            }
        }
        let commit = location.with_query("digest", &blob.digest().to_string());
        let response = self.repo.send(Request {
            method: "PUT",
            target: commit,
            headers: octet_stream(),
            body: Body::Empty,
            scopes: &self.repo.scopes,
        });
        self.committed(response)
    }

    /// `GET <location>`: how many bytes the registry holds (`Range: 0-<last>`). `None` when the
    /// session is gone or the answer is ambiguous (`0-0` means none or one byte).
    fn resume_point(&self, location: &Target) -> Result<Option<(u64, Target)>, Failure> {
        let response = self.repo.send(Request {
            method: "GET",
            target: location.clone(),
            headers: Vec::new(),
            body: Body::Empty,
            scopes: &self.repo.scopes,
        })?;
        if response.status == 404 {
            return Ok(None);
        }
        if response.status != 204 && response.status != 202 && response.status != 200 {
            return Err(response.into_failure());
        }
        let next_location = match response.header("location") {
            Some(l) => response.target.resolve(l).map_err(Failure::Other)?,
            None => location.clone(),
        };
        let Some(range) = response.header("range") else {
            return Ok(Some((0, next_location)));
        };
        let range = range.trim().trim_start_matches("bytes=");
        let Some((start, end)) = range.split_once('-') else {
            return Ok(None);
        };
        match (start.trim().parse::<u64>(), end.trim().parse::<u64>()) {
            (Ok(0), Ok(0)) => Ok(None),
            (Ok(0), Ok(end)) => Ok(Some((end + 1, next_location))),
            _ => Ok(None),
        }
    }
}

/// `POST …/blobs/uploads/`: a new session's location, and the registry's smallest chunk.
fn start_session(repo: &Repository<'_>) -> Result<(Target, u64), Failure> {
    let response = repo.send(Request {
        method: "POST",
        target: repo.target("/blobs/uploads/"),
        headers: Vec::new(),
        body: Body::Empty,
        scopes: &repo.scopes,
    })?;
    if response.status != 202 {
        return Err(response.into_failure());
    }
    let location = location_of(&response)?;
    let min_chunk = response
        .header("oci-chunk-min-length")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok((location, min_chunk))
}

fn classify(failure: Failure) -> Outcome {
    if failure.is_transient() {
        Outcome::Retry(failure)
    } else {
        Outcome::Fatal(failure)
    }
}

fn octet_stream() -> Vec<(&'static str, String)> {
    vec![("content-type", "application/octet-stream".to_string())]
}

/// The `Location` of an answer, resolved against the URL that gave it.
pub(crate) fn location_of(response: &Response) -> Result<Target, Failure> {
    let location = response.header("location").ok_or_else(|| {
        Failure::other(format!(
            "{} {} answered {} without a Location",
            response.method, response.target, response.status
        ))
    })?;
    response.target.resolve(location).map_err(Failure::Other)
}

/// A blob uploaded while it is made (a layer being compressed): its bytes arrive in pieces,
/// its digest and size only at the end.
pub struct Streamed {
    /// The blob's bytes, in order; the channel closes when no more will come.
    pub pieces: std::sync::mpsc::Receiver<Vec<u8>>,
    /// Then what was made: its digest and size, or `None` if making it failed.
    pub made: std::sync::mpsc::Receiver<Option<(crate::digest::Digest, u64)>>,
}

/// Uploads a blob while it is made, in one streamed `PATCH` (chunked transfer encoding, as
/// `docker push` sends layers) and, once its maker says what it made, the commit. Compression
/// and upload then overlap instead of following each other.
///
/// `true`: uploaded and committed. `false`: not — the session could not be started, the
/// registry refused or broke the stream (a body too large for it, a reset, an expired token: a
/// stream cannot be sent again), or what arrived is not what was made; the session is deleted
/// and the caller uploads the finished blob the ordinary way, with every retry that allows.
/// Nothing is committed unless the maker finished and every byte it made was sent.
///
/// Nothing here is retried, and the stream is given up at the first failure, so that the
/// maker never waits on it: its channel is dropped and the maker goes on without (a 429's
/// `Retry-After` is still honoured, by the session, for the ordinary upload that follows).
pub(crate) fn upload_streamed(repo: &Repository<'_>, streamed: Streamed) -> bool {
    let Ok((location, _)) = start_session(repo) else {
        return false;
    };
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader: Box<dyn std::io::Read + Send> = Box::new(PieceReader {
        pieces: streamed.pieces,
        current: Vec::new(),
        position: 0,
        sent: sent.clone(),
    });
    let body = std::sync::Mutex::new(Some(reader));
    let response = repo.send(Request {
        method: "PATCH",
        target: location.clone(),
        headers: octet_stream(),
        body: Body::Stream(&body),
        scopes: &repo.scopes,
    });
    // Whatever happened, the stream is over: if the request failed before reading it (a token
    // that could not be fetched, a TLS set-up), dropping it is what tells the maker.
    drop(body);
    let next = match response {
        Ok(r) if r.status == 202 || r.status == 201 || r.status == 204 => {
            match r.header("location").map(|l| r.target.resolve(l)) {
                Some(Ok(next)) => Some(next),
                Some(Err(_)) => None,
                None => Some(location.clone()),
            }
        }
        _ => None,
    };
    let sent = sent.load(std::sync::atomic::Ordering::Acquire);
    let made = streamed.made.recv().ok().flatten();
    // The session is where the registry last said it is (its Location carries the state).
    let (Some(next), Some((digest, size))) = (next.clone(), made) else {
        abandon(repo, next.as_ref().unwrap_or(&location));
        return false;
    };
    if size != sent {
        abandon(repo, &next);
        return false;
    }
    let response = repo.send(Request {
        method: "PUT",
        target: next.with_query("digest", &digest.to_string()),
        headers: octet_stream(),
        body: Body::Empty,
        scopes: &repo.scopes,
    });
    match response {
        Ok(r) if matches!(r.status, 200 | 201 | 204) => {
            let stored_as = r.header("docker-content-digest").map(str::trim);
            stored_as.is_none_or(|theirs| theirs == digest.to_string())
        }
        _ => {
            abandon(repo, &next);
            false
        }
    }
}

/// Deletes an upload session we will not commit (best effort: it expires anyway).
pub(super) fn abandon(repo: &Repository<'_>, location: &Target) {
    let _ = repo.send(Request {
        method: "DELETE",
        target: location.clone(),
        headers: Vec::new(),
        body: Body::Empty,
        scopes: &repo.scopes,
    });
}

/// The pieces of a blob being made, as one stream.
struct PieceReader {
    pieces: std::sync::mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    position: usize,
    /// Bytes handed to the request so far.
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::io::Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.position == self.current.len() {
            match self.pieces.recv() {
                Ok(piece) => {
                    self.current = piece;
                    self.position = 0;
                }
                // The maker is done (or gave up): the end of the body.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        self.sent
            .fetch_add(n as u64, std::sync::atomic::Ordering::AcqRel);
        Ok(n)
    }
}
