use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;
use crate::compress::{Compressor, Settings};

fn key(n: u8, level: i32) -> Key {
    Key {
        diff_id: Digest::of(&[n]),
        algorithm: Algorithm::Zstd,
        level,
    }
}

fn blob_bytes(n: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ n).collect()
}

fn read_hit(lookup: Lookup) -> (Entry, Vec<u8>) {
    let mut hit = match lookup {
        Lookup::Hit(hit) => hit,
        other => panic!("expected a hit, got {other:?}"),
    };
    let mut data = Vec::new();
    hit.file.read_to_end(&mut data).unwrap();
    (hit.entry, data)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn default_dir_follows_xdg_home_and_root() {
    let some = |s: &str| Some(std::ffi::OsString::from(s));
    assert_eq!(
        default_dir_for(true, some("/x"), some("/home/u")),
        Some(PathBuf::from("/var/cache/oci-export"))
    );
    assert_eq!(
        default_dir_for(false, some("/x/cache"), some("/home/u")),
        Some(PathBuf::from("/x/cache/oci-export"))
    );
    assert_eq!(
        default_dir_for(false, None, some("/home/u")),
        Some(PathBuf::from("/home/u/.cache/oci-export"))
    );
    // A relative XDG_CACHE_HOME is invalid and ignored.
    assert_eq!(
        default_dir_for(false, some("rel"), some("/home/u")),
        Some(PathBuf::from("/home/u/.cache/oci-export"))
    );
    assert_eq!(default_dir_for(false, None, None), None);
}

#[test]
fn put_then_get_round_trips_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(tmp.path()).unwrap();
    let data = blob_bytes(1, 3 << 20);
    let k = key(1, 3);
    let put = cache.put(&k, &mut &data[..]).unwrap();
    assert_eq!(put.digest, Digest::of(&data));
    assert_eq!(put.size, data.len() as u64);
    assert_eq!(put.key(), k);

    let (entry, back) = read_hit(cache.get(&k).unwrap());
    assert!(back == data);
    assert_eq!(entry.digest, put.digest);
    assert!(entry.last_used_unix_ms >= put.last_used_unix_ms);

    // Other levels, algorithms and layers are other keys.
    assert!(matches!(cache.get(&key(1, 4)).unwrap(), Lookup::Miss));
    assert!(matches!(cache.get(&key(2, 3)).unwrap(), Lookup::Miss));
    let gzip = Key {
        algorithm: Algorithm::Gzip,
        ..k
    };
    assert!(matches!(cache.get(&gzip).unwrap(), Lookup::Miss));

    // Only the entry's two files remain: no temporary files.
    let names = files_in(cache.dir());
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with(&Digest::of(&[1]).hex())));
}

#[test]
fn metadata_is_readable_json() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(tmp.path()).unwrap();
    let k = key(7, 19);
    cache.put(&k, &mut &b"abc"[..]).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(cache.path(&k, "json")).unwrap()).unwrap();
    assert_eq!(json["algorithm"], "zstd");
    assert_eq!(json["level"], 19);
    assert_eq!(json["size"], 3);
    assert_eq!(json["diff_id"], k.diff_id.to_string());
    assert_eq!(json["digest"], Digest::of(b"abc").to_string());
}

#[test]
fn a_tampered_blob_is_detected_removed_and_missed() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(tmp.path()).unwrap();
    let k = key(3, 1);
    cache.put(&k, &mut &blob_bytes(3, 100_000)[..]).unwrap();

    // Same size, one byte flipped: only the digest can tell.
    let path = cache.path(&k, "blob");
    let mut bytes = fs::read(&path).unwrap();
    bytes[50_000] ^= 1;
    fs::write(&path, &bytes).unwrap();

    match cache.get(&k).unwrap() {
        Lookup::Discarded(reason) => assert!(reason.contains("digest"), "{reason}"),
        other => panic!("expected a discarded entry, got {other:?}"),
    }
    assert!(files_in(cache.dir()).is_empty());
    assert!(matches!(cache.get(&k).unwrap(), Lookup::Miss));
}

