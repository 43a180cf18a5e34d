//! The properties the fuzz targets check, shared with the stable replay test
//! (`tests/fuzz_replay.rs`), which includes this file with `#[path]`.

// Each fuzz target uses only its own check.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::Write;

use oci_export::reference::Reference;
use oci_export::source::containerd::bolt::{Bucket, Item, Snapshot};
use oci_export::tarsplit::{clean_path, Entry, EntrySize, TarSplitReader};

/// Every entry the parser yields, and how the stream ended (`Err` carries the message).
fn parse_all<I>(reader: I) -> (Vec<Entry>, Result<(), String>)
where
    I: Iterator<Item = Result<Entry, oci_export::tarsplit::TarSplitError>>,
{
    let mut entries = Vec::new();
    for item in reader {
        match item {
            Ok(e) => entries.push(e),
            Err(e) => return (entries, Err(e.to_string())),
        }
    }
    (entries, Ok(()))
}

/// What the parser promises about the entries it lets through.
fn check_entries(entries: &[Entry], end: &Result<(), String>) {
    let mut seen = HashSet::new();
    for e in entries {
        if let Entry::File(f) = e {
            assert!(
                !f.name.is_empty() && !f.name.contains(&0),
                "bad name passed"
            );
            assert!(f.size <= oci_export::tarsplit::MAX_FILE_SIZE, "size passed");
            assert_eq!(f.crc64.is_some(), f.size > 0, "CRC presence");
            assert!(seen.insert(clean_path(&f.name)), "duplicate path passed");
        }
    }
    if end.is_ok() {
        assert!(
            matches!(entries.last(), Some(Entry::Segment(_))),
            "a stream not ending in a segment was accepted"
        );
    }
}

/// [`tarsplit`] without the gzip round trip (which dominates its cost); returns the plain parse.
pub fn tarsplit_parse(data: &[u8]) -> (Vec<Entry>, Result<(), String>) {
    let (entries, end) = parse_all(TarSplitReader::gzipped(data));
    check_entries(&entries, &end);

    let (plain_entries, plain_end) = parse_all(TarSplitReader::plain(data));
    check_entries(&plain_entries, &plain_end);
    check_sizes(data, &plain_entries, &plain_end);
    check_fast_path(data, &plain_entries, &plain_end);
    (plain_entries, plain_end)
}

/// The fast path for common line shapes must not change anything: the same entries, the same
/// sizes and the same errors, word for word, as serde_json alone.
fn check_fast_path(data: &[u8], entries: &[Entry], end: &Result<(), String>) {
    let (json_entries, json_end) = parse_all(TarSplitReader::plain(data).without_fast_path());
    assert_eq!(
        entries,
        &json_entries[..],
        "the fast path changed the entries"
    );
    assert_eq!(end, &json_end, "the fast path changed how the stream ends");
    assert_eq!(
        all_sizes(TarSplitReader::plain(data)),
        all_sizes(TarSplitReader::plain(data).without_fast_path()),
        "the fast path changed the sizing pass"
    );
}

/// Every size the sizing pass yields, and how it ended.
fn all_sizes<R: std::io::Read>(
    mut reader: TarSplitReader<R>,
) -> (Vec<EntrySize>, Result<(), String>) {
    let mut sizes = Vec::new();
    loop {
        match reader.next_size() {
            Ok(Some(s)) => sizes.push(s),
            Ok(None) => return (sizes, Ok(())),
            Err(e) => return (sizes, Err(e.to_string())),
        }
    }
}

