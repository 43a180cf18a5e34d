//! The io_uring engine: many member files open and reading at once, delivered in order.
//!
//! Why: a layer of 20,000 small files spends its time in per-file system calls, and on a cold
//! cache in waiting for one open or read at a time. Here a window of upcoming files is kept in
//! flight — opened, then read in chunks — and completions are consumed in whatever order the
//! kernel finishes them, while the stream is still delivered strictly in tar order.
//!
//! Opens first try a synchronous `openat2` with `RESOLVE_CACHED`, which succeeds without I/O
//! when the path is in the dentry cache; only the rest go through the ring (where the kernel
//! runs them on io-wq workers, in parallel). On a warm cache that saves a thread hop per file;
//! on a cold one, it is what lets many inode lookups wait on the disk at once.
//!
//! Safety rules this code keeps:
//! - every buffer, name and `open_how` handed to the kernel lives (at a stable heap address)
//!   until its completion arrives; on any error the ring is drained before buffers are freed;
//! - files are opened with the same `RESOLVE_IN_ROOT` confinement and regular-file/size check
//!   as the plain engine ([`super::safe_open`]).

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{anyhow, bail, Result};
use io_uring::{opcode, types, IoUring};

use super::buffer_pool::BufferPool;
use super::safe_open::{
    check_regular_of_size, member_c_name, member_open_how, openat2, retry_without_noatime,
};
use super::{Entries, LayerDir, ReadEngine, ReplaySink};
use crate::tarsplit::{Entry, FileEntry};

/// Submission queue size; also the bound on operations in flight.
const RING_ENTRIES: u32 = 256;
/// Files opened ahead of the one being delivered.
const MAX_FILES_AHEAD: usize = 128;
/// Bytes of reads in flight or waiting to be delivered, as requested: buffers come rounded up
/// to their size class (a power of two), so up to about twice this is pinned.
const MAX_BYTES_AHEAD: usize = 32 << 20;
/// One read's size: large enough that a big file costs few system calls, small enough that
/// delivery (hashing) of the first chunk starts early.
const CHUNK: usize = 1 << 20;
/// Reads in flight or waiting per file: a few at a time keep a large file's reads sequential
/// enough for the kernel's readahead on a cold cache, and its buffers warm in the CPU cache.
const PER_FILE_READS: usize = 4;
/// Reads the head-of-queue file may keep in flight even when the byte budget is spent.
const HEAD_READS: usize = 4;

const OP_OPEN: u64 = 1;
const OP_READ: u64 = 2;

/// Checks that io_uring can be set up here and supports what we need (openat2 and read).
pub fn probe() -> Result<()> {
    let ring = IoUring::new(4).map_err(|e| anyhow!("io_uring_setup failed: {e}"))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| anyhow!("io_uring probe failed: {e}"))?;
    for (code, name) in [
        (opcode::OpenAt2::CODE, "openat2"),
        (opcode::Read::CODE, "read"),
    ] {
        if !probe.is_supported(code) {
            bail!("this kernel's io_uring lacks {name}");
        }
    }
    Ok(())
}

pub struct UringEngine {
    ring: IoUring,
    /// Shared by every open; boxed so its address is stable while the kernel may read it.
    how: Box<types::OpenHow>,
    /// `how` without O_NOATIME, for once the kernel has refused it
    /// ([`super::safe_open::retry_without_noatime`]).
    how_without_noatime: Box<types::OpenHow>,
    /// Read buffers for reuse, up to CHUNK bytes (the byte budget needs no more than it holds).
    buffers: BufferPool,
    /// Whether this kernel knows `RESOLVE_CACHED` (5.12+), which the synchronous fast-path
    /// open needs; older ones refuse the flag, and every open then goes through the ring.
    cached_opens: bool,
}

impl UringEngine {
    pub fn new() -> Result<Self> {
        let ring = IoUring::new(RING_ENTRIES).map_err(|e| anyhow!("io_uring_setup failed: {e}"))?;
        let h = member_open_how();
        let how = Box::new(types::OpenHow::new().flags(h.flags).resolve(h.resolve));
        let how_without_noatime = Box::new(
            types::OpenHow::new()
                .flags(h.flags & !(libc::O_NOATIME as u64))
                .resolve(h.resolve),
        );
        Ok(UringEngine {
            ring,
            how,
            how_without_noatime,
            buffers: BufferPool::new(CHUNK, MAX_BYTES_AHEAD),
            cached_opens: kernel_knows_resolve_cached(),
        })
    }
}

