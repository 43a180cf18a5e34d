//! Read buffers, kept for reuse by size class.
//!
//! A layer of 44,000 small files needs a buffer per file. Allocating each one afresh cost a
//! `malloc`, a `memset` of the whole buffer and, for the larger ones, page faults, on the
//! thread that also opens, reads and checks every file; reused buffers cost none of that.

/// The smallest size class: smaller buffers gain nothing from pooling.
const MIN_CLASS: usize = 4 << 10;

/// Buffers by power-of-two size class, from [`MIN_CLASS`] to `max_len`.
pub struct BufferPool {
    /// `classes[i]` holds buffers of exactly `MIN_CLASS << i` bytes.
    classes: Vec<Vec<Vec<u8>>>,
    max_len: usize,
    /// Bytes held for reuse, and the most this pool may hold.
    pooled: usize,
    budget: usize,
}

impl BufferPool {
    /// A pool of buffers up to `max_len` bytes (a power of two), holding at most `budget`
    /// bytes while they are unused.
    pub fn new(max_len: usize, budget: usize) -> Self {
        assert!(max_len.is_power_of_two() && max_len >= MIN_CLASS);
        let classes = (max_len / MIN_CLASS).trailing_zeros() as usize + 1;
        BufferPool {
            classes: (0..classes).map(|_| Vec::new()).collect(),
            max_len,
            pooled: 0,
            budget,
        }
    }

    fn class_of(len: usize) -> (usize, usize) {
        let size = len.max(MIN_CLASS).next_power_of_two();
        ((size / MIN_CLASS).trailing_zeros() as usize, size)
    }

    /// A buffer of at least `len` (≤ `max_len`) bytes. Its contents are unspecified (zeros, or
    /// what an earlier user left): callers use only the bytes they read into it.
    pub fn take(&mut self, len: usize) -> Vec<u8> {
        assert!(len <= self.max_len, "buffer of {len} bytes requested");
        let (class, size) = Self::class_of(len);
        match self.classes[class].pop() {
            Some(buf) => {
                self.pooled -= size;
                buf
            }
            None => vec![0; size],
        }
    }

    /// Returns a buffer from [`Self::take`] for reuse (dropped if the pool is full).
    pub fn give(&mut self, buf: Vec<u8>) {
        let (class, size) = Self::class_of(buf.len());
        if size != buf.len() || class >= self.classes.len() || self.pooled + size > self.budget {
            return;
        }
        self.pooled += size;
        self.classes[class].push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_by_class_within_budget() {
        let mut pool = BufferPool::new(1 << 20, 3 << 20);
        let a = pool.take(1);
        assert_eq!(a.len(), MIN_CLASS);
        let b = pool.take(MIN_CLASS + 1);
        assert_eq!(b.len(), 2 * MIN_CLASS);
        let big = pool.take(1 << 20);
        assert_eq!(big.len(), 1 << 20);
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        pool.give(a);
        pool.give(b);
        let (a, b) = (pool.take(100), pool.take(2 * MIN_CLASS));
        assert_eq!((a.as_ptr(), b.as_ptr()), (pa, pb));
        // Foreign sizes are not kept; nor anything beyond the budget.
        pool.give(vec![0; 5000]);
        assert_eq!(pool.pooled, 0);
        for _ in 0..5 {
            pool.give(vec![0; 1 << 20]);
        }
        assert_eq!(pool.pooled, 3 << 20);
    }
}