#[test]
fn truncated_missing_or_garbled_entries_are_discarded() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(tmp.path()).unwrap();
    let k = key(4, 1);
    let data = blob_bytes(4, 10_000);

    cache.put(&k, &mut &data[..]).unwrap();
    fs::write(cache.path(&k, "blob"), &data[..9_999]).unwrap();
    assert!(matches!(cache.get(&k).unwrap(), Lookup::Discarded(r) if r.contains("bytes")));

    cache.put(&k, &mut &data[..]).unwrap();
    fs::remove_file(cache.path(&k, "blob")).unwrap();
    assert!(matches!(cache.get(&k).unwrap(), Lookup::Discarded(r) if r.contains("missing")));

    cache.put(&k, &mut &data[..]).unwrap();
    fs::write(cache.path(&k, "json"), b"{not json").unwrap();
    assert!(matches!(cache.get(&k).unwrap(), Lookup::Discarded(_)));

    // Metadata copied from another key's entry does not vouch for this one.
    let other = key(5, 1);
    cache.put(&other, &mut &data[..]).unwrap();
    cache.put(&k, &mut &data[..]).unwrap();
    fs::copy(cache.path(&other, "json"), cache.path(&k, "json")).unwrap();
    assert!(matches!(cache.get(&k).unwrap(), Lookup::Discarded(r) if r.contains("another key")));

    assert_eq!(
        files_in(cache.dir()).len(),
        2,
        "only the other entry is left"
    );
    assert!(cache.get(&other).unwrap().hit().is_some());
}

#[test]
fn prune_evicts_least_recently_used_first() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(tmp.path()).unwrap();
    let (a, b, c) = (key(10, 3), key(11, 3), key(12, 3));
    for k in [a, b, c] {
        cache.put(&k, &mut &blob_bytes(0, 1000)[..]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    // Using `a` makes `b` the least recently used.
    assert!(cache.get(&a).unwrap().hit().is_some());

    let report = cache.prune(2500).unwrap();
    assert_eq!(
        report,
        PruneReport {
            removed_entries: 1,
            freed_bytes: 1000,
            kept_entries: 2,
            kept_bytes: 2000,
        }
    );
    assert!(matches!(cache.get(&b).unwrap(), Lookup::Miss));
    assert!(cache.get(&a).unwrap().hit().is_some());
    assert!(cache.get(&c).unwrap().hit().is_some());

    // Within bounds, nothing goes; at zero, everything does.
    assert_eq!(cache.prune(DEFAULT_MAX_BYTES).unwrap().removed_entries, 0);
    assert_eq!(cache.prune(0).unwrap().kept_entries, 0);
    assert!(cache.list().unwrap().is_empty());
}

#[test]
fn prune_removes_what_dead_writers_left() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(tmp.path()).unwrap();
    let old = SystemTime::now() - Duration::from_secs(2 * 3600);
    let leftovers = [".tmp-1-2-3", "abc-zstd-3.blob"];
    for name in leftovers {
        let f = fs::File::create(cache.dir().join(name)).unwrap();
        f.set_modified(old).unwrap();
    }
    // A fresh temporary file may be a write in progress and stays.
    fs::File::create(cache.dir().join(".tmp-9-9-9")).unwrap();
    cache.prune(DEFAULT_MAX_BYTES).unwrap();
    assert_eq!(files_in(cache.dir()), [".tmp-9-9-9"]);
}

#[test]
fn list_shows_every_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(tmp.path()).unwrap();
    for n in 0..4 {
        cache.put(&key(n, 3), &mut &[n][..]).unwrap();
    }
    let mut keys: Vec<Key> = cache.list().unwrap().iter().map(Entry::key).collect();
    keys.sort_by_key(|k| k.diff_id);
    let mut expected: Vec<Key> = (0..4).map(|n| key(n, 3)).collect();
    expected.sort_by_key(|k| k.diff_id);
    assert_eq!(keys, expected);
}

#[test]
fn an_absent_cache_is_inspected_without_being_created() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("never-made");
    let cache = BlobCache::existing(&root);
    assert!(cache.list().unwrap().is_empty());
    assert_eq!(cache.prune(0).unwrap(), PruneReport::default());
    assert!(!root.exists(), "inspecting created the cache");
    // An existing cache reads the same either way.
    let made = BlobCache::open(&root).unwrap();
    made.put(&key(1, 3), &mut &b"blob"[..]).unwrap();
    assert_eq!(BlobCache::existing(&root).list().unwrap().len(), 1);
}