/// Whether `openat2` accepts `RESOLVE_CACHED` here (unknown resolve flags are EINVAL).
fn kernel_knows_resolve_cached() -> bool {
    // SAFETY: open_how is a plain C struct; all-zero is a valid value we then fill in.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_CACHED;
    let root = CString::new("/").expect("no NUL");
    match openat2(libc::AT_FDCWD, &root, &how) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() != Some(libc::EINVAL),
    }
}

/// A queued item of the layer stream, delivered in order.
enum Item {
    Segment(Vec<u8>),
    File(Box<FileState>),
}

struct FileState {
    entry: FileEntry,
    /// Read by the kernel: it must stay alive until the open completes.
    name: CString,
    file: Option<File>,
    open_pending: bool,
    /// Whether the open asked for O_NOATIME (and may be retried without it).
    noatime: bool,
    /// Next file offset to issue a read for.
    next_read: u64,
    /// Chunks in file order; `chunks[0]` starts at `delivered`.
    chunks: VecDeque<Chunk>,
    delivered: u64,
}

struct Chunk {
    /// From the engine's pool: at least `len` bytes, of which the first `len` are this chunk's.
    buf: Vec<u8>,
    /// Offset of this chunk in the file.
    offset: u64,
    /// Bytes wanted and bytes already read into `buf`.
    len: usize,
    filled: usize,
    in_flight: bool,
}

/// The per-replay scheduler state.
struct Replay<'e> {
    engine: &'e mut UringEngine,
    /// The layer directory every member is opened relative to.
    dir_fd: i32,
    /// The layer directory, for messages.
    dir_path: &'e std::path::Path,
    queue: VecDeque<Item>,
    /// Queue positions are stable for user_data: item `i` is at `queue[i - popped]`.
    popped: u64,
    in_flight: usize,
    files_ahead: usize,
    bytes_ahead: usize,
    pending_sqes: usize,
    /// Item number before which every file has all its reads issued.
    scan_from: u64,
    /// Reused between loop turns, to keep allocation out of the hot loop.
    to_submit: Vec<(usize, usize, i32)>,
    completions: Vec<(u64, i32)>,
}

/// An `openat2` of `name` relative to `dir_fd`. The kernel reads `how` and `name` when the entry
/// is submitted: both must stay alive and in place until the open completes.
fn open_sqe(how: &types::OpenHow, dir_fd: i32, name: &CString) -> io_uring::squeue::Entry {
    opcode::OpenAt2::new(types::Fd(dir_fd), name.as_ptr(), how).build()
}

fn user_data(item: u64, chunk: u64, op: u64) -> u64 {
    // item number (modulo 2^32): 32 bits; chunk number (file offset / CHUNK, modulo 2^24):
    // 24 bits; op: 8 bits. Far fewer than 2^32 items are ever queued at once, so the item
    // number modulo 2^32 still identifies one (see `position_of`).
    ((item & 0xffff_ffff) << 32) | ((chunk & 0xff_ffff) << 8) | op
}

