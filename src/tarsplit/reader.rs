//! Streaming parser: gzip → JSON lines → validated [`Entry`] values.

use std::borrow::Cow;
use std::io::{self, BufRead, BufReader, Read};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use flate2::read::GzDecoder;

use super::entry::{Entry, FileEntry};
use super::inflate_ahead::{self, InflateAhead};
use super::line::{self, all_base64_symbols, RawEntry, FILE_TYPE, SEGMENT_TYPE};
use super::path_set::PathSet;

/// No single member can be larger than this (16 TiB, ext4's and XFS's practical file limit).
/// Anything above is corruption or a forgery, refused before any I/O is attempted.
pub const MAX_FILE_SIZE: u64 = 1 << 44;
/// A JSON line longer than this is not something tar-split writes (segments are at most ~1 MiB
/// of raw bytes, i.e. ~1.4 MiB of base64); refusing it bounds memory on hostile input.
const MAX_LINE_LEN: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TarSplitError {
    // The I/O error is the source, not part of this message: error chains (`{:#}`) print
    // sources after the message, so naming it here too printed every cause twice.
    #[error("reading tar-split (gzip stream damaged or truncated?)")]
    Io(#[from] io::Error),
    #[error("tar-split line {line}: {reason}")]
    Malformed { line: u64, reason: String },
    #[error(
        "tar-split line {line}: duplicate path {name:?} (tar-split never records a path twice)"
    )]
    DuplicatePath { line: u64, name: String },
    #[error("tar-split ends without its end-of-archive segment (truncated?)")]
    Truncated,
}

/// Reads a tar-split stream entry by entry.
///
/// Besides the JSON shape, it enforces what tar-split's own unpacker enforces (no duplicate
/// cleaned paths) and what replaying needs (CRC present for non-empty files, sane sizes).
pub struct TarSplitReader<R: Read> {
    input: BufReader<R>,
    line: Vec<u8>,
    line_no: u64,
    /// Cleaned paths seen so far, when duplicates are checked.
    seen: Option<PathSet>,
    saw_segment_last: bool,
    done: bool,
    /// Whether lines of the common shapes skip serde_json ([`line::parse_common_shape`]).
    fast_path: bool,
}

impl<R: Read> TarSplitReader<TarSplitReaderInput<R>> {
    /// Reads a gzip-compressed tar-split (`tar-split.json.gz`).
    pub fn gzipped(input: R) -> Self {
        Self::new(TarSplitReaderInput::Gzip(Box::new(GzDecoder::new(input))))
    }

    /// Reads a gzip-compressed tar-split, inflated on a thread of its own
    /// ([`InflateAhead`]): the same entries and errors as [`Self::gzipped`], sooner when
    /// another core is idle.
    pub fn gzipped_ahead(input: R) -> Self
    where
        R: Send + 'static,
    {
        Self::new(TarSplitReaderInput::InflateAhead(InflateAhead::start(
            input,
        )))
    }

    /// Reads an uncompressed tar-split JSON stream.
    pub fn plain(input: R) -> Self {
        Self::new(TarSplitReaderInput::Plain(input))
    }
}

/// The input of a [`TarSplitReader`]: a gzip or an already decompressed stream.
pub enum TarSplitReaderInput<R: Read> {
    Gzip(Box<GzDecoder<R>>),
    InflateAhead(InflateAhead),
    Plain(R),
}

impl<R: Read> Read for TarSplitReaderInput<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            TarSplitReaderInput::Gzip(g) => g.read(buf),
            TarSplitReaderInput::InflateAhead(a) => a.read(buf),
            TarSplitReaderInput::Plain(p) => p.read(buf),
        }
    }
}

impl<R: Read> TarSplitReader<R> {
    fn new(input: R) -> Self {
        TarSplitReader {
            // One inflated chunk per refill (see `inflate_ahead`).
            input: BufReader::with_capacity(inflate_ahead::CHUNK, input),
            line: Vec::with_capacity(4096),
            line_no: 0,
            seen: Some(PathSet::default()),
            saw_segment_last: false,
            done: false,
            fast_path: true,
        }
    }