#[test]
fn an_abandoned_write_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(tmp.path()).unwrap();
    let mut pending = cache.begin(&key(1, 1)).unwrap();
    pending.write_all(b"partial").unwrap();
    drop(pending);
    assert!(files_in(cache.dir()).is_empty());
    assert!(matches!(cache.get(&key(1, 1)).unwrap(), Lookup::Miss));
}

#[test]
fn concurrent_writers_of_one_key_do_not_corrupt_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(tmp.path()).unwrap();
    let k = key(42, 3);
    let data = blob_bytes(42, 1 << 20);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..20 {
                    let entry = cache.put(&k, &mut &data[..]).unwrap();
                    assert_eq!(entry.digest, Digest::of(&data));
                }
            });
        }
        // A reader racing the writers sees the entry whole or not at all, never corrupt.
        s.spawn(|| {
            for _ in 0..40 {
                match cache.get(&k).unwrap() {
                    Lookup::Hit(mut hit) => {
                        let mut back = Vec::new();
                        hit.file.read_to_end(&mut back).unwrap();
                        assert!(back == data);
                    }
                    Lookup::Miss => {}
                    Lookup::Discarded(reason) => panic!("entry seen corrupt: {reason}"),
                }
            }
        });
    });
    let (_, back) = read_hit(cache.get(&k).unwrap());
    assert!(back == data);
    assert_eq!(files_in(cache.dir()).len(), 2, "no temporary files left");
}

#[test]
fn cache_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(tmp.path().join("nested")).unwrap();
    let k = key(1, 1);
    cache.put(&k, &mut &b"secret layer"[..]).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(cache.dir()), 0o700);
    assert_eq!(mode(&cache.path(&k, "blob")), 0o600);
    assert_eq!(mode(&cache.path(&k, "json")), 0o600);
}

#[test]
fn a_compressor_can_write_straight_into_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(tmp.path()).unwrap();
    let layer = blob_bytes(9, 1 << 20);
    let settings = Settings {
        algorithm: Algorithm::Gzip,
        level: 6,
        jobs: 2,
    };
    let k = Key {
        diff_id: Digest::of(&layer),
        algorithm: settings.algorithm,
        level: settings.level,
    };
    let mut pending = cache.begin(&k).unwrap();
    let mut compressor = Compressor::new(&settings, &mut pending).unwrap();
    compressor.write_all(&layer).unwrap();
    let blob = compressor.finish().unwrap();
    let committed = pending.commit(blob.digest).unwrap();
    assert_eq!(
        (committed.entry.digest, committed.entry.size),
        (blob.digest, blob.size)
    );
    // The committed blob comes back open at its start, ready to be copied out.
    let mut direct = Vec::new();
    { committed.file }.read_to_end(&mut direct).unwrap();
    let (_, cached) = read_hit(cache.get(&k).unwrap());
    let mut back = Vec::new();
    assert!(direct == cached);
    flate2::read::GzDecoder::new(&cached[..])
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == layer);
}

#[test]
fn a_blob_committed_under_a_wrong_digest_is_never_handed_out() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(tmp.path()).unwrap();
    let k = key(7, 3);
    let mut pending = cache.begin(&k).unwrap();
    pending.write_all(b"the real bytes").unwrap();
    pending.commit(Digest::of(b"other bytes")).unwrap();
    match cache.get(&k).unwrap() {
        Lookup::Discarded(reason) => assert!(reason.contains("digest"), "{reason}"),
        other => panic!("a mislabelled blob was not caught: {other:?}"),
    }
    assert!(matches!(cache.get(&k).unwrap(), Lookup::Miss));
}

#[test]
fn each_encoder_of_a_format_has_its_own_entries() {
    let diff_id = Digest::of(b"layer");
    let stems: std::collections::BTreeSet<String> = Algorithm::ALL
        .into_iter()
        .map(|algorithm| {
            Key {
                diff_id,
                algorithm,
                level: 1,
            }
            .stem()
        })
        .collect();
    assert_eq!(stems.len(), Algorithm::ALL.len(), "{stems:?}");
    assert!(stems.contains(&format!("{}-gzip-isal-1", diff_id.hex())));
}
