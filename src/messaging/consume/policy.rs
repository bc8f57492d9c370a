//! What the consume loop does with a message whose handler failed (or panicked).
//!
//! A [`FailurePolicy`] looks at the [`Failure`] and returns a [`Decision`]: stop the loop,
//! settle the message as done, run the handler again in place, give the message back to
//! the broker for redelivery, or settle it in a way only this broker has
//! ([`Decision::Settle`]: forward to a Kafka retry topic, reject into a RabbitMQ
//! dead-letter exchange, terminate a JetStream message). [`OnFailure`] builds the usual
//! policies; any `Fn(&Failure<'_>) -> Decision<A>` is a policy too.
//!
//! ```
//! use std::time::Duration;
//! use tracehop::{Decision, Failure, OnFailure};
//!
//! // Up to three runs in place, then back to the broker until the message's fifth
//! // delivery, then settle it as done. `A` is the broker's own actions (`kafka::Action`,
//! // `amqp::Action`, `nats::JetStreamAction`); this policy uses none of them.
//! let policy: OnFailure<()> = OnFailure::retry_in_place(3, Duration::from_millis(50))
//!     .then(OnFailure::redeliver().below_attempt(5).then(OnFailure::skip()));
//! # let _ = policy;
//!
//! // A policy of your own: the same closure shape on every broker.
//! let custom = |failure: &Failure<'_>| -> Decision<()> {
//!     if failure.panicked || failure.attempt >= 3 {
//!         Decision::Skip
//!     } else {
//!         Decision::Retry { after: Duration::from_millis(100) }
//!     }
//! };
//! # let _ = custom;
//! ```

use std::fmt;
use std::time::Duration;

/// A failed run of a handler, as a [`FailurePolicy`] sees it.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct Failure<'a> {
    /// Where the message came from (topic, subject, queue).
    pub destination: &'a str,
    /// Which delivery of the message this run was, counting from 1: the attempt the
    /// message carries (the `tracehop-attempt` header a forwarding consumer wrote, 1 when
    /// absent), plus the broker's redeliveries, plus the runs already made in place.
    pub attempt: u32,
    /// How many times the handler has run on this message in this loop, this run included.
    pub runs: u32,
    /// How many messages the failed run handled (1, or the size of a batch).
    pub messages: usize,
    /// The handler's error, or the panic's message.
    pub error: &'a dyn fmt::Display,
    /// Whether the handler panicked (then `error` is the panic's message).
    pub panicked: bool,
}

impl fmt::Debug for Failure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failure")
            .field("destination", &self.destination)
            .field("attempt", &self.attempt)
            .field("runs", &self.runs)
            .field("messages", &self.messages)
            .field("error", &self.error.to_string())
            .field("panicked", &self.panicked)
            .finish()
    }
}

/// What to do with a message whose handler failed. `A` is what the broker can do beyond
/// the common decisions (see each adapter's `Action`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision<A> {
    /// Stop the loop and return the error. The message is given back to the broker first,
    /// as [`Redeliver`](Self::Redeliver) does, so it is delivered again when consuming
    /// resumes.
    Stop,
    /// Settle the message as done (Kafka: commit; RabbitMQ and JetStream: ack; core NATS:
    /// nothing to settle) and go on with the next one.
    Skip,
    /// Run the handler again on the same message after waiting `after`, as a new process
    /// span under the same producer span with the next attempt number. Keep it short:
    /// the broker is not read meanwhile.
    Retry {
        /// How long to wait first.
        after: Duration,
    },
    /// Give the message back to the broker to be delivered again, and go on (RabbitMQ:
    /// `basic.nack` with requeue; JetStream: nak; Kafka: seek the partition back to the
    /// message, commit nothing past it; core NATS, which delivers at most once: nothing).
    Redeliver,
    /// Settle the message in a way only this broker has.
    Settle(A),
}