    /// Parses every line with serde_json alone. The fast path must never change a result; this
    /// is how the fuzz checks compare the two.
    pub fn without_fast_path(mut self) -> Self {
        self.fast_path = false;
        self
    }

    /// Skips the duplicate-path check. For a second pass over a stream whose first pass already
    /// checked it: the set of names is the one per-entry cost that grows with the layer.
    pub fn without_duplicate_check(mut self) -> Self {
        self.seen = None;
        self
    }

    /// The next entry, `Ok(None)` at a clean end of stream.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarSplitError> {
        self.next_with(|raw, line, seen| {
            let entry = validate(raw, line, seen)?.into_entry();
            let is_segment = matches!(entry, Entry::Segment(_));
            Ok((entry, is_segment))
        })
    }

    /// The next entry's contribution to the tar's size, `Ok(None)` at a clean end of stream.
    ///
    /// For the sizing pass, which runs before anything can be written: segment payloads are
    /// checked to be padded standard base64 and measured without being decoded (the rebuild
    /// decodes them, and fails on any bad byte); file entries get every check `next_entry`
    /// makes, duplicate paths included.
    pub fn next_size(&mut self) -> Result<Option<EntrySize>, TarSplitError> {
        self.next_with(|raw, line, seen| {
            if raw.kind == SEGMENT_TYPE {
                let len = match raw.payload.as_deref() {
                    None => Some(0),
                    Some(p) if raw.payload_shape_checked => shaped_base64_decoded_len(p),
                    Some(p) => base64_decoded_len(p),
                };
                let len = len.ok_or_else(|| TarSplitError::Malformed {
                    line,
                    reason: "payload is not base64 (padded standard base64 expected)".into(),
                })?;
                return Ok((EntrySize::Segment(len as u64), true));
            }
            match validate(raw, line, seen)? {
                Checked::File { size, .. } => Ok((EntrySize::File(size), false)),
                Checked::Segment(_) => unreachable!("segments are handled above"),
            }
        })
    }

    /// Reads lines until one parses, and hands it to `decode` with its line number and the
    /// duplicate-path set; `decode` also says whether the entry was a segment.
    fn next_with<T>(
        &mut self,
        mut decode: impl FnMut(RawEntry, u64, Option<&mut PathSet>) -> Result<(T, bool), TarSplitError>,
    ) -> Result<Option<T>, TarSplitError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if self.fast_path {
                // A whole line of a common shape in the buffer is parsed where it lies: no copy,
                // and no separate search for its end (the shape parse finds it).
                let buf = self.input.fill_buf()?;
                if let Some((raw, len)) = line::parse_common_line(buf) {
                    if len <= MAX_LINE_LEN {
                        self.line_no += 1;
                        let decoded = decode(raw, self.line_no, self.seen.as_mut());
                        self.input.consume(len);
                        let (value, is_segment) = decoded?;
                        self.saw_segment_last = is_segment;
                        return Ok(Some(value));
                    }
                }
            }
            self.line.clear();
            let n = (&mut self.input)
                .take(MAX_LINE_LEN as u64 + 1)
                .read_until(b'\n', &mut self.line)?;
            if n == 0 {
                self.done = true;
                // Every archive tar-split records ends with the end-of-archive segment; a stream
                // whose last record is a file entry was cut short.
                if !self.saw_segment_last {
                    return Err(TarSplitError::Truncated);
                }
                return Ok(None);
            }
            self.line_no += 1;
            if self.line.len() > MAX_LINE_LEN {
                return Err(self.malformed(format!("line longer than {MAX_LINE_LEN} bytes")));
            }
            let text = trim_ascii(&self.line);
            if text.is_empty() {
                continue;
            }
            let raw = match line::parse(text, self.fast_path) {
                Ok(raw) => raw,
                Err(e) => return Err(self.malformed(format!("invalid JSON: {e}"))),
            };
            let (value, is_segment) = decode(raw, self.line_no, self.seen.as_mut())?;
            self.saw_segment_last = is_segment;
            return Ok(Some(value));
        }
    }

    fn malformed(&self, reason: String) -> TarSplitError {
        TarSplitError::Malformed {
            line: self.line_no,
            reason,
        }
    }
}

