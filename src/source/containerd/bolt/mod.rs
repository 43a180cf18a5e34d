//! A read-only reader of Go bbolt files (containerd's `meta.db`, the overlayfs snapshotter's
//! `metadata.db`) that needs no lock and never writes.
//!
//! containerd holds `flock(LOCK_EX)` on its databases for as long as it runs, so bbolt's own
//! read-only mode (which takes `LOCK_SH`) would wait forever, and the Rust crates that read the
//! format either take the lock, need the freelist that containerd 1.7+ no longer writes, or
//! misread branch pages. This reader copies the file into memory and checks that the copy is
//! one committed transaction:
//!
//! 1. read both meta pages, validate each (magic, version, FNV-1a checksum, sane fields) and take
//!    the valid one with the higher txid;
//! 2. read the file up to that meta's high-water mark;
//! 3. read both metas again: if the best txid moved, a commit landed while we read, and pages of
//!    our tree may have been reused, so try again (a bounded number of times, after a short
//!    pause); otherwise the copy is consistent.
//!
//! Why step 3 suffices: bbolt has one writer, which writes a transaction's data pages, syncs,
//! then writes one of the two meta pages. Pages of the tree that transaction N's meta describes
//! are freed by commit N+1 and can be reused, at the earliest, by commit N+2's data writes,
//! which begin only after commit N+1's meta is written. A second meta read that still finds N
//! as the best valid meta therefore proves that no page of tree N was overwritten before it;
//! a torn meta fails its checksum and is never the best. (A reader inside containerd would
//! hold back reuse for longer, never shorter.)
//!
//! Everything read from the copy is checked before use: page ids against the high-water mark
//! and the file, page spans (overflow), element offsets and lengths, key order, tree depth,
//! bucket nesting and cycles. No input makes it panic (the `bolt_reader` fuzz target); a
//! damaged file gives [`BoltError::Damaged`] naming the page. The freelist is never needed.

mod page;

#[cfg(test)]
pub(crate) mod testfile;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

pub use page::Meta;
use page::{
    parse_meta, parse_node, show_key, u32_at, u64_at, Node, BUCKET_HEADER_SIZE, LEAF_PAGE,
    MAX_PAGE_SIZE, MIN_PAGE_SIZE, PAGE_HEADER_SIZE,
};

/// The deepest tree (branch levels above the leaves) accepted. A bbolt page holds at least two
/// keys, so real trees stay far below this; deeper means a cycle or a forged file.
pub const MAX_TREE_DEPTH: usize = 32;
/// The deepest bucket nesting accepted (containerd's deepest is 7: `v1/<ns>/content/blob/
/// <digest>/labels`, and the snapshotter's 4).
pub const MAX_NESTING: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a bbolt database: {0}")]
    NotBolt(String),
    #[error("damaged bbolt database: {0}")]
    Damaged(String),
    #[error(
        "no consistent snapshot after {attempts} reads: a commit landed during each (txid \
         {first_txid} at the first read, {last_txid} at the last); the database is being \
         written continuously"
    )]
    Unsettled {
        attempts: u32,
        first_txid: u64,
        last_txid: u64,
    },
}

/// How hard [`Snapshot::read`] tries to get a consistent copy of a database being written.
#[derive(Clone, Copy, Debug)]
pub struct ReadPolicy {
    /// Reads before giving up (at least 1).
    pub attempts: u32,
    /// The pause after the first torn read; it grows by this much after each further one, so a
    /// burst of commits is waited out rather than raced.
    pub pause: Duration,
}

impl Default for ReadPolicy {
    /// 10 reads, pausing 1, 2, … 9 ms between them: at most ~45 ms of waiting. A meta.db of a
    /// few MB is read in about a millisecond, while containerd commits at most every few
    /// milliseconds (each commit syncs to disk twice), so a second read almost always succeeds.
    fn default() -> Self {
        ReadPolicy {
            attempts: 10,
            pause: Duration::from_millis(1),
        }
    }
}

/// Where the bytes come from: a file, or (in tests) a source that changes between reads.
pub(crate) trait ReadAt {
    /// Fills as much of `buf` from `offset` as the source holds; returns how much that was
    /// (less than `buf.len()` only at the end of the source).
    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize>;

    /// The source's current length in bytes.
    fn len(&self) -> std::io::Result<u64>;
}

impl ReadAt for [u8] {
    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let start = usize::try_from(offset).map_or(self.len(), |o| o.min(self.len()));
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }

    fn len(&self) -> std::io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
}

