//! A layer tar written from a layer directory the way Docker's archiver writes it
//! (moby go-archive `archive.go` with the overlay whiteout converter), for layers whose
//! tar-split record is missing.
//!
//! - A lexical depth-first walk (Go's `filepath.WalkDir`), the root itself omitted, directory
//!   names ending in `/`.
//! - PAX format: a plain USTAR-shaped header when every field fits, PAX records (`path`,
//!   `linkpath`, large ids or sizes, `SCHILY.xattr.security.capability`) when not.
//! - Modes carry Go's type bits (`0100644`, `040755`); mtimes truncated to seconds; no atime,
//!   ctime, user or group names (Docker does not look them up).
//! - Hardlinks: the first path of an inode carries the content, later ones are links to it.
//! - Overlay whiteouts (character devices 0/0) become empty `.wh.<name>` files of mode 0600;
//!   a directory with `trusted.overlay.opaque=y` (or `user.overlay.opaque`) is followed by an
//!   empty `<dir>/.wh..wh..opq` file carrying the directory's permissions and owner.
//!
//! The output depends only on the directory's contents and metadata, so it is deterministic.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];
const CAPABILITY_XATTR: &str = "security.capability";

// Go's archive/tar mode type bits (c_ISDIR, …).
const C_ISDIR: u32 = 0o40000;
const C_ISREG: u32 = 0o100000;
const C_ISLNK: u32 = 0o120000;
const C_ISCHR: u32 = 0o20000;
const C_ISBLK: u32 = 0o60000;
const C_ISFIFO: u32 = 0o10000;

/// One header's fields.
struct Header {
    name: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    typeflag: u8,
    linkname: Vec<u8>,
    devmajor: u64,
    devminor: u64,
    pax: BTreeMap<String, Vec<u8>>,
}

impl Header {
    /// A header with every numeric field zero and no PAX records.
    fn new(name: Vec<u8>, typeflag: u8) -> Self {
        Header {
            name,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            typeflag,
            linkname: Vec::new(),
            devmajor: 0,
            devminor: 0,
            pax: BTreeMap::new(),
        }
    }
}

/// Writes the layer tar for the directory `root` to `out`.
pub fn write_layer_tar(root: &Path, out: &mut dyn Write) -> Result<()> {
    let mut writer = TarWriter {
        out,
        links: HashMap::new(),
    };
    walk(root, Vec::new(), &mut writer)?;
    writer
        .out
        .write_all(&[0u8; 1024])
        .context("writing the layer")?;
    Ok(())
}

struct TarWriter<'a> {
    out: &'a mut dyn Write,
    /// (device, inode) → the first name written for it.
    links: HashMap<(u64, u64), Vec<u8>>,
}

