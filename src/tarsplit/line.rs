//! One tar-split line, as JSON: the general parser (serde_json) and a fast path for the shapes
//! tar-split's own encoder writes.
//!
//! Why a fast path: a layer of 44,000 small files has a 60 MB tar-split of ~100,000 lines, and
//! it is parsed twice (the sizing pass, which must finish before anything is written, and the
//! rebuild). serde_json validates every payload byte twice over (string escapes, UTF-8) before
//! the base64 check looks at it a third time; that made parsing cost more than inflating.
//!
//! The fast path only ever *recognises*: it accepts a line when it has exactly one of the
//! shapes Go's `encoding/json` writes for tar-split's `storage.Entry` (fields in declaration
//! order, no whitespace, no escapes, plain integers), and then yields exactly what serde_json
//! would have. Anything else — another field order, an escape, an unknown field, a number
//! serde_json would read differently, damage of any kind — falls through to serde_json, so
//! every error is still serde_json's own, word for word. `fuzz/checks.rs` compares both paths on
//! every corpus input and mutation.

use std::borrow::Cow;

use serde::Deserialize;

/// tar-split's entry type numbers (`tar/storage/entry.go`).
pub const FILE_TYPE: i64 = 1;
pub const SEGMENT_TYPE: i64 = 2;

/// The JSON shape of one line. Unknown fields are ignored, as Go's decoder does. Strings are
/// borrowed from the line unless they contain escapes: tar-split lines are parsed by the
/// hundred thousand, and an allocation per field shows in profiles.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct RawEntry<'a> {
    #[serde(rename = "type")]
    pub kind: i64,
    #[serde(default, borrow)]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub name_raw: Option<Cow<'a, str>>,
    #[serde(default)]
    pub size: Option<i64>,
    #[serde(default, borrow)]
    pub payload: Option<Cow<'a, str>>,
    /// Set by the fast path when it has already checked that `payload` is base64 symbols
    /// followed by at most two `=` (the sizing pass then need not scan it again). Never part of
    /// the JSON.
    #[serde(skip)]
    pub payload_shape_checked: bool,
}

/// Parses one (trimmed, non-empty) line; the error is serde_json's message.
pub fn parse(text: &[u8], fast_path: bool) -> Result<RawEntry<'_>, serde_json::Error> {
    if fast_path {
        if let Some(raw) = parse_common_shape(text) {
            return Ok(raw);
        }
    }
    serde_json::from_slice(text)
}

/// The shapes tar-split writes (Go omits `name` and `size` when empty, and writes a nil
/// payload as `null`):
///
/// ```text
/// {"type":2,"payload":"<base64>","position":N}
/// {"type":1,"name":"<name>","size":N,"payload":"<base64>","position":N}
/// {"type":1,"name":"<name>","payload":null,"position":N}
/// ```
///
/// `None` for anything else, including shapes serde_json accepts (they take the general path).
pub fn parse_common_shape(text: &[u8]) -> Option<RawEntry<'_>> {
    let mut c = Cursor(text);
    let raw = common_shape(&mut c)?;
    c.0.is_empty().then_some(raw)
}

/// [`parse_common_shape`] on a line at the start of `buf`, ended by `\n`; also returns the
/// line's length with its `\n`. None of the shape's characters is a `\n`, so that is the line
/// reading up to the first `\n` would have given.
pub fn parse_common_line(buf: &[u8]) -> Option<(RawEntry<'_>, usize)> {
    let mut c = Cursor(buf);
    let raw = common_shape(&mut c)?;
    c.eat(b"\n")?;
    Some((raw, buf.len() - c.0.len()))
}

/// The shape parse itself, leaving the cursor after the closing brace.
fn common_shape<'a>(c: &mut Cursor<'a>) -> Option<RawEntry<'a>> {
    c.eat(b"{\"type\":")?;
    let kind = match c.byte()? {
        b'1' => FILE_TYPE,
        b'2' => SEGMENT_TYPE,
        _ => return None,
    };
    let mut raw = RawEntry {
        kind,
        name: None,
        name_raw: None,
        size: None,
        payload: None,
        payload_shape_checked: false,
    };
    if kind == FILE_TYPE {
        // `name_raw` (a name that is not UTF-8) is rare: it takes the general path.
        c.eat(b",\"name\":\"")?;
        raw.name = Some(Cow::Borrowed(c.plain_string()?));
        if c.eat(b",\"size\":").is_some() {
            raw.size = Some(c.integer()?);
        }
    }
    c.eat(b",\"payload\":")?;
    if c.eat(b"null").is_none() {
        c.eat(b"\"")?;
        raw.payload = Some(Cow::Borrowed(c.base64_string()?));
        raw.payload_shape_checked = true;
    }
    c.eat(b",\"position\":")?;
    c.integer()?;
    c.eat(b"}")?;
    Some(raw)
}

