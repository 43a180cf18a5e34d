//! The on-disk structures of a bbolt file, decoded from bytes with every offset and length
//! checked (go.etcd.io/bbolt `internal/common/page.go`, `meta.go`; older releases keep the same
//! layout in `page.go` and `db.go`).
//!
//! ```text
//! page header (16 bytes)   id u64 | flags u16 | count u16 | overflow u32
//! meta (after the header)  magic u32 | version u32 | page_size u32 | flags u32 |
//!                          root bucket {root pgid u64, sequence u64} | freelist pgid u64 |
//!                          high-water pgid u64 | txid u64 | checksum u64 (FNV-1a of the above)
//! branch element (16)      pos u32 | ksize u32 | child pgid u64
//! leaf element (16)        flags u32 | pos u32 | ksize u32 | vsize u32
//! ```
//!
//! An element's `pos` counts from the element's own first byte, not from the page. A page of
//! `overflow` n spans n + 1 page-size units. Go writes these structs in the machine's byte
//! order; every platform containerd ships for is little-endian, and a big-endian file fails the
//! magic check rather than being misread.

use super::BoltError;

pub(super) const PAGE_HEADER_SIZE: usize = 16;
const ELEMENT_SIZE: usize = 16; // branch and leaf elements happen to be the same size
const META_SIZE: usize = 64;
/// Bytes of the meta covered by its checksum: every field before `checksum`.
const META_CHECKSUMMED: usize = 56;

pub(super) const MAGIC: u32 = 0xED0C_DAED;
pub(super) const VERSION: u32 = 2;

pub(super) const BRANCH_PAGE: u16 = 0x01;
pub(super) const LEAF_PAGE: u16 = 0x02;
pub(super) const META_PAGE: u16 = 0x04;

/// A leaf element whose value is a bucket header (and, for inline buckets, a page).
pub(super) const BUCKET_LEAF_FLAG: u32 = 0x01;
/// The header in front of every bucket value: `root` pgid (0 = inline) and `sequence`.
pub(super) const BUCKET_HEADER_SIZE: usize = 16;
/// `freelist` in the meta of a database opened with `NoFreelistSync` (containerd 1.7 and later).
pub(super) const NO_FREELIST: u64 = u64::MAX;

/// The smallest and largest page sizes accepted. bbolt uses the OS page size (4 KiB here) unless
/// told otherwise, and searches 1 KiB … 16 MiB for the second meta page.
pub(super) const MIN_PAGE_SIZE: u32 = 1024;
pub(super) const MAX_PAGE_SIZE: u32 = 16 << 20;

pub(super) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

pub(super) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub(super) fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// FNV-1a, 64 bit (Go's `hash/fnv` New64a), the meta page checksum.
pub(super) fn fnv1a64(data: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// One meta page, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    /// The root bucket's root page.
    pub root: u64,
    /// The freelist page, or `None` when the database keeps no freelist (`NoFreelistSync`).
    pub freelist: Option<u64>,
    /// The high-water mark: pages at or above it are not part of this transaction's tree.
    pub high_water: u64,
    pub txid: u64,
}

/// Decodes the meta page at position `index` (0 or 1) from `page`, which holds at least the
/// page header and the meta. Every way a meta can be unusable is an error naming what is wrong:
/// the caller falls back to the other meta, as bbolt does.
pub(super) fn parse_meta(page: &[u8], index: u64) -> Result<Meta, String> {
    let m = page
        .get(PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + META_SIZE)
        .ok_or_else(|| format!("meta page {index} is cut short ({} bytes)", page.len()))?;
    let field32 = |at| u32_at(m, at).unwrap_or_default();
    let field64 = |at| u64_at(m, at).unwrap_or_default();
    let magic = field32(0);
    if magic != MAGIC {
        return Err(format!(
            "meta page {index} has no bbolt magic ({magic:#010x}, expected {MAGIC:#010x})"
        ));
    }
    let version = field32(4);
    if version != VERSION {
        return Err(format!(
            "meta page {index} has format version {version}, expected {VERSION}"
        ));
    }
    let stored = field64(META_CHECKSUMMED);
    let computed = fnv1a64(&m[..META_CHECKSUMMED]);
    if stored != computed {
        return Err(format!(
            "meta page {index} fails its checksum ({stored:#018x}, computed {computed:#018x})"
        ));
    }
    // Past the checksum, a meta that still makes no sense was written wrong, not torn.
    let page_id = u64_at(page, 0).unwrap_or_default();
    let flags = u16_at(page, 8).unwrap_or_default();
    if page_id != index || flags & META_PAGE == 0 {
        return Err(format!(
            "meta page {index} is marked as page {page_id} with flags {flags:#06x}"
        ));
    }
    let page_size = field32(8);
    if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(format!(
            "meta page {index} gives an impossible page size of {page_size} bytes"
        ));
    }
    let root = field64(16);
    let freelist = field64(32);
    let high_water = field64(40);
    let txid = field64(48);
    if root < 2 || root >= high_water {
        return Err(format!(
            "meta page {index} puts the root bucket at page {root}, outside 2..{high_water}"
        ));
    }
    let freelist = match freelist {
        NO_FREELIST => None,
        id if id >= 2 && id < high_water => Some(id),
        id => {
            return Err(format!(
                "meta page {index} puts the freelist at page {id}, outside 2..{high_water}"
            ))
        }
    };
    Ok(Meta {
        page_size,
        root,
        freelist,
        high_water,
        txid,
    })
}