/// Checks a freshly opened member and prepares it for reading.
fn opened(file: File, entry: &FileEntry) -> Result<File> {
    check_regular_of_size(&file, entry)?;
    if entry.size > CHUNK as u64 {
        // Doubles the kernel's readahead for a large file read front to back.
        // SAFETY: an advisory call on a valid descriptor.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    }
    Ok(file)
}

impl ReadEngine for UringEngine {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn replay(
        &mut self,
        dir: &LayerDir,
        entries: Entries<'_>,
        sink: &mut dyn ReplaySink,
    ) -> Result<()> {
        let mut replay = Replay {
            engine: self,
            dir_fd: dir.fd().as_raw_fd(),
            dir_path: dir.path(),
            queue: VecDeque::new(),
            popped: 0,
            in_flight: 0,
            files_ahead: 0,
            bytes_ahead: 0,
            pending_sqes: 0,
            scan_from: 0,
            to_submit: Vec::new(),
            completions: Vec::new(),
        };
        let result = replay.run(dir, entries, sink);
        // Never free a buffer the kernel may still write into: if the ring cannot be drained,
        // the queue's buffers and names are leaked rather than freed.
        let drained = replay.drain();
        if drained.is_err() {
            std::mem::forget(std::mem::take(&mut replay.queue));
        }
        result.and(drained)
    }
}

impl Replay<'_> {
    fn run(
        &mut self,
        dir: &LayerDir,
        entries: Entries<'_>,
        sink: &mut dyn ReplaySink,
    ) -> Result<()> {
        let mut exhausted = false;
        loop {
            // 1. Look ahead: queue entries and start opening files.
            while !exhausted
                && self.files_ahead < MAX_FILES_AHEAD
                && self.bytes_ahead < MAX_BYTES_AHEAD
            {
                match entries.next() {
                    None => exhausted = true,
                    Some(entry) => match entry? {
                        Entry::Segment(bytes) => {
                            // Counted too: a big file at the head followed by a million
                            // directory entries must not queue all their headers.
                            self.bytes_ahead += bytes.len();
                            self.queue.push_back(Item::Segment(bytes));
                        }
                        Entry::File(f) if f.size == 0 => {}
                        Entry::File(f) => self.enqueue_file(dir, f)?,
                    },
                }
            }
            // 2. Issue reads for opened files, in queue order, within the byte budget.
            self.issue_reads()?;
            // 3. Deliver whatever is complete at the head of the queue.
            self.deliver(sink)?;
            if exhausted && self.queue.is_empty() {
                return Ok(());
            }
            // 4. Wait for at least one completion (unless there's nothing in flight, which means
            //    the head is deliverable or more look-ahead is allowed after delivery).
            let want = usize::from(self.in_flight > 0);
            if self.pending_sqes > 0 || want > 0 {
                submit_and_wait(&self.engine.ring, want)?;
                self.pending_sqes = 0;
            }
            self.reap()?;
        }
    }

    fn enqueue_file(&mut self, dir: &LayerDir, entry: FileEntry) -> Result<()> {
        let name = member_c_name(&entry)?;
        let item_no = self.popped + self.queue.len() as u64;
        // Fast path: when the path is in the dentry cache (a warm cache), a synchronous open with
        // RESOLVE_CACHED costs less than handing the open to io_uring, which would run it on a
        // worker thread. Only lookups that would touch the disk go through the ring.
        let file = loop {
            if !self.engine.cached_opens {
                break None;
            }
            let mut cached_how = member_open_how();
            cached_how.resolve |= libc::RESOLVE_CACHED;
            match openat2(dir.fd().as_raw_fd(), &name, &cached_how) {
                Ok(fd) => break Some(opened(File::from(fd), &entry)?),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break None,
                Err(e) if retry_without_noatime(e.raw_os_error(), cached_how.flags) => {}
                Err(e) => bail!(
                    "file {:?}: cannot open it in {}: {e}",
                    entry.display_name(),
                    self.dir_path.display()
                ),
            }
        };
        let open_pending = file.is_none();
        let noatime = member_open_how().flags & libc::O_NOATIME as u64 != 0;
        self.queue.push_back(Item::File(Box::new(FileState {
            entry,
            name,
            file,
            open_pending,
            noatime,
            next_read: 0,
            chunks: VecDeque::new(),
            delivered: 0,
        })));
        self.files_ahead += 1;
        if !open_pending {
            return Ok(());
        }
        let Some(Item::File(state)) = self.queue.back() else {
            unreachable!("just pushed")
        };
        let how = if noatime {
            &self.engine.how
        } else {
            &self.engine.how_without_noatime
        };
        let sqe = open_sqe(how, self.dir_fd, &state.name).user_data(user_data(item_no, 0, OP_OPEN));
        self.push(sqe)
    }

    fn push(&mut self, sqe: io_uring::squeue::Entry) -> Result<()> {
        // SAFETY: every pointer in `sqe` (name, open_how, buffers) outlives its completion: they
        // are owned by queue items that are only dropped after the ring is drained.
        while unsafe { self.engine.ring.submission().push(&sqe) }.is_err() {
            self.engine.ring.submit()?;
            self.pending_sqes = 0;
        }
        self.in_flight += 1;
        self.pending_sqes += 1;
        Ok(())
    }

    fn issue_reads(&mut self) -> Result<()> {
        let mut to_submit = std::mem::take(&mut self.to_submit);
        let mut ahead = self.bytes_ahead;
        // Items before `scan_from` have all their reads issued; skip them.
        let skip = self.scan_from.saturating_sub(self.popped) as usize;
        let mut fully_issued_prefix = true;
        // Segments are delivered as soon as they reach the head, so this is a short search.
        let head_pos = self.queue.iter().position(|i| matches!(i, Item::File(_)));
        for (pos, item) in self.queue.iter_mut().enumerate().skip(skip) {
            let state = match item {
                Item::Segment(_) => {
                    if fully_issued_prefix {
                        self.scan_from = self.popped + pos as u64 + 1;
                    }
                    continue;
                }
                Item::File(state) => state,
            };
            let head = Some(pos) == head_pos;
            let Some(file) = &state.file else {
                fully_issued_prefix = false;
                continue;
            };
            while state.next_read < state.entry.size && state.chunks.len() < PER_FILE_READS {
                let len = (state.entry.size - state.next_read).min(CHUNK as u64) as usize;
                // The budget bounds memory; the file at the head of the queue may always keep a
                // few reads going, or files read ahead could fill the budget and starve it.
                let over_budget = ahead + len > MAX_BYTES_AHEAD;
                if over_budget && !(head && state.chunks.len() < HEAD_READS) {
                    break;
                }
                // A buffer of about the file's size (its size class), so that many small files
                // ahead do not each pin a full-size buffer.
                let buf = self.engine.buffers.take(len);
                state.chunks.push_back(Chunk {
                    buf,
                    offset: state.next_read,
                    len,
                    filled: 0,
                    in_flight: false,
                });
                state.next_read += len as u64;
                ahead += len;
                to_submit.push((pos, state.chunks.len() - 1, file.as_raw_fd()));
            }
            if state.next_read < state.entry.size {
                fully_issued_prefix = false;
            } else if fully_issued_prefix {
                self.scan_from = self.popped + pos as u64 + 1;
            }
        }
        self.bytes_ahead = ahead;
        for &(pos, chunk_idx, fd) in &to_submit {
            self.submit_chunk(pos, chunk_idx, fd)?;
        }
        to_submit.clear();
        self.to_submit = to_submit;
        Ok(())
    }

    /// Submits (or, after a short read, resubmits the rest of) the read for one chunk.
    fn submit_chunk(&mut self, pos: usize, chunk_idx: usize, fd: i32) -> Result<()> {
        let item_no = self.popped + pos as u64;
        let Item::File(state) = &mut self.queue[pos] else {
            unreachable!("reads target files")
        };
        let chunk = &mut state.chunks[chunk_idx];
        chunk.in_flight = true;
        let ptr = chunk.buf[chunk.filled..].as_mut_ptr();
        let sqe = opcode::Read::new(types::Fd(fd), ptr, (chunk.len - chunk.filled) as u32)
            .offset(chunk.offset + chunk.filled as u64)
            .build()
            .user_data(user_data(item_no, chunk.offset / CHUNK as u64, OP_READ));
        self.push(sqe)
    }

    fn reap(&mut self) -> Result<()> {
        let mut completions = std::mem::take(&mut self.completions);
        completions.extend(taken_completions(&mut self.engine.ring));
        // The whole batch has left the ring, even if handling stops at an error part-way:
        // `drain` must not wait for completions that were already taken.
        self.in_flight -= completions.len();
        let mut result = Ok(());
        for (i, &(data, res)) in completions.iter().enumerate() {
            result = self.handle_completion(data, res);
            if result.is_err() {
                // Opens later in the batch than the failure were never claimed by a file.
                close_unclaimed_opens(&completions[i + 1..]);
                break;
            }
        }
        completions.clear();
        self.completions = completions;
        result
    }

    fn handle_completion(&mut self, data: u64, result: i32) -> Result<()> {
        let op = data & 0xff;
        let abs_chunk = (data >> 8) & 0xff_ffff;
        let pos = ((data >> 32).wrapping_sub(self.popped) & 0xffff_ffff) as usize;
        let Some(Item::File(state)) = self.queue.get_mut(pos) else {
            bail!("io_uring completion for an unknown item");
        };
        match op {
            OP_OPEN => {
                state.open_pending = false;
                let asked = if state.noatime {
                    libc::O_NOATIME as u64
                } else {
                    0
                };
                if result < 0 && retry_without_noatime(Some(-result), asked) {
                    state.noatime = false;
                    state.open_pending = true;
                    let sqe = open_sqe(&self.engine.how_without_noatime, self.dir_fd, &state.name)
                        .user_data(data);
                    self.push(sqe)?;
                    return Ok(());
                }
                if result < 0 {
                    let e = std::io::Error::from_raw_os_error(-result);
                    bail!(
                        "file {:?}: cannot open it in {}: {e}",
                        state.entry.display_name(),
                        self.dir_path.display()
                    );
                }
                // SAFETY: the kernel returned a new descriptor that we now own.
                let file = unsafe { File::from_raw_fd(result) };
                state.file = Some(opened(file, &state.entry)?);
            }
            OP_READ => {
                let base = state.delivered / CHUNK as u64;
                let idx = (abs_chunk.wrapping_sub(base) & 0xff_ffff) as usize;
                let chunk = &mut state.chunks[idx];
                chunk.in_flight = false;
                if result == -libc::EAGAIN {
                    // Kernels before 5.10 or so return EAGAIN to io_uring reads of an
                    // O_NONBLOCK file whose pages are not cached (the flag is only there
                    // for the open, against FIFOs): drop it and read again, blocking.
                    let fd = state.file.as_ref().expect("read implies open").as_raw_fd();
                    clear_nonblock(fd).map_err(|e| {
                        anyhow!("file {:?}: fcntl failed: {e}", state.entry.display_name())
                    })?;
                    self.submit_chunk(pos, idx, fd)?;
                    return Ok(());
                }
                if result < 0 {
                    let e = std::io::Error::from_raw_os_error(-result);
                    bail!("file {:?}: read failed: {e}", state.entry.display_name());
                }
                if result == 0 {
                    bail!(
                        "file {:?}: ended at byte {} of {} (truncated while reading)",
                        state.entry.display_name(),
                        chunk.offset + chunk.filled as u64,
                        state.entry.size
                    );
                }
                chunk.filled += result as usize;
                if chunk.filled < chunk.len {
                    let fd = state.file.as_ref().expect("read implies open").as_raw_fd();
                    self.submit_chunk(pos, idx, fd)?;
                }
            }
            _ => bail!("io_uring completion with an unknown operation"),
        }
        Ok(())
    }

    fn deliver(&mut self, sink: &mut dyn ReplaySink) -> Result<()> {
        while let Some(head) = self.queue.front_mut() {
            match head {
                Item::Segment(bytes) => {
                    sink.segment(bytes)?;
                    self.bytes_ahead -= bytes.len();
                }
                Item::File(state) => {
                    while let Some(chunk) = state.chunks.front() {
                        if chunk.in_flight || chunk.filled < chunk.len {
                            return Ok(());
                        }
                        let chunk = state.chunks.pop_front().expect("front exists");
                        sink.file_data(&chunk.buf[..chunk.len])?;
                        state.delivered += chunk.len as u64;
                        self.bytes_ahead -= chunk.len;
                        self.engine.buffers.give(chunk.buf);
                    }
                    if state.delivered < state.entry.size {
                        return Ok(());
                    }
                    sink.file_end(&state.entry)?;
                    self.files_ahead -= 1;
                }
            }
            self.queue.pop_front();
            self.popped += 1;
        }
        Ok(())
    }

    /// Waits until the kernel holds no pointer into our memory, closing the files of opens
    /// that completed unseen.
    fn drain(&mut self) -> Result<()> {
        while self.in_flight > 0 {
            submit_and_wait(&self.engine.ring, 1)?;
            let unseen: Vec<(u64, i32)> = taken_completions(&mut self.engine.ring).collect();
            self.in_flight -= unseen.len();
            close_unclaimed_opens(&unseen);
        }
        Ok(())
    }
}

/// The completions waiting in the ring, as (user_data, result), taken off it.
fn taken_completions(ring: &mut IoUring) -> impl Iterator<Item = (u64, i32)> + '_ {
    ring.completion().map(|cqe| (cqe.user_data(), cqe.result()))
}

/// Closes the descriptors of successful opens among `completions`, which nobody will use.
fn close_unclaimed_opens(completions: &[(u64, i32)]) {
    for &(data, result) in completions {
        if data & 0xff == OP_OPEN && result >= 0 {
            // SAFETY: a descriptor the kernel opened for us and nobody else holds.
            drop(unsafe { OwnedFd::from_raw_fd(result) });
        }
    }
}

/// Clears O_NONBLOCK on an open member (a regular file, checked at open).
fn clear_nonblock(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `io_uring_enter` until at least `want` completions are ready, resumed after signals
/// (a stopped and continued process gets EINTR here even with no handler installed).
fn submit_and_wait(ring: &IoUring, want: usize) -> std::io::Result<usize> {
    loop {
        match ring.submit_and_wait(want) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}