/// The rest of a line, consumed from the front.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn eat(&mut self, literal: &[u8]) -> Option<()> {
        self.0 = self.0.strip_prefix(literal)?;
        Some(())
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// A non-negative JSON integer that fits an i64 (at most 18 digits, no leading zero).
    /// Other numbers (negative, fractions, exponents, huge) take the general path, which reads
    /// or rejects them as it always did.
    fn integer(&mut self) -> Option<i64> {
        let digits = self.0.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 18 || (digits > 1 && self.0[0] == b'0') {
            return None;
        }
        let value = self.0[..digits]
            .iter()
            .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
        self.0 = &self.0[digits..];
        Some(value)
    }

    /// A string body up to its closing quote, when it needs no unescaping and is what
    /// serde_json would accept as is: no backslash, no control character, valid UTF-8.
    fn plain_string(&mut self) -> Option<&'a str> {
        let end = self.0.iter().position(|&c| c == b'"')?;
        let body = &self.0[..end];
        if body.iter().any(|&c| c == b'\\' || c < 0x20) {
            return None;
        }
        let s = std::str::from_utf8(body).ok()?;
        self.0 = &self.0[end + 1..];
        Some(s)
    }

    /// A string body of base64 symbols followed by at most two `=`, up to its closing quote.
    /// (Padding inside the body takes the general path, where the base64 check refuses it.)
    fn base64_string(&mut self) -> Option<&'a str> {
        let symbols = base64_symbol_run(self.0);
        let pad = self.0[symbols..]
            .iter()
            .take(3)
            .take_while(|&&c| c == b'=')
            .count();
        let end = symbols + pad;
        if pad > 2 || self.0.get(end) != Some(&b'"') {
            return None;
        }
        let body = &self.0[..end];
        self.0 = &self.0[end + 1..];
        // SAFETY: every byte of `body` was just checked to be ASCII (base64 symbols and `=`).
        // Checking UTF-8 again cost as much as the base64 scan, on tens of megabytes a layer.
        Some(unsafe { std::str::from_utf8_unchecked(body) })
    }
}

/// Whether `c` is in standard base64's alphabet (without the `=` padding).
#[inline(always)]
pub fn is_base64_symbol(c: u8) -> bool {
    // Without branches, and with as few comparisons as possible, so that loops over it
    // vectorize well: `| 0x20` folds upper case onto lower case (and no other byte onto a
    // letter), `| 4` folds '+' (0x2b) onto '/' (0x2f).
    ((c | 0x20).wrapping_sub(b'a') < 26) | (c.wrapping_sub(b'0') < 10) | ((c | 4) == b'/')
}

/// Whether every byte of `b` is a base64 symbol.
pub fn all_base64_symbols(b: &[u8]) -> bool {
    base64_symbol_run(b) == b.len()
}

