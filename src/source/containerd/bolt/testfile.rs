//! A tiny bbolt writer for the unit tests: lays out a tree of buckets the way bbolt's
//! `node.write` and `Bucket.write` do (element arrays, then keys and values in order; small
//! buckets without sub-buckets inline in their parent's value; pages larger than a page as
//! overflow runs), so the tests can build exact shapes and then damage them.

use std::collections::BTreeMap;

use super::page::{
    fnv1a64, BRANCH_PAGE, BUCKET_LEAF_FLAG, LEAF_PAGE, MAGIC, META_PAGE, NO_FREELIST,
    PAGE_HEADER_SIZE, VERSION,
};

/// What a test database holds: values and nested buckets by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tree {
    Value(Vec<u8>),
    Bucket(BTreeMap<Vec<u8>, Tree>),
}

pub type Entries = BTreeMap<Vec<u8>, Tree>;

/// How the file is laid out.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub page_size: u32,
    /// Elements per leaf page at most (small values force branch pages).
    pub leaf_max: usize,
    /// Children per branch page at most (at least 2).
    pub branch_max: usize,
    /// Inline buckets small enough (bbolt: under a quarter page, no sub-buckets).
    pub inline: bool,
    /// Write a (empty) freelist page, as containerd 1.6 does; else the meta says "none", as 1.7+.
    pub freelist: bool,
    /// The txid of the newer meta; the other meta gets `txid - 1`.
    pub txid: u64,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            page_size: 4096,
            leaf_max: 64,
            branch_max: 64,
            inline: true,
            freelist: false,
            txid: 7,
        }
    }
}

/// A written file and where things went.
pub struct Built {
    pub bytes: Vec<u8>,
    /// The top-level bucket's root page (of the newer meta).
    pub root: u64,
    pub high_water: u64,
}

struct Writer {
    layout: Layout,
    pages: Vec<u8>,
    next: u64,
}

impl Writer {
    fn new(layout: Layout) -> Self {
        let ps = layout.page_size as usize;
        let mut w = Writer {
            layout,
            pages: vec![0; 2 * ps],
            next: 2,
        };
        if layout.freelist {
            let id = w.alloc(1);
            w.put_header(id, 0x10, 0, 0);
        }
        w
    }

    fn ps(&self) -> usize {
        self.layout.page_size as usize
    }

    fn alloc(&mut self, count: u64) -> u64 {
        let id = self.next;
        self.next += count;
        self.pages.resize(self.next as usize * self.ps(), 0);
        id
    }

    fn put_header(&mut self, id: u64, flags: u16, count: u16, overflow: u32) {
        let at = id as usize * self.ps();
        self.pages[at..at + 8].copy_from_slice(&id.to_le_bytes());
        self.pages[at + 8..at + 10].copy_from_slice(&flags.to_le_bytes());
        self.pages[at + 10..at + 12].copy_from_slice(&count.to_le_bytes());
        self.pages[at + 12..at + 16].copy_from_slice(&overflow.to_le_bytes());
    }

    /// Writes `page` (header included) at a fresh run of pages; returns its id.
    fn put_page(&mut self, mut page: Vec<u8>) -> u64 {
        let ps = self.ps();
        let count = page.len().div_ceil(ps).max(1) as u64;
        let id = self.alloc(count);
        page[0..8].copy_from_slice(&id.to_le_bytes());
        page[12..16].copy_from_slice(&((count - 1) as u32).to_le_bytes());
        let at = id as usize * ps;
        self.pages[at..at + page.len()].copy_from_slice(&page);
        id
    }

    /// The value of a bucket entry: its header, and its page when inlined.
    fn bucket_value(&mut self, entries: &Entries) -> Vec<u8> {
        let elements = self.elements(entries);
        let has_buckets = elements.iter().any(|(_, _, flags)| *flags != 0);
        let inline_page = leaf_page(&elements);
        let mut value = Vec::new();
        if self.layout.inline && !has_buckets && 16 + inline_page.len() <= self.ps() / 4 {
            value.extend_from_slice(&0u64.to_le_bytes());
            value.extend_from_slice(&0u64.to_le_bytes());
            value.extend_from_slice(&inline_page);
        } else {
            let root = self.tree(&elements);
            value.extend_from_slice(&root.to_le_bytes());
            value.extend_from_slice(&0u64.to_le_bytes());
        }
        value
    }

