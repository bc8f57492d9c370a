//! [`Journal`]: where journal lines go, and what happens when they come faster than the
//! destination takes them.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

use crate::{Error, Result};

/// How many bytes of journal lines may wait for the writer thread by default (2 MiB).
pub const DEFAULT_BUFFER: usize = 2 * 1024 * 1024;

/// Where journal lines go.
///
/// By default a journal is lossless: when spans end faster than the destination takes
/// their lines, the threads ending them wait (see the [module docs](super)). With
/// [`lossy`](Self::lossy) they never wait; lines that do not fit are dropped, counted and
/// reported.
pub struct Journal {
    pub(crate) name: String,
    pub(crate) writer: Box<dyn Write + Send>,
    pub(crate) lossy: bool,
    pub(crate) buffer: usize,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("name", &self.name)
            .field("lossy", &self.lossy)
            .field("buffer", &self.buffer)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Write to standard output.
    pub fn stdout() -> Journal {
        Journal::writer("-", io::stdout())
    }

    /// Append to the file at `path`, creating it if needed (an existing journal is never
    /// truncated).
    pub fn file(path: impl AsRef<Path>) -> Result<Journal> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::JournalIo {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Journal::writer(path.display().to_string(), file))
    }

    /// Write to any writer; `name` identifies it in errors. The writer is called from the
    /// journal's own thread, with large blocks of whole lines, and flushed after each.
    ///
    /// It must not wait for the threads that end spans (say, on a channel that a task of
    /// the same runtime reads): in a burst those threads wait for it. Spans it ends
    /// itself never wait (if its buffer is full they are dropped, and counted).
    pub fn writer(name: impl Into<String>, writer: impl Write + Send + 'static) -> Journal {
        Journal {
            name: name.into(),
            writer: Box::new(writer),
            lossy: false,
            buffer: DEFAULT_BUFFER,
        }
    }

    /// Never make a thread that ends a span wait: when the buffer is full, drop the span's
    /// line instead. Every dropped span is counted, logged through `tracing` once per
    /// burst, and reported by [`Telemetry::flush`](crate::Telemetry::flush) and
    /// [`Telemetry::shutdown`](crate::Telemetry::shutdown) as
    /// [`Error::Dropped`](crate::Error::Dropped).
    pub fn lossy(mut self) -> Journal {
        self.lossy = true;
        self
    }

    /// How many bytes of finished lines may wait for the writer before spans wait (or,
    /// [`lossy`](Self::lossy), are dropped): [`DEFAULT_BUFFER`] unless set. At least 4 KiB.
    pub fn buffer(mut self, bytes: usize) -> Journal {
        self.buffer = bytes.max(MIN_CHUNK);
        self
    }
}

/// The smallest block of lines handed to the writer.
pub(crate) const MIN_CHUNK: usize = 4 * 1024;
/// The largest block of lines handed to the writer.
const MAX_CHUNK: usize = 256 * 1024;

impl Journal {
    /// The size of one block of lines, and how many full blocks may wait: together at
    /// most `buffer` bytes (short of a single line longer than a block).
    pub(crate) fn chunking(&self) -> (usize, usize) {
        let chunk = (self.buffer / 8).clamp(MIN_CHUNK, MAX_CHUNK);
        (chunk, (self.buffer / chunk).max(1))
    }
}
