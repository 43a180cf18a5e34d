use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::testfile::{self, bucket, entries, value, Entries, Layout, Tree};
use super::*;

/// Everything under `b`, as a [`Tree`] map, read by walking (which also checks the tree).
fn read_all(b: &Bucket<'_>) -> Result<Entries, BoltError> {
    let mut out = BTreeMap::new();
    for (k, item) in b.entries()? {
        let t = match item {
            Item::Value(v) => Tree::Value(v.to_vec()),
            Item::Bucket(sub) => Tree::Bucket(read_all(&sub)?),
        };
        out.insert(k.to_vec(), t);
    }
    Ok(out)
}

/// Every key of `model` found by lookup with the right kind and value, and a few absent keys
/// not found.
fn check_lookups(b: &Bucket<'_>, model: &Entries) {
    for (k, t) in model {
        match (t, b.item(k).unwrap()) {
            (Tree::Value(v), Some(Item::Value(got))) => assert_eq!(got, &v[..]),
            (Tree::Bucket(sub), Some(Item::Bucket(got))) => check_lookups(&got, sub),
            (want, got) => panic!("key {}: want {want:?}, got {got:?}", show_key(k)),
        }
        let mut absent = k.clone();
        absent.push(0xff);
        if !model.contains_key(&absent) {
            assert!(b.item(&absent).unwrap().is_none());
        }
    }
    assert!(b.item(b"").unwrap().is_none() || model.contains_key(&b""[..]));
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_tree(rng: &mut Rng, depth: usize, page_size: u32) -> Entries {
    let mut out = BTreeMap::new();
    let n = rng.below(if depth == 0 { 40 } else { 12 }) + 1;
    for _ in 0..n {
        let key_len = 1 + rng.below(24) as usize;
        let key: Vec<u8> = (0..key_len).map(|_| b'a' + rng.below(26) as u8).collect();
        let t = if depth < 4 && rng.below(4) == 0 {
            Tree::Bucket(random_tree(rng, depth + 1, page_size))
        } else {
            // Now and then a value larger than a page, which needs overflow pages.
            let len = match rng.below(10) {
                0 => page_size as usize + rng.below(3 * u64::from(page_size)) as usize,
                1 => 0,
                _ => rng.below(64) as usize,
            };
            Tree::Value((0..len).map(|_| rng.next() as u8).collect())
        };
        out.insert(key, t);
    }
    out
}

#[test]
fn random_trees_read_back_in_every_layout() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut layouts = Vec::new();
    for page_size in [1024, 4096] {
        for (leaf_max, branch_max) in [(2, 2), (3, 4), (64, 64)] {
            for inline in [false, true] {
                for freelist in [false, true] {
                    layouts.push(Layout {
                        page_size,
                        leaf_max,
                        branch_max,
                        inline,
                        freelist,
                        txid: 2 + rng.below(1000),
                    });
                }
            }
        }
    }
    for layout in layouts {
        for _ in 0..4 {
            let model = random_tree(&mut rng, 0, layout.page_size);
            let built = testfile::build(&model, layout);
            let snap = Snapshot::from_bytes(built.bytes).unwrap();
            assert_eq!(snap.meta().page_size, layout.page_size);
            assert_eq!(snap.meta().freelist.is_some(), layout.freelist);
            assert_eq!(read_all(&snap.root()).unwrap(), model, "{layout:?}");
            check_lookups(&snap.root(), &model);
        }
    }
}

