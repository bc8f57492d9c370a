//! What the consumer does with a message whose handler failed.
//!
//! A [`FailurePolicy`] looks at the [`Failure`] and returns a [`Decision`]: stop the
//! consumer, skip the message, run the handler again in place, or forward the message to a
//! retry or dead-letter topic. [`OnFailure`] builds the usual policies; any
//! `Fn(&Failure<'_>) -> Decision` is a policy too.
//!
//! ```
//! use std::time::Duration;
//! use tracehop::kafka::{Decision, OnFailure};
//!
//! // Up to three runs in place, then to a retry topic until the message's fifth
//! // delivery, then to the dead-letter topic.
//! let policy = OnFailure::retry_in_place(3, Duration::from_millis(50))
//!     .then(OnFailure::retry_topic("orders.retry", 5).then(OnFailure::dead_letter("orders.dlq")));
//! # let _ = policy;
//!
//! // A policy of your own.
//! let custom = |failure: &tracehop::kafka::Failure<'_>| {
//!     if failure.error.to_string().contains("timeout") {
//!         Decision::Retry { after: Duration::from_millis(100) }
//!     } else {
//!         Decision::Forward { topic: "orders.dlq".to_owned() }
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
    /// The topic the message came from.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Which delivery of the message this run was, counting from 1: the attempt the
    /// message carries (the `tracehop-attempt` header a forwarding consumer wrote, 1 when
    /// absent) plus the runs already made in place.
    pub attempt: u32,
    /// How many times the handler has run on this message in this consumer, this run
    /// included.
    pub runs: u32,
    /// How many messages the failed run handled (1, or the size of a batch).
    pub messages: usize,
    /// The handler's error.
    pub error: &'a dyn fmt::Display,
}

impl fmt::Debug for Failure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failure")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("attempt", &self.attempt)
            .field("runs", &self.runs)
            .field("messages", &self.messages)
            .field("error", &self.error.to_string())
            .finish()
    }
}

/// What to do with a message whose handler failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Stop consuming and return the handler's error. The message's offset is not
    /// committed, so it is delivered again when the group resumes.
    Stop,
    /// Commit the message's offset and go on with the next one.
    Skip,
    /// Run the handler again on the same message after waiting `after`, as a new process
    /// span under the same producer span with the next attempt number. Keep retries short:
    /// the consumer must poll again within `max.poll.interval.ms`.
    Retry {
        /// How long to wait first.
        after: Duration,
    },
    /// Send the message to `topic` (a retry or dead-letter topic) from inside the failed
    /// process span, with the user's key, payload and headers unchanged and the
    /// `tracehop-attempt` header set to the next attempt; commit once the broker has it.
    Forward {
        /// The topic to forward to.
        topic: String,
    },
}

/// Decides what happens to a message whose handler failed.
pub trait FailurePolicy: Send + Sync + 'static {
    /// The decision for `failure`.
    fn decide(&self, failure: &Failure<'_>) -> Decision;
}

