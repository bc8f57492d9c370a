//! The journal's span processor: lines written on the thread that ends the span, handed
//! in blocks to one writer thread through a bounded queue (see the [module docs](super)).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;

use super::line::{service_json, write_line, Finished, Scratch};
use super::target::Journal;
use crate::export::{Health, Popped, Queue, SinkKind, Wait};

/// How long a partly filled block may wait before the writer takes it anyway.
const IDLE: Duration = Duration::from_millis(500);
/// How long `force_flush` waits for the writer.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// A thread's line buffer is given back when a line made it larger than this.
const SCRATCH_KEEP: usize = 64 * 1024;

thread_local! {
    /// The line being written and what the writer keeps, reused by every span this thread
    /// ends.
    static SCRATCH: RefCell<(Vec<u8>, Scratch)> = RefCell::new((Vec::with_capacity(1024), Scratch::default()));
    /// Whether this thread is a journal's writer (which must never wait for itself).
    static IS_WRITER: Cell<bool> = const { Cell::new(false) };
}

/// A block of whole lines.
#[derive(Debug, Default)]
struct Chunk {
    bytes: Vec<u8>,
    lines: u64,
}

/// The block being filled, and whether the writer has taken its last one.
#[derive(Debug, Default)]
struct Filling {
    chunk: Chunk,
    closed: bool,
}

#[derive(Debug)]
pub(crate) struct Shared {
    filling: Mutex<Filling>,
    queue: Queue<Chunk>,
    /// Emptied blocks, kept for reuse.
    free: Mutex<Vec<Vec<u8>>>,
    chunk_size: usize,
    /// How many full blocks may wait.
    chunks: usize,
    lossy: bool,
    health: Health,
}

/// A `SpanProcessor` that writes each finished span as one journal line.
pub(crate) struct JournalProcessor {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// The service name as JSON, from the resource.
    service: Vec<u8>,
}

impl fmt::Debug for JournalProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalProcessor")
            .field("journal", &self.shared.health.name())
            .field("lossy", &self.shared.lossy)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; if something did, the data is intact.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl JournalProcessor {
    /// Start the writer thread of `journal`.
    pub(crate) fn new(journal: Journal) -> std::io::Result<JournalProcessor> {
        let (chunk_size, chunks) = journal.chunking();
        let shared = Arc::new(Shared {
            filling: Mutex::new(Filling::default()),
            queue: Queue::new(chunks),
            free: Mutex::new(Vec::new()),
            chunk_size,
            chunks,
            lossy: journal.lossy,
            health: Health::new(journal.name, SinkKind::Journal, chunk_size * chunks),
        });
        let worker = {
            let shared = shared.clone();
            let writer = journal.writer;
            std::thread::Builder::new()
                .name("tracehop-journal".into())
                .spawn(move || shared.run(writer))?
        };
        Ok(JournalProcessor {
            shared,
            worker: Mutex::new(Some(worker)),
            service: service_json(None),
        })
    }

    pub(crate) fn health(&self) -> Health {
        self.shared.health.clone()
    }

    /// Where spans the journal records itself go: this processor's blocks and writer.
    pub(crate) fn sink(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

impl SpanProcessor for JournalProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        self.shared.write_span(&Finished::of(&span), &self.service);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.shared.flush(FLUSH_TIMEOUT)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let flushed = self.shared.flush(timeout);
        self.shared.queue.close();
        let worker = lock(&self.worker).take();
        if flushed.is_ok() {
            // The writer has nothing left but the close: it ends at once.
            if let Some(worker) = worker {
                let _ = worker.join();
            }
        }
        flushed
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.service = service_json(super::service_name(resource).as_deref());
    }
}

impl Drop for JournalProcessor {
    fn drop(&mut self) {
        // Not shut down (the provider normally does it): let the writer finish alone.
        self.shared.queue.close();
    }
}