/// The sizing pass must accept whatever the full parse accepts, with the same sizes (it may
/// accept more: it checks base64 segments without decoding them, and the rebuild decodes).
fn check_sizes(data: &[u8], entries: &[Entry], end: &Result<(), String>) {
    let (sizes, sized) = all_sizes(TarSplitReader::plain(data));
    if end.is_ok() {
        assert!(
            sized.is_ok(),
            "the sizing pass refused a stream the parser accepted: {sized:?}"
        );
        let want: Vec<EntrySize> = entries
            .iter()
            .map(|e| match e {
                Entry::Segment(b) => EntrySize::Segment(b.len() as u64),
                Entry::File(f) => EntrySize::File(f.size),
            })
            .collect();
        assert_eq!(sizes, want, "the sizing pass disagrees with the parser");
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Feeds `data` to the tar-split parser as a gzip stream and as plain JSON lines; the plain
/// result must also equal the result for the same text gzipped.
pub fn tarsplit(data: &[u8]) {
    let (plain_entries, plain_end) = tarsplit_parse(data);
    let gz = gzip(data);
    let (gz_entries, gz_end) = parse_all(TarSplitReader::gzipped(&gz[..]));
    assert_eq!(plain_entries, gz_entries, "plain and gzipped parses differ");
    assert_eq!(
        plain_end, gz_end,
        "plain and gzipped parses end differently"
    );
    check_inflate_ahead(data);
}

/// Inflating on a thread must change nothing, damaged streams included (`data` is tried as the
/// gzip stream itself): the same sizes, in the same order, and the same error.
pub fn check_inflate_ahead(data: &[u8]) {
    assert_eq!(
        all_sizes(TarSplitReader::gzipped_ahead(std::io::Cursor::new(
            data.to_vec()
        ))),
        all_sizes(TarSplitReader::gzipped(data)),
        "inflating ahead changed the sizing pass"
    );
}

/// Parses `data` as an image reference; whatever parses must print back consistently.
pub fn reference(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(r) = Reference::parse(input) else {
        return;
    };
    // The full form names exactly this reference.
    let full = r.full_string();
    assert_eq!(
        Reference::parse(&full).as_ref(),
        Ok(&r),
        "{input:?} printed as {full:?} does not parse back"
    );
    // The familiar form (repositories.json's key) is deliberately not checked for a round trip:
    // like Docker's FamiliarString (distribution/reference) it is ambiguous by design.
    // `docker.io/a.b/c` is familiar `a.b/c`, which names registry `a.b`; `docker.io/a__b.c/d`
    // gives `a__b.c/d`, which does not parse. The keys Docker writes follow the same rules.
    let _ = r.familiar_string();
    let tagged = r.clone().with_default_tag();
    assert!(tagged.tag.is_some() || tagged.digest.is_some());
    let _ = (r.familiar_name(), r.full_name());
}

/// Entries a bolt check walks at most, so that one input cannot take seconds.
const BOLT_BUDGET: usize = 20_000;

/// How a bbolt input fared, for the replay test's account of what its mutations reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BoltOutcome {
    /// Refused at the meta pages.
    NotBolt,
    /// Opened, and some bucket was found damaged.
    Damaged,
    /// Opened and walked without a fault (within the budget).
    Clean,
}

/// Reads `data` as a bbolt file, and again with both meta checksums made right (so that
/// mutated meta fields get past the checksum); walks everything that reads, and checks that
/// what a walk returns is exactly what lookups find.
pub fn bolt(data: &[u8]) {
    bolt_outcomes(data);
}

/// [`bolt`], telling how the input fared as given and with its meta checksums fixed (`None`
/// when fixing them changed nothing).
pub fn bolt_outcomes(data: &[u8]) -> (BoltOutcome, Option<BoltOutcome>) {
    let plain = bolt_once(data);
    let fixed = with_meta_checksums_fixed(data).map(|d| bolt_once(&d));
    (plain, fixed)
}

fn bolt_once(data: &[u8]) -> BoltOutcome {
    let Ok(snapshot) = Snapshot::from_bytes(data.to_vec()) else {
        return BoltOutcome::NotBolt;
    };
    let meta = *snapshot.meta();
    assert!(meta.root >= 2 && meta.root < meta.high_water, "{meta:?}");
    let mut budget = BOLT_BUDGET;
    let clean = check_bucket(&snapshot.root(), &mut budget);
    // Lookups by path must not panic either, found or not.
    let _ = snapshot.bucket(&[b"v1", b"moby", b"images"]);
    let _ = snapshot.bucket(&[b"v1", b"snapshots"]);
    if clean {
        BoltOutcome::Clean
    } else {
        BoltOutcome::Damaged
    }
}

/// Walks `bucket` and everything under it; false if some part is damaged.
fn check_bucket(bucket: &Bucket<'_>, budget: &mut usize) -> bool {
    let Ok(entries) = bucket.entries() else {
        // A damaged tree: lookups may fail too, but must not panic.
        for key in [&b""[..], b"v1", b"version", b"\xff"] {
            let _ = bucket.item(key);
        }
        return false;
    };
    let mut clean = true;
    for pair in entries.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "keys out of order after a clean walk"
        );
    }
    for (i, (key, item)) in entries.iter().enumerate() {
        if *budget == 0 {
            return clean;
        }
        *budget -= 1;
        let found = bucket
            .item(key)
            .unwrap_or_else(|e| panic!("a key the walk returned fails its lookup: {e}"));
        match (item, found) {
            (Item::Value(v), Some(Item::Value(w))) => {
                assert_eq!(v, &w, "lookup found another value")
            }
            (Item::Bucket(_), Some(Item::Bucket(b))) => clean &= check_bucket(&b, budget),
            (item, found) => panic!("walk gave {item:?}, lookup {found:?}"),
        }
        // The smallest key above `key` is found only if the walk listed it next.
        let mut above = key.to_vec();
        above.push(0);
        let next_is_above = entries.get(i + 1).is_some_and(|(k, _)| *k == &above[..]);
        let found_above = bucket
            .item(&above)
            .unwrap_or_else(|e| panic!("a lookup in a tree that walked cleanly failed: {e}"));
        assert_eq!(
            found_above.is_some(),
            next_is_above,
            "lookup found a key the walk did not"
        );
    }
    clean
}

/// `data` with the FNV-1a checksums of both meta pages recomputed, at the page size meta 0
/// claims (or 4096).
fn with_meta_checksums_fixed(data: &[u8]) -> Option<Vec<u8>> {
    let claimed = u32::from_le_bytes(data.get(24..28)?.try_into().ok()?) as usize;
    let page_size = if (1024..=1 << 16).contains(&claimed) {
        claimed
    } else {
        4096
    };
    let mut out = data.to_vec();
    for at in [16, page_size + 16] {
        let Some(meta) = out.get(at..at + 56) else {
            continue;
        };
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in meta {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        if let Some(sum) = out.get_mut(at + 56..at + 64) {
            sum.copy_from_slice(&hash.to_le_bytes());
        }
    }
    (out != data).then_some(out)
}