impl<R: Read> Iterator for TarSplitReader<R> {
    type Item = Result<Entry, TarSplitError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_entry() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// What an entry adds to the size of the tar (see [`TarSplitReader::next_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntrySize {
    Segment(u64),
    File(u64),
}

/// The decoded length of padded standard base64, after checking its alphabet; `None` when it is
/// not padded standard base64.
fn base64_decoded_len(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    all_base64_symbols(&b[..b.len() - pad]).then(|| b.len() / 4 * 3 - pad)
}

/// [`base64_decoded_len`] for a payload already known to be base64 symbols followed by at most
/// two `=` (what the fast path checks): only the length is left to check.
fn shaped_base64_decoded_len(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    b.len().is_multiple_of(4).then(|| b.len() / 4 * 3 - pad)
}

/// A validated line. A file's name is still borrowed from the line when it can be: the sizing
/// pass needs only its size, and an allocation per file showed in that pass's profile.
enum Checked<'a> {
    Segment(Vec<u8>),
    File {
        name: Cow<'a, [u8]>,
        size: u64,
        crc64: Option<u64>,
    },
}

impl Checked<'_> {
    fn into_entry(self) -> Entry {
        match self {
            Checked::Segment(bytes) => Entry::Segment(bytes),
            Checked::File { name, size, crc64 } => Entry::File(FileEntry {
                name: name.into_owned(),
                size,
                crc64,
            }),
        }
    }
}

/// Checks one parsed line (and, given `seen`, that no path repeats) and returns it validated.
fn validate<'a>(
    raw: RawEntry<'a>,
    line: u64,
    seen: Option<&mut PathSet>,
) -> Result<Checked<'a>, TarSplitError> {
    let malformed = |reason: String| TarSplitError::Malformed { line, reason };
    let payload = match &raw.payload {
        Some(p) => Some(
            BASE64
                .decode(p.as_bytes())
                .map_err(|e| malformed(format!("payload is not base64: {e}")))?,
        ),
        None => None,
    };
    match raw.kind {
        SEGMENT_TYPE => Ok(Checked::Segment(payload.unwrap_or_default())),
        FILE_TYPE => {
            let name: Cow<[u8]> = match (raw.name_raw, raw.name) {
                (Some(b64), _) => Cow::Owned(
                    BASE64
                        .decode(b64.as_bytes())
                        .map_err(|e| malformed(format!("name_raw is not base64: {e}")))?,
                ),
                (None, Some(Cow::Borrowed(name))) => Cow::Borrowed(name.as_bytes()),
                (None, Some(Cow::Owned(name))) => Cow::Owned(name.into_bytes()),
                (None, None) => return Err(malformed("file entry without a name".into())),
            };
            if name.is_empty() || name.contains(&0) {
                return Err(malformed(
                    "file entry with an empty name or a NUL byte".into(),
                ));
            }
            let size = raw.size.unwrap_or(0);
            if size < 0 || size as u64 > MAX_FILE_SIZE {
                return Err(malformed(format!(
                    "file {:?} has an impossible size {size}",
                    String::from_utf8_lossy(&name)
                )));
            }
            let size = size as u64;
            let crc64 = match (size, payload) {
                (0, _) => None,
                (_, Some(p)) if p.len() == 8 => {
                    Some(u64::from_be_bytes(p.try_into().expect("length checked")))
                }
                (_, _) => {
                    return Err(malformed(format!(
                        "file {:?} of {size} bytes lacks its 8-byte CRC-64 payload",
                        String::from_utf8_lossy(&name)
                    )))
                }
            };
            if let Some(seen) = seen {
                if !seen.insert(&clean_key(&name)) {
                    return Err(TarSplitError::DuplicatePath {
                        line,
                        name: String::from_utf8_lossy(&name).into_owned(),
                    });
                }
            }
            Ok(Checked::File { name, size, crc64 })
        }
        other => Err(malformed(format!("unknown entry type {other}"))),
    }
}

fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Go's `filepath.Clean` on raw bytes: the key tar-split uses to spot duplicate paths.
pub fn clean_path(path: &[u8]) -> Vec<u8> {
    clean_key(path).into_owned()
}

/// [`clean_path`], borrowed from `path` when that needs no copy: most names are clean but for
/// a directory's trailing slash, and this runs once per file in the sizing pass.
fn clean_key(path: &[u8]) -> Cow<'_, [u8]> {
    match clean_prefix(path) {
        Some(clean) => Cow::Borrowed(clean),
        None => Cow::Owned(clean_path_in_full(path)),
    }
}

/// `path` without its trailing slashes, when that is already what `filepath.Clean` gives: no
/// empty, `.` or `..` component (a leading `/` aside). `None` when cleaning takes more.
fn clean_prefix(path: &[u8]) -> Option<&[u8]> {
    let end = path.iter().rposition(|&c| c != b'/')? + 1;
    let trimmed = &path[..end];
    let relative = trimmed.strip_prefix(b"/").unwrap_or(trimmed);
    relative
        .split(|&c| c == b'/')
        .all(|part| !matches!(part, b"" | b"." | b".."))
        .then_some(trimmed)
}

fn clean_path_in_full(path: &[u8]) -> Vec<u8> {
    let rooted = path.first() == Some(&b'/');
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&c| c == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if matches!(parts.last(), Some(p) if *p != b"..") {
                    parts.pop();
                } else if !rooted {
                    parts.push(part);
                }
            }
            _ => parts.push(part),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    if rooted {
        out.push(b'/');
    }
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(text: &str) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    fn parse(text: &str) -> Result<Vec<Entry>, TarSplitError> {
        TarSplitReader::gzipped(&gz(text)[..]).collect()
    }

    #[test]
    fn parses_the_shapes_docker_writes() {
        let text = concat!(
            r#"{"type":2,"payload":"aGVhZGVy","position":0}"#,
            "\n",
            r#"{"type":1,"name":"data/","payload":null,"position":1}"#,
            "\n",
            r#"{"type":1,"name":"data/new.txt","size":4,"payload":"YVqy3bAAAAA=","position":2}"#,
            "\n",
            r#"{"type":1,"name_raw":"/w==","position":3}"#,
            "\n",
            r#"{"type":2,"payload":"","position":4}"#,
            "\n",
        );
        let entries = parse(text).unwrap();
        assert_eq!(
            entries,
            vec![
                Entry::Segment(b"header".to_vec()),
                Entry::File(FileEntry {
                    name: b"data/".to_vec(),
                    size: 0,
                    crc64: None
                }),
                Entry::File(FileEntry {
                    name: b"data/new.txt".to_vec(),
                    size: 4,
                    crc64: Some(0x615ab2ddb0000000)
                }),
                Entry::File(FileEntry {
                    name: vec![0xff],
                    size: 0,
                    crc64: None
                }),
                Entry::Segment(Vec::new()),
            ]
        );
    }

    #[test]
    fn rejects_damage() {
        let ok_end = "{\"type\":2,\"payload\":\"\"}\n";
        let cases = [
            ("not json\n", "invalid JSON"),
            ("{\"type\":2,\"payload\":\"!!!\"}\n", "not base64"),
            ("{\"type\":3}\n", "unknown entry type"),
            (
                "{\"type\":1,\"name\":\"a\",\"size\":-1}\n",
                "impossible size",
            ),
            (
                "{\"type\":1,\"name\":\"a\",\"size\":99999999999999999}\n",
                "impossible size",
            ),
            (
                "{\"type\":1,\"name\":\"a\",\"size\":4,\"payload\":null}\n",
                "CRC-64",
            ),
            (
                "{\"type\":1,\"name\":\"a\",\"size\":4,\"payload\":\"AAAA\"}\n",
                "CRC-64",
            ),
            ("{\"type\":1,\"size\":0}\n", "without a name"),
            (
                "{\"type\":1,\"name\":\"a\"}\n{\"type\":1,\"name\":\"./a\"}\n",
                "duplicate path",
            ),
        ];
        for (body, want) in cases {
            let err = parse(&format!("{body}{ok_end}")).unwrap_err().to_string();
            assert!(err.contains(want), "{body:?}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn detects_truncation() {
        // Cut after a file entry: no end-of-archive segment.
        let err =
            parse("{\"type\":2,\"payload\":\"\"}\n{\"type\":1,\"name\":\"a\"}\n").unwrap_err();
        assert!(matches!(err, TarSplitError::Truncated), "{err}");
        // A gzip stream cut in the middle.
        let full = gz(&"{\"type\":2,\"payload\":\"\"}\n".repeat(1000));
        let cut = &full[..full.len() / 2];
        let err = TarSplitReader::gzipped(cut)
            .collect::<Result<Vec<_>, _>>()
            .unwrap_err();
        assert!(matches!(err, TarSplitError::Io(_)), "{err}");
    }

    #[test]
    fn sizes_match_decoded_entries() {
        let text = concat!(
            r#"{"type":2,"payload":"aGVhZGVy"}"#,
            "\n",
            r#"{"type":1,"name":"a","size":4,"payload":"YVqy3bAAAAA="}"#,
            "\n",
            r#"{"type":2,"payload":"aGk="}"#,
            "\n",
            r#"{"type":2,"payload":"aA=="}"#,
            "\n",
            r#"{"type":2,"payload":null}"#,
            "\n",
        );
        let stream = gz(text);
        let mut reader = TarSplitReader::gzipped(&stream[..]);
        let mut sizes = Vec::new();
        while let Some(s) = reader.next_size().unwrap() {
            sizes.push(s);
        }
        use EntrySize::*;
        assert_eq!(
            sizes,
            [Segment(6), File(4), Segment(2), Segment(1), Segment(0)]
        );
        for bad in ["aGVhZGVy=", "aGVh!GVy", "a===", "aGk"] {
            let line = format!("{{\"type\":2,\"payload\":\"{bad}\"}}\n");
            let stream = gz(&line);
            let err = TarSplitReader::gzipped(&stream[..])
                .next_size()
                .unwrap_err();
            assert!(err.to_string().contains("base64"), "{bad}: {err}");
        }
    }

    #[test]
    fn clean_path_matches_go() {
        let cases: [(&[u8], &[u8]); 9] = [
            (b"a/b", b"a/b"),
            (b"./a//b/", b"a/b"),
            (b"a/./b/../c", b"a/c"),
            (b"../a", b"../a"),
            (b"/../a", b"/a"),
            (b"", b"."),
            (b"./", b"."),
            (b"a/..", b"."),
            (b"/", b"/"),
        ];
        for (input, want) in cases {
            assert_eq!(
                clean_path(input),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn clean_prefix_is_a_shortcut_only() {
        let parts: [&[u8]; 7] = [b"a", b"bc", b".", b"..", b"", b".a", b"a."];
        // Every path of up to three parts, rooted or not, with and without trailing slashes.
        let mut paths: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..3 {
            let mut longer = Vec::new();
            for p in &paths {
                for part in parts {
                    let mut q = p.clone();
                    if !q.is_empty() {
                        q.push(b'/');
                    }
                    q.extend_from_slice(part);
                    longer.push(q);
                }
            }
            paths.extend(longer);
        }
        let mut shortcuts = 0;
        for path in &paths {
            for variant in [
                path.clone(),
                [b"/", &path[..]].concat(),
                [&path[..], b"//"].concat(),
            ] {
                let full = clean_path_in_full(&variant);
                if let Some(prefix) = clean_prefix(&variant) {
                    shortcuts += 1;
                    assert_eq!(prefix, &full[..], "{:?}", String::from_utf8_lossy(&variant));
                }
                assert_eq!(clean_path(&variant), full);
            }
        }
        assert!(shortcuts > 100);
    }
}