impl Shared {
    /// Write `span`'s line on this thread and append it to the block being filled.
    pub(super) fn write_span(&self, span: &Finished<'_>, service: &[u8]) {
        let written = SCRATCH.try_with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return false;
            };
            let (line, kept) = &mut *scratch;
            line.clear();
            write_line(line, span, service, kept);
            line.push(b'\n');
            self.append(line);
            if line.capacity() > SCRATCH_KEEP {
                *line = Vec::with_capacity(1024);
            }
            true
        });
        if written != Ok(true) {
            // Re-entered, or during thread teardown: a buffer of its own.
            let mut line = Vec::with_capacity(1024);
            write_line(&mut line, span, service, &mut Scratch::default());
            line.push(b'\n');
            self.append(&line);
        }
    }

    /// Whether the journal was shut down (a span ending now is not recorded, as the SDK
    /// discards spans that end after its provider's shutdown).
    pub(super) fn is_shut_down(&self) -> bool {
        self.queue.is_closed()
    }

    /// Add one line (newline included) to the block being filled, handing the block to
    /// the writer first if the line does not fit.
    fn append(&self, line: &[u8]) {
        let mut filling = lock(&self.filling);
        if filling.closed {
            drop(filling);
            self.health.dropped(1);
            return;
        }
        let used = filling.chunk.bytes.len();
        if used > 0 && used + line.len() > self.chunk_size {
            let fresh = Chunk {
                bytes: self.take_buffer(),
                lines: 0,
            };
            let full = std::mem::replace(&mut filling.chunk, fresh);
            let bytes = full.bytes.len();
            // The writer must never wait for itself.
            let wait = if self.lossy || IS_WRITER.get() {
                Wait::No
            } else {
                Wait::Forever
            };
            match self.queue.push(full, bytes, wait) {
                Ok(queued) => self.health.queued(queued),
                Err(full) => {
                    // Full (lossy) or closed: this line is the one that does not fit.
                    let fresh = std::mem::replace(&mut filling.chunk, full);
                    drop(filling);
                    self.recycle(fresh.bytes);
                    self.health.dropped(1);
                    return;
                }
            }
        }
        if filling.chunk.bytes.capacity() == 0 {
            // The first block, or the one after an idle hand-over: a buffer of full size
            // (an emptied one if there is one), not an empty `Vec` growing by doubling.
            filling.chunk.bytes = self.take_buffer();
        }
        filling.chunk.bytes.extend_from_slice(line);
        filling.chunk.lines += 1;
    }

    /// Hand the partly filled block to the writer: on the writer's idle turn (`None`) if
    /// there is room and no thread is busy with the block (it will be handed over soon
    /// anyway, and the writer must not wait for a thread that waits for it); for a flush,
    /// waiting for room until `deadline`. `false` if the block could not be handed over.
    fn rotate(&self, deadline: Option<Instant>) -> bool {
        let mut filling = loop {
            match self.filling.try_lock() {
                Ok(filling) => break filling,
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => match deadline {
                    None => return true,
                    // A thread waiting for room holds the block: wait with it, but only
                    // until the deadline (a stuck destination must not hang a shutdown).
                    Some(deadline) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Some(_) => return false,
                },
            }
        };
        if filling.chunk.lines == 0 {
            return true;
        }
        let wait = match deadline {
            Some(deadline) if !IS_WRITER.get() => Wait::Until(deadline),
            _ => Wait::No,
        };
        let full = std::mem::take(&mut filling.chunk);
        let bytes = full.bytes.len();
        match self.queue.push(full, bytes, wait) {
            Ok(queued) => {
                self.health.queued(queued);
                true
            }
            // Full, or closed (the writer then takes the block itself when it ends).
            Err(full) => {
                filling.chunk = full;
                self.queue.is_closed()
            }
        }
    }

    fn flush(&self, timeout: Duration) -> OTelSdkResult {
        let deadline = Instant::now() + timeout;
        let handed = self.rotate(Some(deadline));
        let done = handed
            && self
                .queue
                .flush(deadline.saturating_duration_since(Instant::now()));
        self.health.end_burst(true);
        if done {
            Ok(())
        } else {
            Err(OTelSdkError::Timeout(timeout))
        }
    }

    fn take_buffer(&self) -> Vec<u8> {
        lock(&self.free)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.chunk_size))
    }

    fn recycle(&self, mut bytes: Vec<u8>) {
        if bytes.capacity() > 2 * self.chunk_size {
            // Grown by an oversized line: not worth keeping.
            return;
        }
        bytes.clear();
        let mut free = lock(&self.free);
        if free.len() <= self.chunks {
            free.push(bytes);
        }
    }

    /// The writer thread: write blocks as they come, flush when asked, end when closed.
    fn run(self: Arc<Self>, mut writer: Box<dyn Write + Send>) {
        IS_WRITER.set(true);
        let mut batch = Vec::with_capacity(1);
        loop {
            match self.queue.pop(&mut batch, 1, IDLE) {
                Popped::Items => {
                    let n = batch.len();
                    for chunk in batch.drain(..) {
                        self.write(&mut writer, chunk);
                    }
                    self.queue.handled(n);
                }
                Popped::Flush => {
                    self.flush_writer(&mut writer);
                    self.queue.flushed();
                }
                Popped::Idle => {
                    self.rotate(None);
                }
                Popped::Closed => {
                    let last = {
                        let mut filling = lock(&self.filling);
                        filling.closed = true;
                        std::mem::take(&mut filling.chunk)
                    };
                    if last.lines > 0 {
                        self.write(&mut writer, last);
                    }
                    self.flush_writer(&mut writer);
                    self.queue.flushed();
                    self.health.end_burst(true);
                    return;
                }
            }
            self.health.end_burst(false);
        }
    }

    fn write(&self, writer: &mut Box<dyn Write + Send>, chunk: Chunk) {
        let result = catch_unwind(AssertUnwindSafe(|| {
            writer.write_all(&chunk.bytes).and_then(|()| writer.flush())
        }));
        match result {
            Ok(Ok(())) => self.health.written(chunk.lines),
            Ok(Err(e)) => self.health.failed(chunk.lines, &e),
            Err(_) => self.health.failed(chunk.lines, &"the writer panicked"),
        }
        self.recycle(chunk.bytes);
    }

    fn flush_writer(&self, writer: &mut Box<dyn Write + Send>) {
        match catch_unwind(AssertUnwindSafe(|| writer.flush())) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.health.failed(0, &e),
            Err(_) => self.health.failed(0, &"the writer panicked"),
        }
    }
}