/// The length of the leading run of base64 symbols in `b`: whole 32-byte blocks first, with a
/// test that vectorizes (segment payloads are ~700 bytes a line and tens of megabytes a
/// layer), then byte by byte in the block where the run ends.
fn base64_symbol_run(b: &[u8]) -> usize {
    let mut start = 0;
    for block in b.chunks_exact(32) {
        if !block.iter().fold(true, |ok, &c| ok & is_base64_symbol(c)) {
            break;
        }
        start += 32;
    }
    start
        + b[start..]
            .iter()
            .position(|&c| !is_base64_symbol(c))
            .unwrap_or(b.len() - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde(text: &str) -> Option<RawEntry<'_>> {
        serde_json::from_slice(text.as_bytes()).ok()
    }

    /// The fast path's result as serde_json's would compare: without the fast path's note.
    fn fast(text: &str) -> Option<RawEntry<'_>> {
        let mut raw = parse_common_shape(text.as_bytes())?;
        assert_eq!(raw.payload_shape_checked, raw.payload.is_some());
        raw.payload_shape_checked = false;
        Some(raw)
    }

    #[test]
    fn recognises_what_tar_split_writes() {
        let lines = [
            r#"{"type":2,"payload":"aGVhZGVy","position":0}"#,
            r#"{"type":2,"payload":"","position":12}"#,
            r#"{"type":2,"payload":null,"position":3}"#,
            r#"{"type":1,"name":"usr/share/","payload":null,"position":1}"#,
            r#"{"type":1,"name":"a b/ü","size":4,"payload":"YVqy3bAAAAA=","position":2}"#,
            r#"{"type":1,"name":"x","size":999999999999999999,"payload":"AAAAAAAAAAA=","position":0}"#,
            r#"{"type":1,"name":"","payload":null,"position":0}"#,
            r#"{"type":2,"payload":"aA==","position":9}"#,
        ];
        for line in lines {
            let fast = fast(line);
            assert!(fast.is_some(), "{line}");
            assert_eq!(fast, serde(line), "{line}");
        }
        let long = format!(
            r#"{{"type":2,"payload":"{}","position":0}}"#,
            "QUJD".repeat(300)
        );
        assert_eq!(fast(&long), serde(&long));
    }

    #[test]
    fn finds_line_ends() {
        let line = r#"{"type":2,"payload":"aGk=","position":0}"#;
        let buf = format!("{line}\n{line}\n");
        let (raw, len) = parse_common_line(buf.as_bytes()).unwrap();
        assert_eq!(len, line.len() + 1);
        assert_eq!(Some(raw), parse_common_shape(line.as_bytes()));
        // Not ended by a newline (yet): the general path reads it.
        for cut in [
            line.to_string(),
            format!("{line}\r\n"),
            format!("{line} \n"),
        ] {
            assert!(parse_common_line(cut.as_bytes()).is_none(), "{cut:?}");
        }
    }

    #[test]
    fn leaves_everything_else_to_serde() {
        let lines = [
            // Shapes serde_json accepts, read by serde_json.
            r#"{"type":1,"name_raw":"/w==","payload":null,"position":1}"#,
            r#"{"payload":"","type":2,"position":0}"#,
            r#"{"type":2,"payload":"","position":0,"extra":1}"#,
            r#"{"type":2,"payload":""}"#,
            r#"{"type": 2,"payload":"","position":0}"#,
            r#"{"type":1,"name":"a\"b","payload":null,"position":0}"#,
            r#"{"type":1,"name":"\u0061","payload":null,"position":0}"#,
            r#"{"type":1,"name":"a","size":-1,"payload":null,"position":0}"#,
            r#"{"type":1,"name":"a","size":1e3,"payload":null,"position":0}"#,
            r#"{"type":1,"name":"a","size":1000000000000000000,"payload":null,"position":0}"#,
            r#"{"type":2,"payload":"","position":1.5}"#,
            r#"{"type":2,"payload":"","position":-1}"#,
            r#"{"type":3,"payload":"","position":0}"#,
            r#"{"type":2,"payload":"a\/b=","position":0}"#,
            r#"{"type":2,"payload":"a=b=","position":0}"#,
            r#"{"type":2,"payload":"a===","position":0}"#,
            // What serde_json refuses.
            r#"{"type":2,"payload":"","position":01}"#,
            r#"{"type":12,"payload":"","position":0}"#,
            r#"{"type":2,"payload":"!!","position":0}"#,
            r#"{"type":2,"payload":"","position":0}x"#,
            r#"{"type":2,"payload":"","position":0"#,
            r#"{"type":2,"payload":nul,"position":0}"#,
            "{\"type\":1,\"name\":\"a\tb\",\"payload\":null,\"position\":0}",
        ];
        for line in lines {
            assert_eq!(parse_common_shape(line.as_bytes()), None, "{line}");
        }
        // Invalid UTF-8 in a name is serde_json's to refuse.
        let mut bad = br#"{"type":1,"name":"a"#.to_vec();
        bad.extend_from_slice(b"\xff\",\"payload\":null,\"position\":0}");
        assert_eq!(parse_common_shape(&bad), None);
        assert!(serde_json::from_slice::<RawEntry>(&bad).is_err());
    }

    #[test]
    fn base64_scans_agree_with_the_alphabet() {
        let mut text = Vec::new();
        for i in 0..100u8 {
            text.push(b"ABCxyz019+/"[usize::from(i) % 11]);
        }
        assert!(all_base64_symbols(&text));
        assert_eq!(base64_symbol_run(&text), 100);
        for at in [0, 5, 31, 32, 33, 63, 64, 99] {
            for bad in [
                b'=', b'"', b'-', b'_', 0, 0xff, b'@', b'[', b'`', b'{', b':', b'.',
            ] {
                let mut t = text.clone();
                t[at] = bad;
                assert!(!all_base64_symbols(&t), "{at} {bad}");
                assert_eq!(base64_symbol_run(&t), at, "{at} {bad}");
            }
        }
        for c in 0..=255u8 {
            let want = c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
            assert_eq!(is_base64_symbol(c), want, "{c}");
        }
    }
}
