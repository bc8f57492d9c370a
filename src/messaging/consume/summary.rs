//! What a consume loop reports: its [`Summary`], or the [`ConsumeError`] it stopped with.

use std::fmt;

use super::handler::Panic;
use super::source::{BoxError, SettleError, SourceError};

/// What a consume loop did before it returned. The same on every broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Deliveries the loop finished with (settled, however): what
    /// [`limit`](super::Consumer::limit) counts. A redelivered message counts again.
    pub messages: u64,
    /// Deliveries whose handler succeeded.
    pub succeeded: u64,
    /// Deliveries whose handler failed (after any retries in place), panics included;
    /// the failure policy decided what became of them.
    pub failed: u64,
    /// Of the failed deliveries, how many failed by a panic of the handler.
    pub panicked: u64,
    /// Handler runs repeated in place ([`Decision::Retry`](super::Decision::Retry)).
    pub retries: u64,
    /// Batches handled ([`run_batches`](super::Consumer::run_batches) only).
    pub batches: u64,
    /// Settlements the broker did not take (a refused commit or ack: the message will be
    /// delivered again); each is recorded on its span as `tracehop.settlement.error`.
    pub settle_errors: u64,
    /// Errors the consumer reported between messages and recovered from (logged).
    pub source_errors: u64,
}

/// Why a consume loop stopped with an error. `E` is the handler's error type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeError<E> {
    /// The handler failed and the failure policy said [`Decision::Stop`].
    ///
    /// [`Decision::Stop`]: super::Decision::Stop
    #[error("handler failed on {position}: {error}")]
    Handler {
        /// The handler's error, unchanged.
        error: E,
        /// The message it failed on (the first failed message of a batch).
        position: String,
    },
    /// The handler panicked and the failure policy said [`Decision::Stop`].
    ///
    /// [`Decision::Stop`]: super::Decision::Stop
    #[error("handler panicked on {position}: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
        /// The message it panicked on.
        position: String,
    },
    /// Settling a message failed in a way the loop cannot go past (a Kafka forward that
    /// failed: going on would commit past the message). The message was not settled.
    #[error("{settlement} of {position} failed: {error}")]
    Settle {
        /// What was being done (`forward`, ...).
        settlement: &'static str,
        /// The message.
        position: String,
        /// The client's error.
        error: BoxError,
    },
    /// The consumer failed (its connection or channel closed, a fatal client error).
    #[error("consumer failed: {0}")]
    Source(BoxError),
}

impl<E> ConsumeError<E> {
    pub(crate) fn settle(error: SettleError, position: String) -> Self {
        ConsumeError::Settle {
            settlement: error.settlement,
            position,
            error: error.error,
        }
    }

    pub(crate) fn source(error: SourceError) -> Self {
        ConsumeError::Source(error.error)
    }

    /// The client library's error behind a [`Settle`](Self::Settle) or
    /// [`Source`](Self::Source) error, to downcast (`rdkafka::error::KafkaError`,
    /// `lapin::Error`, ...).
    pub fn client_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            ConsumeError::Settle { error, .. } | ConsumeError::Source(error) => Some(&**error),
            _ => None,
        }
    }
}

/// The failure of one handler run.
pub(crate) enum HandlerFailure<E> {
    Error(E),
    Panic(Panic),
}

impl<E: fmt::Display> fmt::Display for HandlerFailure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerFailure::Error(e) => e.fmt(f),
            HandlerFailure::Panic(panic) => f.write_str(&panic.message),
        }
    }
}

impl<E> HandlerFailure<E> {
    pub(crate) fn panicked(&self) -> bool {
        matches!(self, HandlerFailure::Panic(_))
    }

    /// The failure's `error.type`: the error's type name, or `panic`.
    pub(crate) fn error_type(&self) -> String {
        match self {
            HandlerFailure::Error(_) => crate::messaging::error_type_name::<E>(),
            HandlerFailure::Panic(_) => crate::messaging::attributes::PANIC.to_owned(),
        }
    }

    pub(crate) fn into_error(self, position: String) -> ConsumeError<E> {
        match self {
            HandlerFailure::Error(error) => ConsumeError::Handler { error, position },
            HandlerFailure::Panic(panic) => ConsumeError::Panicked {
                message: panic.message,
                position,
            },
        }
    }
}