/// A leaf element: a key and either a plain value or a bucket value.
#[derive(Clone, Copy, Debug)]
pub(super) struct LeafElement<'s> {
    pub key: &'s [u8],
    pub value: &'s [u8],
    pub is_bucket: bool,
}

/// A branch element: the smallest key under `child` (as of when the page was written).
#[derive(Clone, Copy, Debug)]
pub(super) struct BranchElement<'s> {
    pub key: &'s [u8],
    pub child: u64,
}

/// A decoded tree page.
#[derive(Debug)]
pub(super) enum Node<'s> {
    Branch(Vec<BranchElement<'s>>),
    Leaf(Vec<LeafElement<'s>>),
}

/// Decodes a branch or leaf page from `page` (its header and every overflow page after it, or
/// an inline bucket's page). `what` names the page in errors ("page 7", "the inline bucket
/// under key …").
///
/// bbolt lays a page out as the element array followed by each element's key (and value) in
/// element order, with nothing in between (`node.write`), so anything else is damage: a key or
/// value that overlaps the element array or an earlier element's bytes, runs past the page, or
/// is not in strictly ascending order.
pub(super) fn parse_node<'s>(
    page: &'s [u8],
    what: &dyn Fn() -> String,
) -> Result<Node<'s>, BoltError> {
    let damaged = |why: String| BoltError::Damaged(format!("{}: {why}", what()));
    let (Some(flags), Some(count)) = (u16_at(page, 8), u16_at(page, 10)) else {
        return Err(damaged(format!("cut short at {} bytes", page.len())));
    };
    let count = usize::from(count);
    let array_end = PAGE_HEADER_SIZE + count * ELEMENT_SIZE;
    if array_end > page.len() {
        return Err(damaged(format!(
            "{count} elements do not fit in {} bytes",
            page.len()
        )));
    }
    // The byte range of element `i`'s data (key, then value), checked against the page and the
    // data before it.
    let mut data_end = array_end;
    let mut take = |i: usize, pos: u32, len: u64| -> Result<(usize, usize), BoltError> {
        let element_at = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
        let start = element_at as u64 + u64::from(pos);
        let end = start + len; // at most 2^16·16 + 2^32 + 2^33: no overflow
        if start < data_end as u64 {
            return Err(damaged(format!(
                "element {i}'s data at byte {start} overlaps the bytes before it (which end at \
                 {data_end})"
            )));
        }
        if end > page.len() as u64 {
            return Err(damaged(format!(
                "element {i}'s data (bytes {start}..{end}) runs past the page's {} bytes",
                page.len()
            )));
        }
        data_end = end as usize;
        Ok((start as usize, end as usize))
    };
    let field = |i: usize, at: usize| {
        u32_at(page, PAGE_HEADER_SIZE + i * ELEMENT_SIZE + at).unwrap_or_default()
    };
    let node = match flags {
        BRANCH_PAGE => {
            if count == 0 {
                return Err(damaged("a branch page without elements".into()));
            }
            let mut elements = Vec::with_capacity(count);
            for i in 0..count {
                let (pos, ksize) = (field(i, 0), field(i, 4));
                let child = u64_at(page, PAGE_HEADER_SIZE + i * ELEMENT_SIZE + 8).unwrap_or(0);
                let (start, end) = take(i, pos, u64::from(ksize))?;
                elements.push(BranchElement {
                    key: &page[start..end],
                    child,
                });
            }
            check_ascending(elements.iter().map(|e| e.key), &damaged)?;
            Node::Branch(elements)
        }
        LEAF_PAGE => {
            let mut elements = Vec::with_capacity(count);
            for i in 0..count {
                let (eflags, pos, ksize, vsize) =
                    (field(i, 0), field(i, 4), field(i, 8), field(i, 12));
                let (start, end) = take(i, pos, u64::from(ksize) + u64::from(vsize))?;
                let split = start + ksize as usize;
                elements.push(LeafElement {
                    key: &page[start..split],
                    value: &page[split..end],
                    is_bucket: eflags & BUCKET_LEAF_FLAG != 0,
                });
            }
            check_ascending(elements.iter().map(|e| e.key), &damaged)?;
            Node::Leaf(elements)
        }
        other => {
            return Err(damaged(format!(
                "flags {other:#06x} are neither a branch nor a leaf page"
            )))
        }
    };
    Ok(node)
}

fn check_ascending<'k>(
    keys: impl Iterator<Item = &'k [u8]>,
    damaged: &dyn Fn(String) -> BoltError,
) -> Result<(), BoltError> {
    let mut previous: Option<&[u8]> = None;
    for (i, key) in keys.enumerate() {
        if previous.is_some_and(|p| p >= key) {
            return Err(damaged(format!(
                "key {i} ({}) is not above the key before it",
                show_key(key)
            )));
        }
        previous = Some(key);
    }
    Ok(())
}

/// A key as it reads in a message: text when it is printable, else hex, cut to a sane length.
pub(super) fn show_key(key: &[u8]) -> String {
    const MAX: usize = 80;
    let shown = &key[..key.len().min(MAX)];
    let more = if key.len() > MAX { "…" } else { "" };
    if shown.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}{more}", String::from_utf8_lossy(shown))
    } else {
        let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
        format!("0x{hex}{more}")
    }
}