impl ReadAt for File {
    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn len(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// One committed transaction of a bbolt database, copied into memory.
pub struct Snapshot {
    data: Vec<u8>,
    meta: Meta,
    /// Set when the read needed more than one attempt (how many), for callers that report it.
    attempts: u32,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("meta", &self.meta)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl Snapshot {
    /// Reads a consistent snapshot of the database at `path` with the default [`ReadPolicy`].
    /// Takes no lock and opens the file read-only.
    pub fn read(path: &Path) -> Result<Snapshot, BoltError> {
        Self::read_with(path, ReadPolicy::default())
    }

    pub fn read_with(path: &Path, policy: ReadPolicy) -> Result<Snapshot, BoltError> {
        let file = File::open(path)?;
        read_consistent(&file, policy)
    }

    /// A snapshot of a database already in memory (a copy made earlier, or a test's bytes):
    /// the best valid meta describes it, with no second read.
    pub fn from_bytes(data: Vec<u8>) -> Result<Snapshot, BoltError> {
        let (_, meta) = best_meta(&data[..])?;
        let mut data = data;
        data.truncate(visible_len(&meta, data.len() as u64));
        Ok(Snapshot {
            data,
            meta,
            attempts: 1,
        })
    }

    /// The meta page this snapshot was read through.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn txid(&self) -> u64 {
        self.meta.txid
    }

    /// How many reads [`Snapshot::read`] needed (1 when no commit interfered).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The top-level bucket, which holds the named root buckets.
    pub fn root(&self) -> Bucket<'_> {
        Bucket {
            snapshot: self,
            root: Root::Page(self.meta.root),
            nesting: 0,
            ancestors: vec![self.meta.root],
        }
    }

    /// The bucket at `path` (`[b"v1", b"moby", b"images"]`), or `None` when some step is
    /// missing. A step that names a plain value rather than a bucket is also `None`, as in bbolt.
    pub fn bucket(&self, path: &[&[u8]]) -> Result<Option<Bucket<'_>>, BoltError> {
        self.root().bucket_at(path)
    }

    fn page_size(&self) -> u64 {
        u64::from(self.meta.page_size)
    }

    /// The bytes of tree page `id`, with its overflow pages, after checking that it lies below
    /// the high-water mark and inside the file, and that it names itself `id`.
    fn page(&self, id: u64) -> Result<&[u8], BoltError> {
        let damaged = |why: String| Err(BoltError::Damaged(format!("page {id}: {why}")));
        let high_water = self.meta.high_water;
        if id < 2 {
            return damaged("a meta page used as a tree page".into());
        }
        if id >= high_water {
            return damaged(format!("beyond the high-water mark ({high_water} pages)"));
        }
        let past_end = || {
            BoltError::Damaged(format!(
                "page {id}: past the end of the file ({} bytes)",
                self.data.len()
            ))
        };
        let start = id
            .checked_mul(self.page_size())
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(past_end)?;
        let header = start
            .checked_add(PAGE_HEADER_SIZE)
            .and_then(|end| self.data.get(start..end))
            .ok_or_else(past_end)?;
        let overflow = u32_at(header, 12).unwrap_or_default();
        let self_id = u64_at(header, 0).unwrap_or_default();
        if self_id != id {
            return damaged(format!("its header names page {self_id}"));
        }
        let span = u64::from(overflow) + 1;
        if id + span > high_water {
            return damaged(format!(
                "{overflow} overflow pages run past the high-water mark ({high_water} pages)"
            ));
        }
        let end = (id + span).saturating_mul(self.page_size());
        if end > self.data.len() as u64 {
            return damaged(format!(
                "{overflow} overflow pages run past the end of the file ({} bytes)",
                self.data.len()
            ));
        }
        Ok(&self.data[start..end as usize])
    }

    fn node(&self, id: u64) -> Result<Node<'_>, BoltError> {
        parse_node(self.page(id)?, &|| format!("page {id}"))
    }

    /// How many page-size units the copy holds (the size of a visited-pages map).
    fn page_count(&self) -> usize {
        (self.data.len() as u64 / self.page_size()) as usize
    }
}

/// The bytes of the file that belong to a transaction: up to its high-water mark, or less when
/// the file is shorter (pages past its end are reported when something refers to them).
fn visible_len(meta: &Meta, file_len: u64) -> usize {
    let hwm_bytes = meta.high_water.saturating_mul(u64::from(meta.page_size));
    hwm_bytes.min(file_len) as usize
}

