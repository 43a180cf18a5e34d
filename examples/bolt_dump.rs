//! Prints every bucket and key of a bbolt file (containerd's meta.db, a snapshotter's
//! metadata.db), read without a lock: `cargo run --example bolt_dump -- FILE`.
//!
//! `--time` prints instead how long a consistent read and a full walk take (best of 20), and
//! for a meta.db how long listing every namespace's images and blobs takes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use oci_export::source::containerd::bolt::{Bucket, Item, Snapshot};
use oci_export::source::containerd::meta::MetaDb;

fn show(bytes: &[u8]) -> String {
    if !bytes.is_empty() && bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("0x{hex}")
    }
}

fn dump(bucket: &Bucket<'_>, indent: usize) -> anyhow::Result<()> {
    for (key, item) in bucket.entries()? {
        match item {
            Item::Value(v) => println!("{:indent$}{} = {}", "", show(key), show(v)),
            Item::Bucket(b) => {
                println!("{:indent$}{}/", "", show(key));
                dump(&b, indent + 2)?;
            }
        }
    }
    Ok(())
}

/// Every key under `bucket`, walked (and so checked).
fn count(bucket: &Bucket<'_>) -> anyhow::Result<usize> {
    let mut n = 0;
    for (_, item) in bucket.entries()? {
        n += 1;
        if let Item::Bucket(b) = item {
            n += count(&b)?;
        }
    }
    Ok(n)
}

fn best_of(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let started = Instant::now();
        f()?;
        best = best.min(started.elapsed());
    }
    Ok(best)
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let time = args.iter().any(|a| a == "--time");
    args.retain(|a| a != "--time");
    let [path] = &args[..] else {
        anyhow::bail!("usage: bolt_dump [--time] FILE");
    };
    let path = PathBuf::from(path);
    if !time {
        let snapshot = Snapshot::read(&path)?;
        eprintln!("{:?}", snapshot.meta());
        return dump(&snapshot.root(), 0);
    }
    let snapshot = Snapshot::read(&path)?;
    let keys = count(&snapshot.root())?;
    let read = best_of(20, || Snapshot::read(&path).map(drop).map_err(Into::into))?;
    let walk = best_of(20, || count(&snapshot.root()).map(drop))?;
    println!(
        "{}: {} pages of {} bytes, {keys} keys; consistent read {read:?}, full walk {walk:?}",
        path.display(),
        snapshot.meta().high_water,
        snapshot.meta().page_size
    );
    if let Ok(db) = MetaDb::read(&path) {
        let mut images = 0;
        let mut blobs = 0;
        let list = best_of(20, || {
            let db = MetaDb::read(&path)?;
            (images, blobs) = (0, 0);
            for ns in db.namespaces()? {
                images += db.images(&ns)?.len();
                blobs += db.blobs(&ns)?.len();
            }
            Ok(())
        })?;
        println!(
            "schema {}: read and list {images} images and {blobs} blobs of {} namespaces: {list:?}",
            db.schema_version(),
            db.namespaces()?.len()
        );
    }
    Ok(())
}