fn walk(dir: &Path, prefix: Vec<u8>, w: &mut TarWriter) -> Result<()> {
    let mut names: Vec<OsString> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let path = dir.join(&name);
        let mut rel = prefix.clone();
        rel.extend_from_slice(name.as_bytes());
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let ft = meta.file_type();
        let mut h = Header {
            mode: meta.mode() & 0o7777,
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            mtime: meta.mtime(),
            ..Header::new(rel.clone(), b'0')
        };
        if let Some(cap) = get_xattr(&path, CAPABILITY_XATTR)? {
            h.pax
                .insert(format!("SCHILY.xattr.{CAPABILITY_XATTR}"), cap);
        }
        if ft.is_dir() {
            h.mode |= C_ISDIR;
            h.typeflag = b'5';
            h.name.push(b'/');
            w.header(&h)?;
            if is_opaque(&path)? {
                let mut marker = rel.clone();
                marker.push(b'/');
                marker.extend_from_slice(OPAQUE_MARKER);
                // Docker's marker keeps the directory's permissions and owner, no mtime.
                w.header(&Header {
                    mode: meta.mode() & 0o777,
                    uid: h.uid,
                    gid: h.gid,
                    ..Header::new(marker, b'0')
                })?;
            }
            let mut sub = rel;
            sub.push(b'/');
            walk(&path, sub, w)?;
        } else if ft.is_char_device() && meta.rdev() == 0 {
            // An overlay whiteout: the path was deleted in this layer.
            let (parent, base) = match rel.iter().rposition(|&c| c == b'/') {
                Some(i) => (rel[..=i].to_vec(), rel[i + 1..].to_vec()),
                None => (Vec::new(), rel.clone()),
            };
            h.name = [parent, WHITEOUT_PREFIX.to_vec(), base].concat();
            h.mode = 0o600;
            w.header(&h)?;
        } else if ft.is_symlink() {
            h.mode = C_ISLNK | 0o777;
            h.typeflag = b'2';
            h.linkname = std::fs::read_link(&path)
                .with_context(|| format!("cannot read link {}", path.display()))?
                .into_os_string()
                .into_vec();
            w.header(&h)?;
        } else if ft.is_file() {
            h.mode |= C_ISREG;
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = w.links.get(&key) {
                    h.typeflag = b'1';
                    h.linkname = first.clone();
                    w.header(&h)?;
                    continue;
                }
                w.links.insert(key, rel.clone());
            }
            h.size = meta.len();
            w.header(&h)?;
            w.content(&path, h.size)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            h.mode |= if ft.is_char_device() {
                C_ISCHR
            } else {
                C_ISBLK
            };
            h.typeflag = if ft.is_char_device() { b'3' } else { b'4' };
            let rdev = meta.rdev();
            h.devmajor = libc::major(rdev) as u64;
            h.devminor = libc::minor(rdev) as u64;
            w.header(&h)?;
        } else if ft.is_fifo() {
            h.mode |= C_ISFIFO;
            h.typeflag = b'6';
            w.header(&h)?;
        }
        // Sockets cannot be archived (Go's tar refuses them); Docker skips them too.
    }
    Ok(())
}

impl TarWriter<'_> {
    fn header(&mut self, h: &Header) -> Result<()> {
        let mut pax = h.pax.clone();
        let name_fits = h.name.len() <= 100 && h.name.is_ascii();
        if !name_fits {
            pax.insert("path".into(), h.name.clone());
        }
        if h.linkname.len() > 100 || !h.linkname.is_ascii() {
            pax.insert("linkpath".into(), h.linkname.clone());
        }
        for (key, value, limit) in [
            ("uid", h.uid, 0o7777777),
            ("gid", h.gid, 0o7777777),
            ("size", h.size, 0o77777777777),
        ] {
            if value > limit {
                pax.insert(key.into(), value.to_string().into_bytes());
            }
        }
        if !pax.is_empty() {
            let mut records = Vec::new();
            for (k, v) in &pax {
                records.extend_from_slice(&pax_record(k.as_bytes(), v));
            }
            let (dir, base) = match h.name.iter().rposition(|&c| c == b'/') {
                Some(i) if i + 1 < h.name.len() => (&h.name[..=i], &h.name[i + 1..]),
                _ => (&b""[..], &h.name[..]),
            };
            let pax_name = [dir, b"PaxHeaders.0/", base].concat();
            let mut pax_header = Header::new(pax_name, b'x');
            pax_header.size = records.len() as u64;
            self.out
                .write_all(&ustar_block(&pax_header))
                .context("writing the layer")?;
            self.out.write_all(&records).context("writing the layer")?;
            self.pad(records.len() as u64)?;
        }
        let block = ustar_block(h);
        self.out.write_all(&block).context("writing the layer")
    }

    fn content(&mut self, path: &Path, size: u64) -> Result<()> {
        let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let copied = io::copy(&mut (&mut f).take(size), &mut self.out)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if copied != size {
            bail!("{} shrank while being archived", path.display());
        }
        self.pad(size)
    }

    fn pad(&mut self, len: u64) -> Result<()> {
        let pad = ((512 - len % 512) % 512) as usize;
        self.out
            .write_all(&[0u8; 512][..pad])
            .context("writing the layer")
    }
}

fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len += 1;
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Go writes the ASCII characters of a string that does not fit, truncated to the field.
fn put_str(field: &mut [u8], s: &[u8]) {
    let ascii: Vec<u8> = s.iter().copied().filter(u8::is_ascii).collect();
    let n = ascii.len().min(field.len());
    field[..n].copy_from_slice(&ascii[..n]);
}

fn put_octal(field: &mut [u8], v: u64) {
    let width = field.len() - 1;
    let digits = format!("{v:0width$o}");
    let digits = &digits.as_bytes()[digits.len().saturating_sub(width)..];
    field[..width].copy_from_slice(digits);
    field[width] = 0;
}

/// The 512-byte header block. Numbers too large for their octal field are written as 0: the
/// PAX records before the block carry them.
fn ustar_block(h: &Header) -> [u8; 512] {
    let fits = |v: u64, limit: u64| if v > limit { 0 } else { v };
    let mut b = [0u8; 512];
    put_str(&mut b[0..100], &h.name);
    put_octal(&mut b[100..108], u64::from(h.mode));
    put_octal(&mut b[108..116], fits(h.uid, 0o7777777));
    put_octal(&mut b[116..124], fits(h.gid, 0o7777777));
    put_octal(&mut b[124..136], fits(h.size, 0o77777777777));
    put_octal(&mut b[136..148], h.mtime.max(0) as u64);
    b[156] = h.typeflag;
    put_str(&mut b[157..257], &h.linkname);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    put_octal(&mut b[329..337], h.devmajor);
    put_octal(&mut b[337..345], h.devminor);
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
    put_octal(&mut b[148..155], u64::from(sum));
    b[155] = b' ';
    b
}

fn is_opaque(path: &Path) -> Result<bool> {
    for key in OPAQUE_XATTRS {
        if get_xattr(path, key)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `lgetxattr`; `None` when the attribute is absent or the filesystem has none.
fn get_xattr(path: &Path, key: &str) -> Result<Option<Vec<u8>>> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let c_key = CString::new(key)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: valid C strings and a buffer of the given length.
        let n = unsafe {
            libc::lgetxattr(
                c_path.as_ptr(),
                c_key.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            _ => {
                return Err(e)
                    .with_context(|| format!("cannot read xattr {key} of {}", path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn members(bytes: &[u8]) -> Vec<(String, u8, u64, Vec<u8>)> {
        let mut a = tar::Archive::new(bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let kind = e.header().entry_type().as_byte();
                let size = e.header().size().unwrap();
                let link = e.link_name_bytes().map(|l| l.to_vec()).unwrap_or_default();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, kind, size, if kind == b'0' { data } else { link })
            })
            .collect()
    }

    #[test]
    fn archives_a_tree_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("b")).unwrap();
        std::fs::write(root.join("b/file"), b"content").unwrap();
        std::fs::hard_link(root.join("b/file"), root.join("b/hard")).unwrap();
        symlink("file", root.join("b/sym")).unwrap();
        std::fs::write(root.join("a"), b"").unwrap();
        let long = "x".repeat(150);
        std::fs::write(root.join(&long), b"long").unwrap();

        let mut out = Vec::new();
        write_layer_tar(root, &mut out).unwrap();
        let mut again = Vec::new();
        write_layer_tar(root, &mut again).unwrap();
        assert_eq!(out, again, "deterministic");
        assert_eq!(out.len() % 512, 0);
        assert_eq!(&out[out.len() - 1024..], &[0u8; 1024][..]);

        let m = members(&out);
        let names: Vec<&str> = m.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            names,
            ["a", "b/", "b/file", "b/hard", "b/sym", long.as_str()]
        );
        assert_eq!(m[2].3, b"content");
        assert_eq!(
            (m[3].1, m[3].3.as_slice()),
            (b'1', &b"b/file"[..]),
            "hardlink to the first name"
        );
        assert_eq!((m[4].1, m[4].3.as_slice()), (b'2', &b"file"[..]));
        assert_eq!(m[5].3, b"long");
    }

    #[test]
    fn pax_record_lengths() {
        assert_eq!(pax_record(b"path", b"abc"), b"12 path=abc\n");
    }
}
