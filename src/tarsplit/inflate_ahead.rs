//! Inflating a gzip stream on a thread of its own, ahead of its reader.
//!
//! For the sizing pass, which must finish before anything is written and otherwise runs on one
//! core while the others wait: inflating a large tar-split costs about half as much as parsing
//! it, and the two overlap on separate cores.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use flate2::read::GzDecoder;

use crate::ahead::Ahead;

/// Bytes inflated per message: large enough that messages cost nothing next to inflating.
/// The parser's `BufReader` has the same capacity, so it takes one chunk per refill.
pub const CHUNK: usize = 256 << 10;
/// Chunks inflated ahead of the reader.
const DEPTH: usize = 4;

/// A `Read` of the inflated stream, fed by a background thread.
pub struct InflateAhead {
    chunks: Ahead<io::Result<Vec<u8>>>,
    /// Emptied chunks go back to the thread, so that no chunk is allocated twice.
    recycle: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
}

impl InflateAhead {
    pub fn start<R: Read + Send + 'static>(input: R) -> Self {
        let (recycle, recycled) = sync_channel::<Vec<u8>>(DEPTH + 2);
        let chunks = Ahead::start("inflate", DEPTH, move |tx| {
            inflate(GzDecoder::new(input), tx, recycled)
        });
        InflateAhead {
            chunks,
            recycle,
            current: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

/// The thread's loop. Each chunk is what one `read` of `CHUNK` bytes returned: the same reads a
/// `BufReader` of that capacity makes, so that a damaged stream yields the same bytes before
/// the same error as when inflated in place (zlib drops a call's output when it fails).
fn inflate(mut input: impl Read, tx: SyncSender<io::Result<Vec<u8>>>, recycled: Receiver<Vec<u8>>) {
    loop {
        let mut buf = recycled.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        let chunk = match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                Ok(buf)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
        let failed = chunk.is_err();
        // A closed channel means the reader stopped early: nothing more to do.
        if tx.send(chunk).is_err() || failed {
            return;
        }
    }
}

impl Read for InflateAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.done || out.is_empty() {
                return Ok(0);
            }
            let Some(next) = self.chunks.recv() else {
                self.done = true;
                return Ok(0);
            };
            let next = next.inspect_err(|_| self.done = true)?;
            let used = std::mem::replace(&mut self.current, next);
            let _ = self.recycle.try_send(used);
            self.pos = 0;
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn read_all(r: &mut impl Read) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        let mut buf = [0u8; 7000];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return (out, None),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }

    #[test]
    fn yields_what_gzdecoder_yields() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let stream = gz(&data);
            let (got, err) = read_all(&mut InflateAhead::start(std::io::Cursor::new(stream)));
            assert_eq!(err, None, "{len}");
            assert!(got == data, "{len}");
        }
    }

    #[test]
    fn errors_as_gzdecoder_does() {
        let data: Vec<u8> = (0..3 * CHUNK).map(|i| (i * 13 % 253) as u8).collect();
        let full = gz(&data);
        let mut corrupt = full.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid] ^= 0x55;
        for stream in [
            full[..full.len() / 2].to_vec(),
            corrupt,
            b"not gzip".to_vec(),
        ] {
            let mut in_place =
                std::io::BufReader::with_capacity(CHUNK, GzDecoder::new(&stream[..]));
            let want = read_all(&mut in_place);
            let got = read_all(&mut std::io::BufReader::with_capacity(
                CHUNK,
                InflateAhead::start(std::io::Cursor::new(stream)),
            ));
            assert!(want.1.is_some());
            assert_eq!(got.1, want.1);
            assert!(got.0 == want.0, "bytes before the error differ");
        }
    }

    #[test]
    fn dropping_early_does_not_hang() {
        let data = vec![0u8; 20 * CHUNK];
        let mut r = InflateAhead::start(std::io::Cursor::new(gz(&data)));
        let mut buf = [0u8; 10];
        r.read_exact(&mut buf).unwrap();
        drop(r);
    }
}