#[test]
fn nested_paths_values_and_buckets() {
    let model = entries([(
        b"v1",
        bucket([
            (b"version", value(&[6])),
            (
                b"moby",
                bucket([(b"images", bucket([(b"docker.io/library/a:1", value(b"x"))]))]),
            ),
        ]),
    )]);
    for inline in [false, true] {
        let layout = Layout {
            inline,
            ..Layout::default()
        };
        let snap = Snapshot::from_bytes(testfile::build(&model, layout).bytes).unwrap();
        let images = snap.bucket(&[b"v1", b"moby", b"images"]).unwrap().unwrap();
        // A small bucket without sub-buckets is stored in its parent's value when inlining.
        assert_eq!(matches!(images.root, Root::Inline(_)), inline);
        assert_eq!(images.keys().unwrap(), vec![&b"docker.io/library/a:1"[..]]);
        assert_eq!(
            images.get(b"docker.io/library/a:1").unwrap(),
            Some(&b"x"[..])
        );
        let v1 = snap.bucket(&[b"v1"]).unwrap().unwrap();
        assert_eq!(v1.get(b"version").unwrap(), Some(&[6u8][..]));
        // A value is not a bucket and a bucket is not a value, as in bbolt.
        assert!(v1.bucket(b"version").unwrap().is_none());
        assert!(v1.get(b"moby").unwrap().is_none());
        assert!(snap.bucket(&[b"v1", b"version", b"x"]).unwrap().is_none());
        assert!(snap.bucket(&[b"v2"]).unwrap().is_none());
        assert!(snap.bucket(&[b"v1", b"moby", b"nope"]).unwrap().is_none());
    }
}

#[test]
fn values_larger_than_a_page_span_overflow_pages() {
    let big: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
    let model = entries([(b"a", value(b"small")), (b"big", Tree::Value(big.clone()))]);
    let built = testfile::build(&model, Layout::default());
    let root_at = built.root as usize * 4096;
    let overflow = u32::from_le_bytes(built.bytes[root_at + 12..root_at + 16].try_into().unwrap());
    assert_eq!(overflow, 3, "the leaf spans four pages");
    let snap = Snapshot::from_bytes(built.bytes).unwrap();
    assert_eq!(snap.root().get(b"big").unwrap(), Some(&big[..]));
    assert_eq!(read_all(&snap.root()).unwrap(), model);
}

/// Two versions of a small tree: the newer meta points at `new`.
fn two_versions() -> (Entries, Entries, testfile::Built) {
    let old = entries([(b"k", value(b"old"))]);
    let new = entries([(b"k", value(b"new")), (b"n", value(b"2"))]);
    let built = testfile::build_two(&old, &new, Layout::default());
    (old, new, built)
}

fn damage_meta_checksum(bytes: &mut [u8], index: usize) {
    bytes[index * 4096 + PAGE_HEADER_SIZE + 60] ^= 0x40;
}

#[test]
fn the_newer_valid_meta_wins_and_a_bad_one_falls_back() {
    let (old, new, built) = two_versions();
    let read = |bytes: Vec<u8>| {
        let snap = Snapshot::from_bytes(bytes).unwrap();
        (snap.txid(), read_all(&snap.root()).unwrap())
    };
    assert_eq!(read(built.bytes.clone()), (7, new.clone()));
    // txid 7 lives in meta page 1 (txid % 2), txid 6 in meta page 0.
    let mut newer_bad = built.bytes.clone();
    damage_meta_checksum(&mut newer_bad, 1);
    assert_eq!(read(newer_bad), (6, old.clone()));
    let mut older_bad = built.bytes.clone();
    damage_meta_checksum(&mut older_bad, 0);
    assert_eq!(read(older_bad), (7, new));
    // A meta with a bad magic, version or page flags is passed over just the same.
    let mut bad_magic = built.bytes.clone();
    bad_magic[4096 + PAGE_HEADER_SIZE] ^= 1;
    assert_eq!(read(bad_magic).0, 6);
    let mut bad_version = built.bytes.clone();
    bad_version[4096 + PAGE_HEADER_SIZE + 4] = 3;
    testfile::fix_meta_checksum(&mut bad_version, 1, 4096);
    assert_eq!(read(bad_version).0, 6);
}