    fn elements(&mut self, entries: &Entries) -> Vec<(Vec<u8>, Vec<u8>, u32)> {
        entries
            .iter()
            .map(|(k, t)| match t {
                Tree::Value(v) => (k.clone(), v.clone(), 0),
                Tree::Bucket(sub) => (k.clone(), self.bucket_value(sub), BUCKET_LEAF_FLAG),
            })
            .collect()
    }

    /// Writes the elements as leaves and branch levels above them; returns the root page.
    fn tree(&mut self, elements: &[(Vec<u8>, Vec<u8>, u32)]) -> u64 {
        let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
        if elements.is_empty() {
            level.push((Vec::new(), self.put_page(leaf_page(&[]))));
        }
        for chunk in elements.chunks(self.layout.leaf_max.max(1)) {
            let id = self.put_page(leaf_page(chunk));
            level.push((chunk[0].0.clone(), id));
        }
        while level.len() > 1 {
            let mut up = Vec::new();
            for chunk in level.chunks(self.layout.branch_max.max(2)) {
                let id = self.put_page(branch_page(chunk));
                up.push((chunk[0].0.clone(), id));
            }
            level = up;
        }
        level[0].1
    }

    fn put_meta(&mut self, index: u64, root: u64, high_water: u64, txid: u64, freelist: u64) {
        let ps = self.ps();
        let at = index as usize * ps;
        let page = meta_page(
            index,
            self.layout.page_size,
            root,
            freelist,
            high_water,
            txid,
        );
        self.pages[at..at + page.len()].copy_from_slice(&page);
    }
}

/// A leaf page image (header id and overflow filled in by `put_page`).
pub fn leaf_page(elements: &[(Vec<u8>, Vec<u8>, u32)]) -> Vec<u8> {
    let array = PAGE_HEADER_SIZE + 16 * elements.len();
    let mut page = vec![0u8; array];
    page[8..10].copy_from_slice(&LEAF_PAGE.to_le_bytes());
    page[10..12].copy_from_slice(&(elements.len() as u16).to_le_bytes());
    for (i, (k, v, flags)) in elements.iter().enumerate() {
        let at = PAGE_HEADER_SIZE + 16 * i;
        let pos = (page.len() - at) as u32;
        page[at..at + 4].copy_from_slice(&flags.to_le_bytes());
        page[at + 4..at + 8].copy_from_slice(&pos.to_le_bytes());
        page[at + 8..at + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
        page[at + 12..at + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
        page.extend_from_slice(k);
        page.extend_from_slice(v);
    }
    page
}

fn branch_page(children: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let array = PAGE_HEADER_SIZE + 16 * children.len();
    let mut page = vec![0u8; array];
    page[8..10].copy_from_slice(&BRANCH_PAGE.to_le_bytes());
    page[10..12].copy_from_slice(&(children.len() as u16).to_le_bytes());
    for (i, (k, child)) in children.iter().enumerate() {
        let at = PAGE_HEADER_SIZE + 16 * i;
        let pos = (page.len() - at) as u32;
        page[at..at + 4].copy_from_slice(&pos.to_le_bytes());
        page[at + 4..at + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&child.to_le_bytes());
        page.extend_from_slice(k);
    }
    page
}

/// A meta page image (header and meta, checksum computed).
pub fn meta_page(
    index: u64,
    page_size: u32,
    root: u64,
    freelist: u64,
    high_water: u64,
    txid: u64,
) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_HEADER_SIZE + 64];
    page[0..8].copy_from_slice(&index.to_le_bytes());
    page[8..10].copy_from_slice(&META_PAGE.to_le_bytes());
    let m = PAGE_HEADER_SIZE;
    page[m..m + 4].copy_from_slice(&MAGIC.to_le_bytes());
    page[m + 4..m + 8].copy_from_slice(&VERSION.to_le_bytes());
    page[m + 8..m + 12].copy_from_slice(&page_size.to_le_bytes());
    page[m + 16..m + 24].copy_from_slice(&root.to_le_bytes());
    page[m + 32..m + 40].copy_from_slice(&freelist.to_le_bytes());
    page[m + 40..m + 48].copy_from_slice(&high_water.to_le_bytes());
    page[m + 48..m + 56].copy_from_slice(&txid.to_le_bytes());
    let sum = fnv1a64(&page[m..m + 56]);
    page[m + 56..m + 64].copy_from_slice(&sum.to_le_bytes());
    page
}

