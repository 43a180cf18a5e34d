//! SHA-256 digests in their `sha256:<hex>` form, the currency of the whole image model.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A `sha256:<64 lowercase hex>` content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

#[derive(Debug, thiserror::Error)]
#[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
pub struct InvalidDigest(pub String);

impl Digest {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// SHA-256 of `data` (sha2 picks the SHA-NI instructions at run time where the CPU has them).
    pub fn of(data: &[u8]) -> Self {
        Digest(Sha256::digest(data).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex digits, without the `sha256:` prefix (blob file names, image IDs).
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[(b >> 4) as usize]));
            s.push(char::from(HEX[(b & 15) as usize]));
        }
        s
    }

    /// Parses 64 lowercase hex digits (no prefix).
    pub fn from_hex(hex: &str) -> Result<Self, InvalidDigest> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(InvalidDigest(hex.to_string()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(|| InvalidDigest(hex.to_string()))?;
            let lo = hex_value(pair[1]).ok_or_else(|| InvalidDigest(hex.to_string()))?;
            out[i] = hi << 4 | lo;
        }
        Ok(Digest(out))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl FromStr for Digest {
    type Err = InvalidDigest;

    /// Parses `sha256:<hex>`; surrounding whitespace is ignored because Docker's metadata files
    /// are read as they are on disk.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        let hex = trimmed
            .strip_prefix("sha256:")
            .ok_or_else(|| InvalidDigest(s.to_string()))?;
        Digest::from_hex(hex).map_err(|_| InvalidDigest(s.to_string()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental SHA-256 that yields a [`Digest`].
#[derive(Clone, Default)]
pub struct Sha256Hasher(Sha256);

impl Sha256Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

/// The SHA-256 and length of everything `reader` yields (read in 1 MiB pieces).
pub fn hash_reader(reader: &mut impl std::io::Read) -> std::io::Result<(Digest, u64)> {
    let mut hasher = Sha256Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok((hasher.finish(), len)),
            Ok(n) => {
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A writer that hashes and counts exactly the bytes its inner writer accepted: how every
/// blob we write (compressed layers, cache entries, regenerated tars) learns its digest.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256Hasher,
    size: u64,
}

impl<W: std::io::Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256Hasher::new(),
            size: 0,
        }
    }

    /// The digest of everything written so far.
    pub fn digest(&self) -> Digest {
        self.hasher.clone().finish()
    }

    /// The number of bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The layer ChainID (OCI image-spec `config.md`): `chain(L1) = diffID(L1)`,
/// `chain(Ln) = sha256(chain(Ln-1) + " " + diffID(Ln))`, hashed as text.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chain: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => *diff_id,
            Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_1024_zero_bytes_is_the_empty_layer_diff_id() {
        let d = Digest::of(&[0u8; 1024]);
        assert_eq!(
            d.to_string(),
            "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
        );
    }

    #[test]
    fn parse_round_trip_and_rejects() {
        let s = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
        let d: Digest = s.parse().unwrap();
        assert_eq!(d.to_string(), s);
        assert_eq!(format!(" {s}\n").parse::<Digest>().unwrap(), d);
        assert!(
            "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
                .parse::<Digest>()
                .is_err()
        );
        assert!(
            "sha256:5F70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
                .parse::<Digest>()
                .is_err()
        );
        assert!("sha256:abc".parse::<Digest>().is_err());
    }

    #[test]
    fn chain_id_matches_the_spec_definition() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = Digest::of(b"c");
        let chain = chain_ids(&[a, b, c]);
        assert_eq!(chain[0], a);
        let ab = Digest::of(format!("sha256:{} sha256:{}", a.hex(), b.hex()).as_bytes());
        assert_eq!(chain[1], ab);
        let abc = Digest::of(format!("sha256:{} sha256:{}", ab.hex(), c.hex()).as_bytes());
        assert_eq!(chain[2], abc);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn incremental_hash_equals_one_shot() {
        let mut h = Sha256Hasher::new();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), Digest::of(b"hello world"));
    }
}