#[test]
fn both_metas_bad_is_not_a_database() {
    let (_, _, built) = two_versions();
    let mut bytes = built.bytes;
    damage_meta_checksum(&mut bytes, 0);
    damage_meta_checksum(&mut bytes, 1);
    let err = Snapshot::from_bytes(bytes).unwrap_err().to_string();
    assert!(err.starts_with("not a bbolt database"), "{err}");
    assert!(err.contains("meta page 0 fails its checksum"), "{err}");
    assert!(err.contains("meta page 1"), "{err}");
    for junk in [
        Vec::new(),
        vec![0u8; 10],
        vec![0u8; 8192],
        vec![0xa5; 20000],
    ] {
        let err = Snapshot::from_bytes(junk).unwrap_err();
        assert!(matches!(err, BoltError::NotBolt(_)), "{err}");
    }
}

#[test]
fn meta_fields_out_of_range_are_refused() {
    let (_, _, built) = two_versions();
    let high_water = built.high_water;
    for (field, value, why) in [
        (testfile::META_ROOT, high_water, "root bucket at page"),
        (testfile::META_ROOT, 1, "root bucket at page 1"),
        (testfile::META_FREELIST, high_water + 3, "freelist at page"),
        (testfile::META_HIGH_WATER, 1, "outside 2..1"),
    ] {
        let mut bytes = built.bytes.clone();
        testfile::set_meta_u64(&mut bytes, 0, 4096, field, value);
        testfile::set_meta_u64(&mut bytes, 1, 4096, field, value);
        let err = Snapshot::from_bytes(bytes).unwrap_err().to_string();
        assert!(err.contains(why), "{why}: {err}");
    }
    // A page size that does not match where the second meta sits.
    let mut bytes = built.bytes.clone();
    damage_meta_checksum(&mut bytes, 0);
    bytes[4096 + PAGE_HEADER_SIZE + 8..4096 + PAGE_HEADER_SIZE + 12]
        .copy_from_slice(&8192u32.to_le_bytes());
    testfile::fix_meta_checksum(&mut bytes, 1, 4096);
    assert!(Snapshot::from_bytes(bytes).is_err());
}

#[test]
fn the_second_meta_alone_gives_the_page_size() {
    for page_size in [1024u32, 2048, 8192, 16384] {
        let model = entries([(b"a", value(b"1")), (b"b", bucket([(b"c", value(b"2"))]))]);
        let layout = Layout {
            page_size,
            ..Layout::default()
        };
        let mut bytes = testfile::build(&model, layout).bytes;
        bytes[PAGE_HEADER_SIZE] ^= 0xff; // meta 0's magic
        let snap = Snapshot::from_bytes(bytes).unwrap();
        assert_eq!(snap.meta().page_size, page_size);
        assert_eq!(read_all(&snap.root()).unwrap(), model);
    }
}

#[test]
fn truncated_files_fail_cleanly() {
    let mut rng = Rng(77);
    let model = random_tree(&mut rng, 0, 1024);
    let layout = Layout {
        page_size: 1024,
        leaf_max: 3,
        branch_max: 3,
        ..Layout::default()
    };
    let bytes = testfile::build(&model, layout).bytes;
    let mut damaged = 0;
    for len in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
        match Snapshot::from_bytes(bytes[..len].to_vec()) {
            Err(BoltError::NotBolt(_)) => assert!(len < 2 * 1024, "metas intact at {len}"),
            Err(e) => panic!("{len}: {e}"),
            Ok(snap) => match read_all(&snap.root()) {
                Ok(all) => panic!("{len} of {} bytes read as {} keys", bytes.len(), all.len()),
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.contains("past the end of the file"), "{len}: {e}");
                    damaged += 1;
                }
            },
        }
    }
    assert!(damaged > 10);
}

/// A top-level tree with a branch root over two-key leaves, and the root page's offset.
fn branchy() -> (Entries, Vec<u8>, usize) {
    let model: Entries = (0..12u8)
        .map(|i| (vec![b'a' + i], Tree::Value(vec![i; 3])))
        .collect();
    let layout = Layout {
        leaf_max: 2,
        branch_max: 8,
        ..Layout::default()
    };
    let built = testfile::build(&model, layout);
    let root_at = built.root as usize * 4096;
    assert_eq!(
        u16::from_le_bytes([built.bytes[root_at + 8], built.bytes[root_at + 9]]),
        page::BRANCH_PAGE
    );
    (model, built.bytes, root_at)
}