/// Recomputes the checksum of meta page `index` after a test changed its fields.
pub fn fix_meta_checksum(bytes: &mut [u8], index: usize, page_size: usize) {
    let m = index * page_size + PAGE_HEADER_SIZE;
    let sum = fnv1a64(&bytes[m..m + 56]);
    bytes[m + 56..m + 64].copy_from_slice(&sum.to_le_bytes());
}

/// Overwrites the u64 meta field at byte `field` of the meta (after the page header) of meta
/// page `index`, and fixes the checksum.
pub fn set_meta_u64(bytes: &mut [u8], index: usize, page_size: usize, field: usize, value: u64) {
    let at = index * page_size + PAGE_HEADER_SIZE + field;
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    fix_meta_checksum(bytes, index, page_size);
}

/// Meta field offsets, for [`set_meta_u64`].
pub const META_ROOT: usize = 16;
pub const META_FREELIST: usize = 32;
pub const META_HIGH_WATER: usize = 40;

/// One database with both metas describing `entries`.
pub fn build(entries: &Entries, layout: Layout) -> Built {
    build_two(entries, entries, layout)
}

/// One database whose older meta (txid - 1) describes `old` and newer meta (txid) `new`, each
/// tree written separately, as after a commit that rewrote everything.
pub fn build_two(old: &Entries, new: &Entries, layout: Layout) -> Built {
    let mut w = Writer::new(layout);
    let freelist = if layout.freelist { 2 } else { NO_FREELIST };
    let old_elements = w.elements(old);
    let old_root = w.tree(&old_elements);
    let old_high_water = w.next;
    let (root, high_water) = if old == new {
        (old_root, old_high_water)
    } else {
        let elements = w.elements(new);
        (w.tree(&elements), w.next)
    };
    let txid = layout.txid.max(1);
    let newer = txid % 2;
    w.put_meta(newer, root, high_water, txid, freelist);
    w.put_meta(1 - newer, old_root, old_high_water, txid - 1, freelist);
    Built {
        bytes: w.pages,
        root,
        high_water,
    }
}

/// A database whose top-level tree is `depth` branch pages stacked on one leaf, each with a
/// single child: legal for no real bbolt, and deeper than any.
pub fn branch_chain(depth: usize, page_size: u32) -> Vec<u8> {
    let layout = Layout {
        page_size,
        ..Layout::default()
    };
    let mut w = Writer::new(layout);
    let mut child = w.put_page(leaf_page(&[(b"k".to_vec(), b"v".to_vec(), 0)]));
    for _ in 0..depth {
        child = w.put_page(branch_page(&[(b"k".to_vec(), child)]));
    }
    let high_water = w.next;
    w.put_meta(0, child, high_water, 4, NO_FREELIST);
    w.put_meta(1, child, high_water, 3, NO_FREELIST);
    w.pages
}

/// Builds entries from a compact description (for readable tests).
pub fn value(v: &[u8]) -> Tree {
    Tree::Value(v.to_vec())
}

pub fn bucket<const N: usize>(items: [(&[u8], Tree); N]) -> Tree {
    Tree::Bucket(items.into_iter().map(|(k, t)| (k.to_vec(), t)).collect())
}

pub fn entries<const N: usize>(items: [(&[u8], Tree); N]) -> Entries {
    items.into_iter().map(|(k, t)| (k.to_vec(), t)).collect()
}
