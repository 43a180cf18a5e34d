//! A thread that produces values ahead of their consumer, over a bounded channel.
//!
//! The shape behind parsing and inflating tar-split on threads of their own: the producer runs
//! at most `depth` values ahead, and dropping the consumer's end stops it (its next send fails)
//! and waits for it, so no thread outlives the stream it was reading.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

pub struct Ahead<T> {
    rx: Option<Receiver<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Ahead<T> {
    /// Runs `produce` on a thread named `name`. It sends into a channel of `depth` values and
    /// should return once a send fails: the consumer is gone.
    pub fn start(
        name: &str,
        depth: usize,
        produce: impl FnOnce(SyncSender<T>) + Send + 'static,
    ) -> Self {
        let (tx, rx) = sync_channel(depth);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || produce(tx))
            .unwrap_or_else(|e| panic!("spawning the {name} thread: {e}"));
        Ahead {
            rx: Some(rx),
            thread: Some(thread),
        }
    }

    /// The next value, or `None` once the producer has finished.
    pub fn recv(&self) -> Option<T> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl<T> Drop for Ahead<T> {
    fn drop(&mut self) {
        // Closing the channel stops the producer at its next send.
        drop(self.rx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