fn child_field(root_at: usize, i: usize) -> usize {
    root_at + PAGE_HEADER_SIZE + 16 * i + 8
}

fn all_errors(bytes: Vec<u8>) -> (String, String) {
    let snap = Snapshot::from_bytes(bytes).unwrap();
    let walk = read_all(&snap.root()).unwrap_err().to_string();
    let mut lookup = String::new();
    for k in b'a'..b'a' + 12 {
        if let Err(e) = snap.root().item(&[k]) {
            lookup = e.to_string();
        }
    }
    (walk, lookup)
}

#[test]
fn page_ids_out_of_range_are_damage() {
    let (_, bytes, root_at) = branchy();
    for (id, why) in [
        (0u64, "a meta page"),
        (1, "a meta page"),
        (9999, "high-water"),
    ] {
        let mut b = bytes.clone();
        b[child_field(root_at, 1)..child_field(root_at, 1) + 8].copy_from_slice(&id.to_le_bytes());
        let (walk, lookup) = all_errors(b);
        assert!(walk.contains(why), "{walk}");
        assert!(lookup.contains(why), "{lookup}");
    }
    // The page a pointer lands on must call itself by that id.
    let mut b = bytes.clone();
    let target = u64::from_le_bytes(b[child_field(root_at, 1)..][..8].try_into().unwrap());
    let child_at = target as usize * 4096;
    b[child_at..child_at + 8].copy_from_slice(&(target + 1).to_le_bytes());
    let (walk, _) = all_errors(b);
    assert!(walk.contains("its header names page"), "{walk}");
}