/// Reads the page size and both metas through `source` and returns the page size and the best
/// meta: the valid one with the higher txid.
fn best_meta<S: ReadAt + ?Sized>(source: &S) -> Result<(u32, Meta), BoltError> {
    // bbolt's own search: the first meta's page size if it is valid, else the second meta's,
    // looked for at every power of two from 1 KiB to 16 MiB.
    let mut head = vec![0u8; 4096];
    let n = source.read_at_most(&mut head, 0)?;
    head.truncate(n);
    let mut problems = Vec::new();
    let page_size = match parse_meta(&head, 0) {
        Ok(meta) => meta.page_size,
        Err(problem) => {
            problems.push(problem);
            let mut found = None;
            let mut at = MIN_PAGE_SIZE;
            while at <= MAX_PAGE_SIZE {
                let mut buf = vec![0u8; PAGE_HEADER_SIZE + 64];
                let n = source.read_at_most(&mut buf, u64::from(at))?;
                if n < buf.len() {
                    break;
                }
                match parse_meta(&buf, 1) {
                    Ok(meta) if meta.page_size == at => {
                        found = Some(at);
                        break;
                    }
                    // A candidate with the magic is worth reporting; the others are just
                    // bytes at an offset that is not a page boundary.
                    Err(problem) if !problem.contains("no bbolt magic") => {
                        problems.push(format!("at byte {at}: {problem}"))
                    }
                    _ => {}
                }
                at *= 2;
            }
            match found {
                Some(size) => size,
                None => {
                    return Err(BoltError::NotBolt(format!(
                        "{}; no valid second meta page at any page size from {MIN_PAGE_SIZE} to \
                         {MAX_PAGE_SIZE} bytes",
                        problems.join("; ")
                    )))
                }
            }
        }
    };
    problems.clear();
    let mut metas = Vec::with_capacity(2);
    for index in 0..2u64 {
        let mut buf = vec![0u8; PAGE_HEADER_SIZE + 64];
        let n = source.read_at_most(&mut buf, index * u64::from(page_size))?;
        buf.truncate(n);
        match parse_meta(&buf, index) {
            Ok(meta) if meta.page_size == page_size => metas.push(meta),
            Ok(meta) => problems.push(format!(
                "meta page {index} gives a page size of {}, but sits at {page_size}",
                meta.page_size
            )),
            Err(problem) => problems.push(problem),
        }
    }
    match metas.into_iter().max_by_key(|m| m.txid) {
        Some(meta) => Ok((page_size, meta)),
        None => Err(BoltError::NotBolt(problems.join("; "))),
    }
}

/// Steps 1–3 of the module doc, retried under `policy`.
pub(crate) fn read_consistent<S: ReadAt + ?Sized>(
    source: &S,
    policy: ReadPolicy,
) -> Result<Snapshot, BoltError> {
    let attempts = policy.attempts.max(1);
    let mut first_txid = None;
    let mut last_txid = 0;
    for attempt in 1..=attempts {
        let (_, before) = best_meta(source)?;
        first_txid.get_or_insert(before.txid);
        // Never more than the file holds: a forged high-water mark must not size the buffer.
        let mut data = vec![0u8; visible_len(&before, source.len()?)];
        let n = source.read_at_most(&mut data, 0)?;
        data.truncate(n);
        let (_, after) = best_meta(source)?;
        last_txid = after.txid;
        if after == before {
            return Ok(Snapshot {
                data,
                meta: before,
                attempts: attempt,
            });
        }
        if attempt < attempts {
            std::thread::sleep(policy.pause * attempt);
        }
    }
    Err(BoltError::Unsettled {
        attempts,
        first_txid: first_txid.unwrap_or_default(),
        last_txid,
    })
}

/// Where a bucket's tree starts.
#[derive(Clone, Copy, Debug)]
enum Root<'s> {
    Page(u64),
    /// An inline bucket: its one leaf page is stored in its parent's value.
    Inline(&'s [u8]),
}

/// A bucket of a [`Snapshot`]: keys in byte order, each holding a value or a nested bucket.
#[derive(Clone, Debug)]
pub struct Bucket<'s> {
    snapshot: &'s Snapshot,
    root: Root<'s>,
    nesting: usize,
    /// The root pages of this bucket and those enclosing it: a nested bucket rooted at one of
    /// them is a cycle.
    ancestors: Vec<u64>,
}

/// What a key holds.
#[derive(Clone, Debug)]
pub enum Item<'s> {
    Value(&'s [u8]),
    Bucket(Bucket<'s>),
}

impl<'s> Item<'s> {
    pub fn as_value(&self) -> Option<&'s [u8]> {
        match self {
            Item::Value(v) => Some(v),
            Item::Bucket(_) => None,
        }
    }

    pub fn into_bucket(self) -> Option<Bucket<'s>> {
        match self {
            Item::Value(_) => None,
            Item::Bucket(b) => Some(b),
        }
    }
}

