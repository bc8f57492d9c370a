//! The crate's one error type.

use std::io;

/// Everything that can go wrong in tracehop's own operations.
///
/// Broker errors from the wrapped clients are handed back to the caller unchanged by the
/// adapters; this type covers tracehop's configuration, export and file handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A journal file could not be opened or written.
    #[error("span journal {path}: {source}")]
    JournalIo {
        /// The file (or `-` for standard input/output).
        path: String,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing spans to the journal failed; spans after the failure were dropped.
    #[error("span journal write failed after {written} spans ({dropped} dropped): {message}")]
    JournalWrite {
        /// Spans written before the failure.
        written: u64,
        /// Spans that could not be written.
        dropped: u64,
        /// The first write error seen.
        message: String,
    },
    /// An exporter (OTLP) failed to deliver spans; they were lost.
    #[error("{exporter} export failed for {dropped} spans: {message}")]
    Export {
        /// Which exporter.
        exporter: String,
        /// Spans in the batches that failed.
        dropped: u64,
        /// The first failure.
        message: String,
    },
    /// Spans were dropped: a [lossy](crate::Journal::lossy) journal's buffer or the OTLP
    /// exporter's queue was full when they ended. Counted since the handle was built.
    #[error("{sink} dropped {dropped} spans: its queue was full")]
    Dropped {
        /// Which journal (its name) or exporter (`otlp`).
        sink: String,
        /// How many spans were dropped.
        dropped: u64,
    },
    /// The OpenTelemetry SDK reported an error (export, flush or shutdown).
    #[error("opentelemetry: {0}")]
    Sdk(String),
    /// The OTLP exporter could not be built from its configuration.
    #[cfg(feature = "otlp")]
    #[error("otlp exporter: {0}")]
    Otlp(String),
    /// Input that tracehop was asked to read is not what it should be.
    #[error("{0}")]
    Invalid(String),
}

/// `Result` with tracehop's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
