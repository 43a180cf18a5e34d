//! Forged layers that try to make the exporter read a file outside the layer directory.
//!
//! For each route a "host secret" is created outside the data root, and the sample's top layer
//! is forged so that a naive `Path::join(diff_dir, name)` reader would copy the secret into the
//! export: the tar-split entry gets the secret's size and CRC-64, and every record that depends
//! on the layer's bytes (layerdb `diff`, chain IDs and layerdb directory names, the config's
//! diff_ids, hence the image ID, and repositories.json) is rewritten to match what that naive
//! reader would rebuild. Checksums therefore cannot catch the leak; only path confinement can.
//!
//! Each route also has a positive control: the secret's bytes are put where the name resolves
//! when the layer directory is the root, and the very same forged record then exports fine
//! (with the secret's bytes in it). So the forgery is valid and the negative test could fail.

mod forge;
mod harness;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use forge::*;

/// The top-layer member whose record is forged.
const MEMBER: &str = "data/copied.txt";

#[derive(Clone, Copy, Debug)]
enum Route {
    /// `data/../../…/<secret path>`: enough `..` to climb from the diff dir to `/`.
    DotDot,
    /// The secret's absolute path as the member name.
    AbsoluteName,
    /// `data/escape -> <secret's dir>` (absolute symlink), member `data/escape/secret.txt`.
    AbsoluteSymlinkDir,
    /// `data/escape -> ../../…/<secret's dir>` (relative symlink), member `data/escape/secret.txt`.
    RelativeSymlinkDir,
    /// `data/copied.txt -> <secret>` (absolute symlink), member name unchanged.
    AbsoluteSymlinkFile,
    /// `data/copied.txt -> ../../…/<secret>` (relative symlink), member name unchanged.
    RelativeSymlinkFile,
}

struct Forged {
    s: Sample,
    marker: Vec<u8>,
    secret: PathBuf,
}

/// `..` components enough to reach `/` from `dir`, plus a few spare (extra `..` at `/` are
/// no-ops on the host and inside a confined root alike).
fn climb_from(dir: &Path) -> String {
    let depth = dir
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count();
    "../".repeat(depth + 3)
}

/// `path` without its leading `/`.
fn relative(path: &Path) -> &Path {
    path.strip_prefix("/").unwrap()
}

fn forge(route: Route) -> Forged {
    let s = Sample::new();
    let host = s.tmp.path().join("host");
    fs::create_dir(&host).unwrap();
    let secret = host.join("secret.txt");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let marker = format!("HOST-SECRET-{}-{nanos:x}-{route:?}\n", std::process::id()).into_bytes();
    fs::write(&secret, &marker).unwrap();
    assert!(!secret.starts_with(&s.root));

    let top = s.top();
    let diff = s.diff_dir(top);
    let data = diff.join("data");
    let name: Vec<u8> = match route {
        Route::DotDot => format!("data/{}{}", climb_from(&data), relative(&secret).display()),
        Route::AbsoluteName => secret.display().to_string(),
        Route::AbsoluteSymlinkDir => {
            symlink(&host, data.join("escape")).unwrap();
            "data/escape/secret.txt".into()
        }
        Route::RelativeSymlinkDir => {
            let target = format!("{}{}", climb_from(&data), relative(&host).display());
            symlink(target, data.join("escape")).unwrap();
            "data/escape/secret.txt".into()
        }
        Route::AbsoluteSymlinkFile => {
            fs::remove_file(data.join("copied.txt")).unwrap();
            symlink(&secret, data.join("copied.txt")).unwrap();
            MEMBER.into()
        }
        Route::RelativeSymlinkFile => {
            fs::remove_file(data.join("copied.txt")).unwrap();
            let target = format!("{}{}", climb_from(&data), relative(&secret).display());
            symlink(target, data.join("copied.txt")).unwrap();
            MEMBER.into()
        }
    }
    .into_bytes();

    let mut entries = read_tar_split(&s.tar_split_path(top));
    forge_member(&mut entries, MEMBER.as_bytes(), &name, &marker);
    // Sanity: the naive reader really does pick up the secret through this record.
    assert!(contains(&naive_assemble(&entries, &diff), &marker));
    s.forge_layer(top, &entries);
    Forged { s, marker, secret }
}