impl<'s> Bucket<'s> {
    /// What `key` holds, or `None` when the bucket has no such key.
    pub fn item(&self, key: &[u8]) -> Result<Option<Item<'s>>, BoltError> {
        let mut node = self.root_node()?;
        let mut depth = 0;
        loop {
            match node {
                Node::Leaf(elements) => {
                    let Ok(i) = elements.binary_search_by(|e| e.key.cmp(key)) else {
                        return Ok(None);
                    };
                    let e = elements[i];
                    return self.make_item(e.key, e.value, e.is_bucket).map(Some);
                }
                Node::Branch(elements) => {
                    // bbolt's cursor: the last child whose first key is at most `key`, or the
                    // first child when `key` sorts before them all.
                    let i = elements.partition_point(|e| e.key <= key).saturating_sub(1);
                    depth += 1;
                    if depth > MAX_TREE_DEPTH {
                        return Err(self.too_deep());
                    }
                    node = self.snapshot.node(elements[i].child)?;
                }
            }
        }
    }

    /// The plain value under `key`; `None` when the key is missing or holds a bucket (as bbolt's
    /// `Get`).
    pub fn get(&self, key: &[u8]) -> Result<Option<&'s [u8]>, BoltError> {
        Ok(self.item(key)?.and_then(|i| i.as_value()))
    }

    /// The nested bucket under `key`; `None` when the key is missing or holds a plain value.
    pub fn bucket(&self, key: &[u8]) -> Result<Option<Bucket<'s>>, BoltError> {
        Ok(self.item(key)?.and_then(Item::into_bucket))
    }

    /// The bucket reached by following `path` from this one.
    pub fn bucket_at(&self, path: &[&[u8]]) -> Result<Option<Bucket<'s>>, BoltError> {
        let mut bucket = self.clone();
        for key in path {
            match bucket.bucket(key)? {
                Some(next) => bucket = next,
                None => return Ok(None),
            }
        }
        Ok(Some(bucket))
    }

    /// Every key in ascending order with what it holds. Walking the whole tree also checks it:
    /// every page is visited once, each key lies within the range its branch keys give it, so
    /// that what this returns is exactly what [`Bucket::item`] finds.
    pub fn entries(&self) -> Result<Vec<(&'s [u8], Item<'s>)>, BoltError> {
        let mut out = Vec::new();
        self.for_each(|key, item| {
            out.push((key, item));
            Ok(())
        })?;
        Ok(out)
    }

    /// The keys in ascending order (values and buckets alike).
    pub fn keys(&self) -> Result<Vec<&'s [u8]>, BoltError> {
        Ok(self.entries()?.into_iter().map(|(k, _)| k).collect())
    }

    /// Calls `f` on every key in ascending order (see [`Bucket::entries`]).
    pub fn for_each(
        &self,
        mut f: impl FnMut(&'s [u8], Item<'s>) -> Result<(), BoltError>,
    ) -> Result<(), BoltError> {
        struct Pending<'s> {
            page: u64,
            low: Option<&'s [u8]>,
            high: Option<&'s [u8]>,
            depth: usize,
        }
        let snapshot = self.snapshot;
        let mut visited = PageSet::new(snapshot.page_count());
        let mut stack: Vec<Pending<'s>> = Vec::new();
        let mut previous: Option<&'s [u8]> = None;
        let mut visit_leaf = |elements: &[page::LeafElement<'s>],
                              low: Option<&'s [u8]>,
                              high: Option<&'s [u8]>,
                              f: &mut dyn FnMut(&'s [u8], Item<'s>) -> Result<(), BoltError>|
         -> Result<(), BoltError> {
            for e in elements {
                let out_of_range = low.is_some_and(|l| e.key < l)
                    || high.is_some_and(|h| e.key >= h)
                    || previous.is_some_and(|p| e.key <= p);
                if out_of_range {
                    return Err(BoltError::Damaged(format!(
                        "key {} lies outside the range its branch pages give it",
                        show_key(e.key)
                    )));
                }
                previous = Some(e.key);
                f(e.key, self.make_item(e.key, e.value, e.is_bucket)?)?;
            }
            Ok(())
        };
        match self.root {
            Root::Inline(_) => {
                return match self.root_node()? {
                    Node::Leaf(elements) => visit_leaf(&elements, None, None, &mut f),
                    // `root_node` refuses this already; kept as an error, never a panic.
                    Node::Branch(_) => Err(BoltError::Damaged(
                        "an inline bucket with a branch page".into(),
                    )),
                };
            }
            Root::Page(id) => stack.push(Pending {
                page: id,
                low: None,
                high: None,
                depth: 0,
            }),
        }
        while let Some(p) = stack.pop() {
            if p.depth > MAX_TREE_DEPTH {
                return Err(self.too_deep());
            }
            let bytes = snapshot.page(p.page)?;
            let span = bytes.len() as u64 / snapshot.page_size();
            if !visited.insert_span(p.page, span) {
                return Err(BoltError::Damaged(format!(
                    "page {} is reached twice in one bucket's tree (a cycle, or pages shared)",
                    p.page
                )));
            }
            match parse_node(bytes, &|| format!("page {}", p.page))? {
                Node::Leaf(elements) => visit_leaf(&elements, p.low, p.high, &mut f)?,
                Node::Branch(elements) => {
                    // Children go on the stack last first, so they come off in key order.
                    for i in (0..elements.len()).rev() {
                        let low = if i == 0 { p.low } else { Some(elements[i].key) };
                        let high = elements.get(i + 1).map(|e| e.key).or(p.high);
                        if i > 0
                            && (p.low.is_some_and(|l| elements[i].key < l)
                                || p.high.is_some_and(|h| elements[i].key >= h))
                        {
                            return Err(BoltError::Damaged(format!(
                                "page {}: branch key {} lies outside its parent's range",
                                p.page,
                                show_key(elements[i].key)
                            )));
                        }
                        stack.push(Pending {
                            page: elements[i].child,
                            low,
                            high,
                            depth: p.depth + 1,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn root_node(&self) -> Result<Node<'s>, BoltError> {
        match self.root {
            Root::Page(id) => self.snapshot.node(id),
            Root::Inline(page) => {
                let what = || "an inline bucket".to_string();
                if u16_at_or_zero(page, 8) != LEAF_PAGE {
                    return Err(BoltError::Damaged(format!(
                        "{}: its page is not a leaf",
                        what()
                    )));
                }
                parse_node(page, &what)
            }
        }
    }

    fn make_item(
        &self,
        key: &'s [u8],
        value: &'s [u8],
        is_bucket: bool,
    ) -> Result<Item<'s>, BoltError> {
        if !is_bucket {
            return Ok(Item::Value(value));
        }
        let damaged = |why: &str| {
            BoltError::Damaged(format!("the bucket under key {}: {why}", show_key(key)))
        };
        if matches!(self.root, Root::Inline(_)) {
            // bbolt inlines a bucket only when it holds no buckets itself (`inlineable`).
            return Err(damaged(
                "nested in an inline bucket, which bbolt never writes",
            ));
        }
        if self.nesting + 1 > MAX_NESTING {
            return Err(damaged(&format!(
                "nested deeper than {MAX_NESTING} buckets"
            )));
        }
        let Some(root_page) = u64_at(value, 0) else {
            return Err(damaged("its value is shorter than a bucket header"));
        };
        let mut ancestors = self.ancestors.clone();
        let root = if root_page == 0 {
            let page = &value[BUCKET_HEADER_SIZE..];
            if page.len() < PAGE_HEADER_SIZE {
                return Err(damaged("an inline bucket without a page"));
            }
            Root::Inline(page)
        } else {
            if ancestors.contains(&root_page) {
                return Err(damaged(&format!(
                    "rooted at page {root_page}, which roots a bucket enclosing it (a cycle)"
                )));
            }
            ancestors.push(root_page);
            Root::Page(root_page)
        };
        Ok(Item::Bucket(Bucket {
            snapshot: self.snapshot,
            root,
            nesting: self.nesting + 1,
            ancestors,
        }))
    }

    fn too_deep(&self) -> BoltError {
        BoltError::Damaged(format!(
            "a bucket's tree is deeper than {MAX_TREE_DEPTH} levels (a cycle?)"
        ))
    }
}

fn u16_at_or_zero(b: &[u8], at: usize) -> u16 {
    page::u16_at(b, at).unwrap_or(0)
}

/// Which pages a walk has seen, one bit each.
struct PageSet(Vec<u64>);

impl PageSet {
    fn new(pages: usize) -> Self {
        PageSet(vec![0; pages.div_ceil(64)])
    }

    /// Marks pages `first .. first + span`; false if any was already marked (or is outside the
    /// set, which [`Snapshot::page`] has already ruled out).
    fn insert_span(&mut self, first: u64, span: u64) -> bool {
        for id in first..first + span {
            let (word, bit) = ((id / 64) as usize, id % 64);
            let Some(w) = self.0.get_mut(word) else {
                return false;
            };
            if *w & (1 << bit) != 0 {
                return false;
            }
            *w |= 1 << bit;
        }
        true
    }
}