#[test]
fn overflow_past_the_high_water_mark_or_the_file_is_damage() {
    let (_, bytes, root_at) = branchy();
    let mut b = bytes.clone();
    b[root_at + 12..root_at + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = read_all(&Snapshot::from_bytes(b).unwrap().root()).unwrap_err();
    assert!(
        err.to_string().contains("past the high-water mark"),
        "{err}"
    );

    // A high-water mark past the end of the file, then an overflow into the missing part.
    let mut b = bytes.clone();
    let pages = (b.len() / 4096) as u64;
    testfile::set_meta_u64(&mut b, 0, 4096, testfile::META_HIGH_WATER, pages + 50);
    testfile::set_meta_u64(&mut b, 1, 4096, testfile::META_HIGH_WATER, pages + 50);
    b[root_at + 12..root_at + 16].copy_from_slice(&20u32.to_le_bytes());
    let err = read_all(&Snapshot::from_bytes(b).unwrap().root()).unwrap_err();
    assert!(
        err.to_string().contains("past the end of the file"),
        "{err}"
    );
}

#[test]
fn overlapping_and_oversized_elements_are_damage() {
    let model = entries([(b"alpha", value(b"1111")), (b"beta", value(b"2222"))]);
    let layout = Layout::default();
    let built = testfile::build(&model, layout);
    let leaf_at = built.root as usize * 4096;
    let elem = |i: usize, field: usize| leaf_at + PAGE_HEADER_SIZE + 16 * i + field;
    let patch = |at: usize, v: u32| {
        let mut b = built.bytes.clone();
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let snap = Snapshot::from_bytes(b).unwrap();
        let err = snap.root().entries().unwrap_err().to_string();
        let lookup = snap.root().item(b"beta").unwrap_err().to_string();
        assert_eq!(err, lookup);
        err
    };
    // Element 1's key pointing into the element array, and into element 0's value.
    assert!(patch(elem(1, 4), 0).contains("overlaps"));
    assert!(patch(elem(1, 4), 16 + 5).contains("overlaps"));
    // Element 0's value grown into element 1's key.
    assert!(patch(elem(0, 12), 6).contains("overlaps"));
    // Sizes running past the page.
    assert!(patch(elem(1, 8), 5000).contains("runs past the page"));
    assert!(patch(elem(1, 12), u32::MAX).contains("runs past the page"));
    assert!(patch(elem(1, 4), u32::MAX).contains("runs past the page"));
    // More elements than the page can hold.
    let mut b = built.bytes.clone();
    b[leaf_at + 10..leaf_at + 12].copy_from_slice(&u16::MAX.to_le_bytes());
    let err = Snapshot::from_bytes(b)
        .unwrap()
        .root()
        .entries()
        .unwrap_err();
    assert!(err.to_string().contains("do not fit"), "{err}");
    // Keys out of order.
    let mut b = built.bytes.clone();
    let key1 = leaf_at + PAGE_HEADER_SIZE + 32 + 5 + 4;
    b[key1] = b'a';
    let err = Snapshot::from_bytes(b)
        .unwrap()
        .root()
        .entries()
        .unwrap_err();
    assert!(err.to_string().contains("not above"), "{err}");
    // Neither branch nor leaf.
    let mut b = built.bytes.clone();
    b[leaf_at + 8] = 0x10;
    let err = Snapshot::from_bytes(b)
        .unwrap()
        .root()
        .entries()
        .unwrap_err();
    assert!(
        err.to_string().contains("neither a branch nor a leaf"),
        "{err}"
    );
}

#[test]
fn cycles_are_refused() {
    let (_, bytes, root_at) = branchy();
    let root_id = (root_at / 4096) as u64;
    // A branch pointing at itself: the walk sees the page twice, a lookup runs out of depth.
    let mut b = bytes.clone();
    b[child_field(root_at, 2)..child_field(root_at, 2) + 8].copy_from_slice(&root_id.to_le_bytes());
    let (walk, lookup) = all_errors(b);
    assert!(walk.contains("reached twice"), "{walk}");
    assert!(lookup.contains("deeper than"), "{lookup}");
    // Two branch elements sharing one child.
    let mut b = bytes.clone();
    let first_child = b[child_field(root_at, 0)..][..8].to_vec();
    b[child_field(root_at, 1)..child_field(root_at, 1) + 8].copy_from_slice(&first_child);
    let (walk, _) = all_errors(b);
    assert!(
        walk.contains("reached twice") || walk.contains("outside"),
        "{walk}"
    );

    // A sub-bucket rooted at the page of a bucket that encloses it.
    let model = entries([(b"a", bucket([(b"b", bucket([(b"c", value(b"1"))]))]))]);
    let layout = Layout {
        inline: false,
        ..Layout::default()
    };
    let built = testfile::build(&model, layout);
    let snap = Snapshot::from_bytes(built.bytes.clone()).unwrap();
    let a = snap.bucket(&[b"a"]).unwrap().unwrap();
    let Root::Page(a_root) = a.root else {
        panic!("a is not inline")
    };
    // Find b's bucket header inside a's leaf page and point it at a's own root.
    let mut bytes = built.bytes;
    let a_at = a_root as usize * 4096;
    let value_at = a_at + PAGE_HEADER_SIZE + 16 + 1; // one element, key "b"
    bytes[value_at..value_at + 8].copy_from_slice(&a_root.to_le_bytes());
    let snap = Snapshot::from_bytes(bytes).unwrap();
    let err = snap.bucket(&[b"a", b"b"]).unwrap_err().to_string();
    assert!(err.contains("a cycle"), "{err}");
}

#[test]
fn absurd_depths_are_refused() {
    // Nested buckets: the path is fine up to MAX_NESTING and refused past it.
    let mut model = entries([(b"leaf", value(b"x"))]);
    for _ in 0..MAX_NESTING + 5 {
        model = entries([(b"n", Tree::Bucket(model))]);
    }
    let snap = Snapshot::from_bytes(testfile::build(&model, Layout::default()).bytes).unwrap();
    let path = vec![&b"n"[..]; MAX_NESTING];
    assert!(snap.bucket(&path).unwrap().is_some());
    let path = vec![&b"n"[..]; MAX_NESTING + 1];
    let err = snap.bucket(&path).unwrap_err().to_string();
    assert!(err.contains("nested deeper than"), "{err}");

    // A tree of branch pages deeper than any real one.
    let snap = Snapshot::from_bytes(testfile::branch_chain(MAX_TREE_DEPTH, 4096)).unwrap();
    assert_eq!(snap.root().get(b"k").unwrap(), Some(&b"v"[..]));
    assert_eq!(snap.root().keys().unwrap(), vec![&b"k"[..]]);
    let snap = Snapshot::from_bytes(testfile::branch_chain(MAX_TREE_DEPTH + 1, 4096)).unwrap();
    for err in [
        snap.root().get(b"k").unwrap_err(),
        snap.root().keys().unwrap_err(),
    ] {
        assert!(err.to_string().contains("deeper than"), "{err}");
    }
}

#[test]
fn inline_buckets_hold_no_buckets() {
    // An inline bucket whose element claims to be a bucket: bbolt never writes one.
    let inner = testfile::leaf_page(&[(b"x".to_vec(), vec![0u8; 32], page::BUCKET_LEAF_FLAG)]);
    let mut inline_value = vec![0u8; BUCKET_HEADER_SIZE];
    inline_value.extend_from_slice(&inner);
    let model = entries([(b"a", value(&inline_value))]);
    let mut bytes = testfile::build(&model, Layout::default()).bytes;
    // Turn the plain value "a" into a bucket entry: element 0's flags.
    let root_at = Snapshot::from_bytes(bytes.clone()).unwrap().meta().root as usize * 4096;
    bytes[root_at + PAGE_HEADER_SIZE] = page::BUCKET_LEAF_FLAG as u8;
    let snap = Snapshot::from_bytes(bytes).unwrap();
    let a = snap
        .bucket(&[b"a"])
        .unwrap()
        .expect("a is an inline bucket");
    assert!(matches!(a.root, Root::Inline(_)));
    let err = a.item(b"x").unwrap_err().to_string();
    assert!(err.contains("nested in an inline bucket"), "{err}");
    // A bucket value too short for its header.
    let model = entries([(b"a", value(b"short"))]);
    let mut bytes = testfile::build(&model, Layout::default()).bytes;
    bytes[root_at + PAGE_HEADER_SIZE] = page::BUCKET_LEAF_FLAG as u8;
    let err = Snapshot::from_bytes(bytes)
        .unwrap()
        .bucket(&[b"a"])
        .unwrap_err();
    assert!(
        err.to_string().contains("shorter than a bucket header"),
        "{err}"
    );
}

#[test]
fn no_freelist_or_a_freelist_reads_the_same() {
    let model = entries([(b"v1", bucket([(b"k", value(b"v"))]))]);
    for freelist in [false, true] {
        let layout = Layout {
            freelist,
            ..Layout::default()
        };
        let snap = Snapshot::from_bytes(testfile::build(&model, layout).bytes).unwrap();
        assert_eq!(snap.meta().freelist, freelist.then_some(2));
        assert_eq!(read_all(&snap.root()).unwrap(), model);
    }
}

/// A source whose contents change as it is read: `versions[i]` is served from the `i`-th
/// call on (calls counted across everything read).
struct Changing {
    versions: Vec<(usize, Vec<u8>)>,
    calls: Cell<usize>,
}

impl Changing {
    fn current(&self) -> &[u8] {
        let n = self.calls.get();
        &self
            .versions
            .iter()
            .rev()
            .find(|(from, _)| n >= *from)
            .unwrap()
            .1
    }
}

impl ReadAt for Changing {
    fn read_at_most(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let n = self.current().read_at_most(buf, offset);
        self.calls.set(self.calls.get() + 1);
        n
    }

    fn len(&self) -> std::io::Result<u64> {
        Ok(self.current().len() as u64)
    }
}

const QUICK: ReadPolicy = ReadPolicy {
    attempts: 5,
    pause: Duration::from_micros(10),
};

#[test]
fn a_commit_during_the_read_is_retried() {
    let (_, new, built) = two_versions();
    let before = built.bytes.clone();
    // The next commit: txid 8 into meta page 0, describing the new tree.
    let mut after = built.bytes.clone();
    let page = testfile::meta_page(0, 4096, built.root, u64::MAX, built.high_water, 8);
    after[..page.len()].copy_from_slice(&page);
    // Each attempt reads 3 metas (head, meta 0, meta 1), the data, then 3 more. The commit
    // lands after the data of the first attempt was read.
    let source = Changing {
        versions: vec![(0, before), (4, after)],
        calls: Cell::new(0),
    };
    let snap = read_consistent(&source, QUICK).unwrap();
    assert_eq!(snap.txid(), 8);
    assert_eq!(snap.attempts(), 2);
    assert_eq!(read_all(&snap.root()).unwrap(), new);
}

#[test]
fn a_database_that_never_settles_is_a_clear_error() {
    let (_, _, built) = two_versions();
    // A new commit on every read: version i holds txids 8 + i and 7 + i.
    let versions = (0..200u64)
        .map(|i| {
            let mut b = built.bytes.clone();
            for txid in [7 + i, 8 + i] {
                let index = txid % 2;
                let page =
                    testfile::meta_page(index, 4096, built.root, u64::MAX, built.high_water, txid);
                let at = index as usize * 4096;
                b[at..at + page.len()].copy_from_slice(&page);
            }
            (i as usize, b)
        })
        .collect();
    let source = Changing {
        versions,
        calls: Cell::new(0),
    };
    let err = read_consistent(&source, QUICK).unwrap_err();
    assert!(
        matches!(err, BoltError::Unsettled { attempts: 5, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with("no consistent snapshot after 5 reads"),
        "{text}"
    );
}

#[test]
fn a_torn_meta_mid_commit_is_not_mistaken_for_the_newest() {
    // The commit writing txid 8 into meta page 0 is caught half-written: its checksum fails,
    // so meta 1 (txid 7) is still the best, before and after the data read, and its tree is
    // what we get.
    let (_, new, built) = two_versions();
    let mut torn = built.bytes.clone();
    let page = testfile::meta_page(0, 4096, 9999, u64::MAX, 99999, 8);
    torn[..40].copy_from_slice(&page[..40]);
    let source = Changing {
        versions: vec![(0, built.bytes.clone()), (2, torn)],
        calls: Cell::new(0),
    };
    let snap = read_consistent(&source, QUICK).unwrap();
    assert_eq!((snap.txid(), snap.attempts()), (7, 1));
    assert_eq!(read_all(&snap.root()).unwrap(), new);
}

#[test]
fn reads_a_file_without_locking_it() {
    use std::os::fd::AsRawFd;
    let model = entries([(b"v1", bucket([(b"version", value(&[6]))]))]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    std::fs::write(&path, testfile::build(&model, Layout::default()).bytes).unwrap();
    // Hold an exclusive flock as containerd does for its whole life.
    let holder = std::fs::File::open(&path).unwrap();
    assert_eq!(
        unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let snap = Snapshot::read(&path).unwrap();
    assert_eq!(read_all(&snap.root()).unwrap(), model);
    assert_eq!(snap.attempts(), 1);
    let missing = Snapshot::read(&dir.path().join("nope")).unwrap_err();
    assert!(matches!(missing, BoltError::Io(_)));
}

fn real(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/containerd")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn real_containerd_files_read_completely() {
    for name in ["meta.db", "overlayfs-metadata.db"] {
        let bytes = real(name);
        let snap = Snapshot::from_bytes(bytes.clone()).unwrap();
        assert!(
            snap.meta().freelist.is_some(),
            "containerd 1.6 writes a freelist"
        );
        let all = read_all(&snap.root()).unwrap();
        assert!(all.contains_key(&b"v1"[..]), "{name}");
        check_lookups(&snap.root(), &all);

        // The same file as containerd 1.7+ leaves it: no freelist.
        let mut no_freelist = bytes;
        for index in 0..2 {
            testfile::set_meta_u64(
                &mut no_freelist,
                index,
                4096,
                testfile::META_FREELIST,
                u64::MAX,
            );
        }
        let snap = Snapshot::from_bytes(no_freelist).unwrap();
        assert_eq!(snap.meta().freelist, None);
        assert_eq!(read_all(&snap.root()).unwrap(), all);
    }
}

/// The generated part of the `bolt_reader` fuzz seed corpus (the real databases are copied in
/// beside them), by file name.
fn bolt_fuzz_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let small = Layout {
        page_size: 1024,
        leaf_max: 3,
        branch_max: 3,
        ..Layout::default()
    };
    let mut rng = Rng(0x5eed);
    let model = random_tree(&mut rng, 2, 1024);
    let no_inline = Layout {
        inline: false,
        freelist: true,
        ..small
    };
    let containerd_like = entries([(
        b"v1",
        bucket([
            (b"version", value(&[6])),
            (
                b"moby",
                bucket([
                    (
                        b"images",
                        bucket([(
                            b"docker.io/library/a:1",
                            bucket([(
                                b"target",
                                bucket([
                                    (b"digest", value(b"sha256:00")),
                                    (b"size", value(&[0x80, 0x01])),
                                ]),
                            )]),
                        )]),
                    ),
                    (b"content", bucket([(b"blob", bucket([]))])),
                ]),
            ),
        ]),
    )]);
    let (_, _, two) = two_versions();
    let mut newer_bad = two.bytes;
    damage_meta_checksum(&mut newer_bad, 1);
    let (_, mut cycle, root_at) = branchy();
    let root_id = (root_at / 4096) as u64;
    cycle[child_field(root_at, 2)..child_field(root_at, 2) + 8]
        .copy_from_slice(&root_id.to_le_bytes());
    let real_meta = real("meta.db");
    let truncated = real_meta[..real_meta.len() / 2].to_vec();
    let mut no_freelist = real_meta;
    for index in 0..2 {
        testfile::set_meta_u64(
            &mut no_freelist,
            index,
            4096,
            testfile::META_FREELIST,
            u64::MAX,
        );
    }
    vec![
        ("gen-branchy-inline", testfile::build(&model, small).bytes),
        (
            "gen-branchy-freelist",
            testfile::build(&model, no_inline).bytes,
        ),
        (
            "gen-containerd-shape",
            testfile::build(&containerd_like, small).bytes,
        ),
        ("gen-newer-meta-bad", newer_bad),
        (
            "gen-branch-chain",
            testfile::branch_chain(MAX_TREE_DEPTH + 1, 1024),
        ),
        ("gen-branch-cycle", cycle),
        ("real-meta.db-truncated", truncated),
        ("real-meta.db-no-freelist", no_freelist),
    ]
}

/// The committed seeds are what the writer makes today, so a change to it cannot leave the
/// corpus testing shapes it no longer writes. `OE_WRITE_FUZZ_SEEDS=1 cargo test --lib
/// committed_bolt_fuzz_seeds` rewrites them.
#[test]
fn committed_bolt_fuzz_seeds_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/bolt_reader");
    let write = std::env::var_os("OE_WRITE_FUZZ_SEEDS").is_some();
    for (name, bytes) in bolt_fuzz_seeds() {
        let path = dir.join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            committed == bytes,
            "{name} is stale: rewrite the seeds (see this test's doc)"
        );
    }
    // The real databases are seeds too, as committed under tests/data.
    for name in ["meta.db", "overlayfs-metadata.db"] {
        let seed = std::fs::read(dir.join(format!("real-{name}"))).unwrap();
        assert!(
            seed == real(name),
            "real-{name} differs from tests/data/containerd/{name}"
        );
    }
}