impl Forged {
    /// Where the forged name leads when the layer directory is the root: the secret's absolute
    /// path, inside the layer.
    fn confined_location(&self) -> PathBuf {
        self.s.diff_dir(self.s.top()).join(relative(&self.secret))
    }

    fn assert_no_leak(&self, outcome: &Outcome, what: &str) {
        assert!(
            !contains(&outcome.stdout, &self.marker),
            "[{what}] the host secret leaked to stdout"
        );
        assert!(
            !contains(outcome.stderr.as_bytes(), &self.marker),
            "[{what}] the host secret leaked to stderr"
        );
        for name in self.s.out_dir_names() {
            let bytes = fs::read(self.s.out_dir.join(&name)).unwrap();
            assert!(
                !contains(&bytes, &self.marker),
                "[{what}] the host secret leaked into {name}"
            );
        }
    }
}

/// The negative test: the export fails (the name resolves inside the layer, where nothing is)
/// and the secret appears nowhere: not in the output file, stdout or stderr.
fn assert_route_blocked(route: Route) {
    let f = forge(route);
    let layer = f.s.diff_ids()[f.s.top()].to_string();
    for engine in engines() {
        let what = format!("{route:?}, {engine}, -o");
        let outcome = f.s.unchanged_by(|| f.s.export_to_file(&["--io", engine]));
        f.assert_no_leak(&outcome, &what);
        assert_clean_failure(&f.s, &outcome, &[&layer, "cannot open it"], &what);

        let what = format!("{route:?}, {engine}, stdout");
        let outcome = f.s.unchanged_by(|| f.s.export_to_stdout(&["--io", engine]));
        f.assert_no_leak(&outcome, &what);
        assert_failed_with(&outcome, &[&layer, "cannot open it"], &what);
    }
}

/// The positive control: with the secret's bytes at the confined location, the same forged
/// records export successfully, with those bytes in the layer. Had the exporter followed the
/// name out of the layer, the negative test would have found the marker.
fn assert_forgery_valid(route: Route) {
    let f = forge(route);
    let confined = f.confined_location();
    fs::create_dir_all(confined.parent().unwrap()).unwrap();
    fs::write(&confined, &f.marker).unwrap();
    for engine in engines() {
        let what = format!("{route:?}, {engine}");
        let outcome = f.s.unchanged_by(|| f.s.export_to_file(&["--io", engine]));
        assert!(outcome.ok(), "[{what}] {}", outcome.stderr);
        let archive = fs::read(f.s.out()).unwrap();
        let blob = format!("blobs/sha256/{}", f.s.diff_ids()[f.s.top()].hex());
        let layer = &harness::read_archive(&archive)[&blob];
        assert!(
            contains(layer, &f.marker),
            "[{what}] marker not in the layer"
        );
        fs::remove_file(f.s.out()).unwrap();
    }
}

macro_rules! route_tests {
    ($($name:ident => $route:expr,)*) => {$(
        mod $name {
            use super::*;

            #[test]
            fn is_blocked() {
                assert_route_blocked($route);
            }

            #[test]
            fn forgery_is_otherwise_valid() {
                assert_forgery_valid($route);
            }
        }
    )*};
}

route_tests! {
    dot_dot => Route::DotDot,
    absolute_name => Route::AbsoluteName,
    absolute_symlink_dir => Route::AbsoluteSymlinkDir,
    relative_symlink_dir => Route::RelativeSymlinkDir,
    absolute_symlink_file => Route::AbsoluteSymlinkFile,
    relative_symlink_file => Route::RelativeSymlinkFile,
}
