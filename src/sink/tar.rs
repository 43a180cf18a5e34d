//! Headers for the outer archive, in the format Go's `archive/tar` writes for `docker save`:
//! USTAR where every field fits, a PAX extended header for sizes of 8 GiB and more.

/// A tar block.
pub const BLOCK: u64 = 512;

/// The kind of an outer-archive member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Directory,
    RegularFile,
}

/// Largest size the 11-digit octal field holds.
const MAX_OCTAL_SIZE: u64 = 0o77777777777;

/// Bytes of padding after `size` bytes of member data.
pub fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// The header bytes (one block, or three with a PAX size record) for a member.
pub fn header(name: &str, kind: Kind, size: u64, mtime: i64) -> Vec<u8> {
    assert!(
        name.len() <= 100,
        "outer archive names are short by construction"
    );
    let mut out = Vec::with_capacity(3 * BLOCK as usize);
    if size > MAX_OCTAL_SIZE {
        let record = pax_record("size", &size.to_string());
        let pax_name = match name.rsplit_once('/') {
            Some((dir, base)) => format!("{dir}/PaxHeaders.0/{base}"),
            None => format!("PaxHeaders.0/{name}"),
        };
        let pax_name = &pax_name[..pax_name.len().min(100)];
        out.extend_from_slice(&ustar_block(
            pax_name,
            b'x',
            0o644,
            record.len() as u64,
            mtime,
        ));
        out.extend_from_slice(&record);
        out.resize(out.len() + padding(record.len() as u64) as usize, 0);
        // The real header's size field is left 0; the PAX record carries the size.
        out.extend_from_slice(&ustar_block(name, b'0', 0o644, 0, mtime));
        return out;
    }
    let (flag, mode) = match kind {
        Kind::Directory => (b'5', 0o755),
        Kind::RegularFile => (b'0', 0o644),
    };
    out.extend_from_slice(&ustar_block(name, flag, mode, size, mtime));
    out
}

/// Total bytes a member occupies: header(s), data and padding.
pub fn member_len(name: &str, kind: Kind, size: u64) -> u64 {
    header(name, kind, size, 0).len() as u64 + size + padding(size)
}

/// `"<len> <key>=<value>\n"`, where `<len>` counts itself.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len += 1;
    }
    format!("{len} {key}={value}\n").into_bytes()
}

fn ustar_block(name: &str, flag: u8, mode: u32, size: u64, mtime: i64) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut b[100..108], u64::from(mode));
    octal(&mut b[108..116], 0); // uid
    octal(&mut b[116..124], 0); // gid
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], mtime.max(0) as u64);
    b[156] = flag;
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    b[265..269].copy_from_slice(b"root");
    b[297..301].copy_from_slice(b"root");
    octal(&mut b[329..337], 0); // devmajor
    octal(&mut b[337..345], 0); // devminor
                                // The checksum is computed with its own field as spaces, then written as 6 digits, NUL, space.
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
    let digits = format!("{sum:06o}");
    b[148..154].copy_from_slice(digits.as_bytes());
    b[154] = 0;
    b[155] = b' ';
    b
}

/// Zero-padded octal filling the field but its last byte, which is NUL.
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let digits = format!("{value:0width$o}");
    assert!(
        digits.len() == width,
        "value {value} does not fit the tar field"
    );
    field[..width].copy_from_slice(digits.as_bytes());
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(
            pax_record("size", "8589934592"),
            b"19 size=8589934592\n".to_vec()
        );
        let r = pax_record("k", &"v".repeat(95));
        assert_eq!(
            r.len(),
            r.split(|&c| c == b' ')
                .next()
                .map(|n| std::str::from_utf8(n).unwrap().parse::<usize>().unwrap())
                .unwrap()
        );
    }

    #[test]
    fn header_fields_and_checksum() {
        let h = header("blobs/sha256/abc", Kind::RegularFile, 1234, 1_700_000_000);
        assert_eq!(h.len(), 512);
        assert_eq!(&h[124..136], b"00000002322\0");
        assert_eq!(&h[257..265], b"ustar\x0000");
        let mut copy = h.clone();
        copy[148..156].fill(b' ');
        let sum: u32 = copy.iter().map(|&c| u32::from(c)).sum();
        assert_eq!(
            std::str::from_utf8(&h[148..154]).unwrap(),
            format!("{sum:06o}")
        );
    }

    #[test]
    fn huge_members_get_a_pax_size() {
        let size = 9 << 30;
        let h = header("blobs/sha256/abc", Kind::RegularFile, size, 0);
        assert_eq!(h.len(), 1536);
        assert_eq!(h[156], b'x');
        assert!(std::str::from_utf8(&h[512..1024])
            .unwrap()
            .starts_with(&format!("19 size={size}\n")));
        assert_eq!(
            member_len("blobs/sha256/abc", Kind::RegularFile, size),
            1536 + size
        );
    }

    #[test]
    fn padding_rounds_to_blocks() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
        assert_eq!(padding(513), 511);
    }
}