/// Decides what happens to a message whose handler failed.
///
/// Implemented by [`OnFailure`] and by every `Fn(&Failure<'_>) -> Decision<A>` closure.
pub trait FailurePolicy<A>: Send + Sync + 'static {
    /// The decision for `failure`.
    fn decide(&self, failure: &Failure<'_>) -> Decision<A>;

    /// Whether this policy may ever answer [`Decision::Retry`]. When it cannot, the loop
    /// hands the handler the message itself instead of a copy kept for the next run.
    fn may_retry_in_place(&self) -> bool {
        true
    }
}

impl<A, F> FailurePolicy<A> for F
where
    F: Fn(&Failure<'_>) -> Decision<A> + Send + Sync + 'static,
{
    fn decide(&self, failure: &Failure<'_>) -> Decision<A> {
        self(failure)
    }
}

/// The common failure policies, composable with [`then`](OnFailure::then).
///
/// The default is [`OnFailure::redeliver`]: a failed message goes back to the broker and
/// nothing past it is lost. Each adapter adds its own constructors (Kafka's
/// `retry_topic` and `dead_letter`, RabbitMQ's `dead_letter` and `reject`, JetStream's
/// `nak_after`, `term` and `retry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnFailure<A> {
    rule: Rule<A>,
}

impl<A> Default for OnFailure<A> {
    fn default() -> Self {
        OnFailure::redeliver()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule<A> {
    /// A final decision (never `Retry`).
    Final(Decision<A>),
    RetryInPlace {
        runs: u32,
        backoff: Duration,
        then: Box<Rule<A>>,
    },
    BelowAttempt {
        attempts: u32,
        rule: Box<Rule<A>>,
        then: Box<Rule<A>>,
    },
}

impl<A> Rule<A> {
    fn is_final(&self) -> bool {
        matches!(self, Rule::Final(_))
    }

    fn may_retry(&self) -> bool {
        match self {
            Rule::Final(_) => false,
            Rule::RetryInPlace { .. } => true,
            Rule::BelowAttempt { rule, then, .. } => rule.may_retry() || then.may_retry(),
        }
    }

    /// Replace the final rule at the end of this chain's `then`s with `next`.
    fn set_last(&mut self, next: Rule<A>) {
        match self {
            Rule::Final(_) => {}
            Rule::RetryInPlace { then, .. } | Rule::BelowAttempt { then, .. } => {
                if then.is_final() {
                    **then = next;
                } else {
                    then.set_last(next);
                }
            }
        }
    }
}

impl<A: Clone> Rule<A> {
    fn decide(&self, f: &Failure<'_>) -> Decision<A> {
        match self {
            Rule::Final(decision) => decision.clone(),
            Rule::RetryInPlace {
                runs,
                backoff,
                then,
            } => {
                if f.runs < *runs {
                    Decision::Retry { after: *backoff }
                } else {
                    then.decide(f)
                }
            }
            Rule::BelowAttempt {
                attempts,
                rule,
                then,
            } => {
                if f.attempt < *attempts {
                    rule.decide(f)
                } else {
                    then.decide(f)
                }
            }
        }
    }
}

impl<A> OnFailure<A> {
    /// Stop the loop and return the error; the message is given back to the broker.
    pub fn stop() -> Self {
        OnFailure {
            rule: Rule::Final(Decision::Stop),
        }
    }

    /// Settle the failed message as done and go on.
    pub fn skip() -> Self {
        OnFailure {
            rule: Rule::Final(Decision::Skip),
        }
    }

    /// Give the failed message back to the broker for redelivery and go on (the default).
    pub fn redeliver() -> Self {
        OnFailure {
            rule: Rule::Final(Decision::Redeliver),
        }
    }

    /// Settle the failed message with a broker-specific action and go on.
    pub fn settle(action: A) -> Self {
        OnFailure {
            rule: Rule::Final(Decision::Settle(action)),
        }
    }

    /// Run the handler up to `runs` times in all on the same message, waiting `backoff`
    /// between runs; then stop (or whatever [`then`](Self::then) says).
    pub fn retry_in_place(runs: u32, backoff: Duration) -> Self {
        OnFailure {
            rule: Rule::RetryInPlace {
                runs,
                backoff,
                then: Box::new(Rule::Final(Decision::Stop)),
            },
        }
    }

    /// Apply this policy only while the message's delivery attempt is below `attempts`;
    /// from that attempt on, stop (or whatever [`then`](Self::then) says).
    ///
    /// `OnFailure::redeliver().below_attempt(5).then(OnFailure::skip())` redelivers a
    /// failing message until its fifth delivery fails, then settles it.
    pub fn below_attempt(self, attempts: u32) -> Self {
        OnFailure {
            rule: Rule::BelowAttempt {
                attempts,
                rule: Box::new(self.rule),
                then: Box::new(Rule::Final(Decision::Stop)),
            },
        }
    }

    /// What to do once this policy's retries are used up. Has no effect on a final policy
    /// (`stop`, `skip`, `redeliver`, `settle`).
    pub fn then(mut self, next: OnFailure<A>) -> Self {
        self.rule.set_last(next.rule);
        self
    }
}

impl<A: Clone + Send + Sync + 'static> FailurePolicy<A> for OnFailure<A> {
    fn decide(&self, failure: &Failure<'_>) -> Decision<A> {
        self.rule.decide(failure)
    }

    fn may_retry_in_place(&self) -> bool {
        self.rule.may_retry()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(attempt: u32, runs: u32) -> Failure<'static> {
        Failure {
            destination: "t",
            attempt,
            runs,
            messages: 1,
            error: &"boom",
            panicked: false,
        }
    }

    #[test]
    fn composed_policy_walks_through_its_stages() {
        let policy: OnFailure<&str> = OnFailure::retry_in_place(2, Duration::from_millis(5)).then(
            OnFailure::settle("retry")
                .below_attempt(3)
                .then(OnFailure::settle("dlq")),
        );
        let retry = Decision::Retry {
            after: Duration::from_millis(5),
        };
        assert_eq!(policy.decide(&failure(1, 1)), retry);
        assert_eq!(policy.decide(&failure(2, 2)), Decision::Settle("retry"));
        assert_eq!(policy.decide(&failure(2, 1)), retry);
        assert_eq!(policy.decide(&failure(3, 2)), Decision::Settle("dlq"));
        assert!(policy.may_retry_in_place());
    }

    #[test]
    fn simple_policies_and_closures() {
        let d = |p: OnFailure<()>| p.decide(&failure(1, 1));
        assert_eq!(d(OnFailure::default()), Decision::Redeliver);
        assert_eq!(d(OnFailure::stop()), Decision::Stop);
        assert_eq!(d(OnFailure::skip()), Decision::Skip);
        assert_eq!(d(OnFailure::skip().then(OnFailure::stop())), Decision::Skip);
        assert_eq!(
            d(OnFailure::retry_in_place(1, Duration::ZERO)),
            Decision::Stop
        );
        assert_eq!(
            d(OnFailure::redeliver().below_attempt(1)),
            Decision::Stop,
            "attempt 1 is not below 1"
        );
        assert!(!OnFailure::<()>::redeliver().may_retry_in_place());
        assert!(!OnFailure::<()>::redeliver()
            .below_attempt(3)
            .then(OnFailure::skip())
            .may_retry_in_place());
        let closure = |f: &Failure<'_>| {
            if f.attempt == 1 {
                Decision::Skip
            } else {
                Decision::<()>::Stop
            }
        };
        assert_eq!(closure.decide(&failure(1, 1)), Decision::Skip);
        assert!(closure.may_retry_in_place());
        assert!(format!("{:?}", failure(1, 1)).contains("boom"));
    }
}
