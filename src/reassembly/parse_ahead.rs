//! Parsing tar-split on its own thread, ahead of the reader.
//!
//! For a layer of many small files, decompressing and parsing tar-split (gzip, JSON, base64)
//! costs about as much as opening and reading the files. Done on a thread of its own it
//! overlaps with them, the way hashing overlaps with both.

use crate::ahead::Ahead;
use crate::tarsplit::{Entry, TarSplitError};

/// Entries travel in batches: one channel message per entry would cost more than parsing it.
const BATCH: usize = 256;
/// Batches parsed ahead of the reader.
const DEPTH: usize = 8;

type Batch = Vec<Result<Entry, TarSplitError>>;

/// An iterator over entries parsed by a background thread.
pub struct ParseAhead {
    batches: Ahead<Batch>,
    current: std::vec::IntoIter<Result<Entry, TarSplitError>>,
}

impl ParseAhead {
    pub fn start<I>(entries: I) -> Self
    where
        I: Iterator<Item = Result<Entry, TarSplitError>> + Send + 'static,
    {
        let batches = Ahead::start("tar-split", DEPTH, move |tx| {
            let mut entries = entries;
            loop {
                // A batch ends early at the stream's end or at its first error, after which
                // nothing more is parsed.
                let mut batch: Batch = Vec::with_capacity(BATCH);
                let mut last = false;
                while batch.len() < BATCH {
                    match entries.next() {
                        None => {
                            last = true;
                            break;
                        }
                        Some(entry) => {
                            last = entry.is_err();
                            batch.push(entry);
                            if last {
                                break;
                            }
                        }
                    }
                }
                if batch.is_empty() || tx.send(batch).is_err() || last {
                    return;
                }
            }
        });
        ParseAhead {
            batches,
            current: Vec::new().into_iter(),
        }
    }
}

impl Iterator for ParseAhead {
    type Item = Result<Entry, TarSplitError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(entry) = self.current.next() {
                return Some(entry);
            }
            let batch = self.batches.recv()?;
            self.current = batch.into_iter();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(i: usize) -> Result<Entry, TarSplitError> {
        Ok(Entry::Segment(vec![i as u8]))
    }

    #[test]
    fn yields_everything_in_order() {
        for n in [0, 1, BATCH - 1, BATCH, BATCH + 1, 5 * BATCH + 3] {
            let got: Vec<_> = ParseAhead::start((0..n).map(segment))
                .map(Result::unwrap)
                .collect();
            let want: Vec<_> = (0..n).map(|i| segment(i).unwrap()).collect();
            assert_eq!(got, want, "n = {n}");
        }
    }

    #[test]
    fn stops_after_an_error_and_when_dropped_early() {
        let items = (0..1000).map(|i| {
            if i == 300 {
                Err(TarSplitError::Truncated)
            } else {
                segment(i)
            }
        });
        let got: Vec<_> = ParseAhead::start(items).collect();
        assert_eq!(got.len(), 301);
        assert!(got[300].is_err());
        // Dropping after one entry must not hang on a parser blocked on a full channel.
        let mut it = ParseAhead::start((0..100_000).map(segment));
        assert!(it.next().is_some());
        drop(it);
    }
}