impl<F> FailurePolicy for F
where
    F: Fn(&Failure<'_>) -> Decision + Send + Sync + 'static,
{
    fn decide(&self, failure: &Failure<'_>) -> Decision {
        self(failure)
    }
}

/// The common failure policies, composable with [`then`](OnFailure::then).
///
/// The default is [`OnFailure::stop`]: nothing is committed past a failed message unless
/// you say so.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OnFailure {
    rule: Rule,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Rule {
    #[default]
    Stop,
    Skip,
    Forward(String),
    RetryInPlace {
        runs: u32,
        backoff: Duration,
        then: Box<Rule>,
    },
    RetryTopic {
        topic: String,
        attempts: u32,
        then: Box<Rule>,
    },
}

impl OnFailure {
    /// Stop the consumer and return the error; the message is not committed.
    pub fn stop() -> OnFailure {
        OnFailure { rule: Rule::Stop }
    }

    /// Commit the failed message and go on.
    pub fn skip() -> OnFailure {
        OnFailure { rule: Rule::Skip }
    }

    /// Forward the failed message to the dead-letter topic `topic` and go on.
    pub fn dead_letter(topic: impl Into<String>) -> OnFailure {
        OnFailure {
            rule: Rule::Forward(topic.into()),
        }
    }

    /// Run the handler up to `runs` times in all on the same message, waiting `backoff`
    /// between runs; then stop (or whatever [`then`](Self::then) says).
    pub fn retry_in_place(runs: u32, backoff: Duration) -> OnFailure {
        OnFailure {
            rule: Rule::RetryInPlace {
                runs,
                backoff,
                then: Box::new(Rule::Stop),
            },
        }
    }

    /// Forward the failed message to the retry topic `topic` while its attempt number is
    /// below `attempts`; then stop (or whatever [`then`](Self::then) says). A consumer of
    /// the retry topic sees attempt 2, 3, ... in the same trace.
    pub fn retry_topic(topic: impl Into<String>, attempts: u32) -> OnFailure {
        OnFailure {
            rule: Rule::RetryTopic {
                topic: topic.into(),
                attempts,
                then: Box::new(Rule::Stop),
            },
        }
    }

    /// What to do once this policy's retries are used up. Has no effect on `stop`, `skip`
    /// and `dead_letter`, which are final.
    pub fn then(mut self, next: OnFailure) -> OnFailure {
        fn set_last(rule: &mut Rule, next: Rule) {
            match rule {
                Rule::RetryInPlace { then, .. } | Rule::RetryTopic { then, .. } => {
                    if matches!(**then, Rule::RetryInPlace { .. } | Rule::RetryTopic { .. }) {
                        set_last(then, next)
                    } else {
                        **then = next
                    }
                }
                Rule::Stop | Rule::Skip | Rule::Forward(_) => {}
            }
        }
        set_last(&mut self.rule, next.rule);
        self
    }
}

impl FailurePolicy for OnFailure {
    fn decide(&self, failure: &Failure<'_>) -> Decision {
        fn decide(rule: &Rule, f: &Failure<'_>) -> Decision {
            match rule {
                Rule::Stop => Decision::Stop,
                Rule::Skip => Decision::Skip,
                Rule::Forward(topic) => Decision::Forward {
                    topic: topic.clone(),
                },
                Rule::RetryInPlace {
                    runs,
                    backoff,
                    then,
                } => {
                    if f.runs < *runs {
                        Decision::Retry { after: *backoff }
                    } else {
                        decide(then, f)
                    }
                }
                Rule::RetryTopic {
                    topic,
                    attempts,
                    then,
                } => {
                    if f.attempt < *attempts {
                        Decision::Forward {
                            topic: topic.clone(),
                        }
                    } else {
                        decide(then, f)
                    }
                }
            }
        }
        decide(&self.rule, failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(attempt: u32, runs: u32) -> Failure<'static> {
        Failure {
            topic: "t",
            partition: 0,
            offset: 7,
            attempt,
            runs,
            messages: 1,
            error: &"boom",
        }
    }

    #[test]
    fn composed_policy_walks_through_its_stages() {
        let policy = OnFailure::retry_in_place(2, Duration::from_millis(5))
            .then(OnFailure::retry_topic("retry", 3).then(OnFailure::dead_letter("dlq")));
        let retry = Decision::Retry {
            after: Duration::from_millis(5),
        };
        let to = |t: &str| Decision::Forward {
            topic: t.to_owned(),
        };
        assert_eq!(policy.decide(&failure(1, 1)), retry);
        assert_eq!(policy.decide(&failure(2, 2)), to("retry"));
        assert_eq!(policy.decide(&failure(2, 1)), retry);
        assert_eq!(policy.decide(&failure(3, 2)), to("dlq"));
    }

    #[test]
    fn simple_policies_and_closures() {
        assert_eq!(OnFailure::default().decide(&failure(1, 1)), Decision::Stop);
        assert_eq!(OnFailure::skip().decide(&failure(1, 1)), Decision::Skip);
        assert_eq!(
            OnFailure::skip()
                .then(OnFailure::stop())
                .decide(&failure(1, 1)),
            Decision::Skip
        );
        assert_eq!(
            OnFailure::retry_in_place(1, Duration::ZERO).decide(&failure(1, 1)),
            Decision::Stop
        );
        let closure = |f: &Failure<'_>| {
            if f.offset == 7 {
                Decision::Skip
            } else {
                Decision::Stop
            }
        };
        assert_eq!(closure.decide(&failure(1, 1)), Decision::Skip);
        assert!(format!("{:?}", failure(1, 1)).contains("boom"));
    }
}
