//! Seeking back for redelivery, safely: which partitions wait for a message to come again
//! (so nothing past it is committed meanwhile), and how often each message was sought back
//! to (Kafka counts no redeliveries of its own).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use rdkafka::message::Message;

/// What seeking back left behind: partitions sought back to a message that has not come
/// again yet (committing a later offset of such a partition would commit the message
/// before it is processed), and how often each message was sought back to (Kafka counts
/// no redeliveries; this consumer counts the ones it caused).
#[derive(Debug, Default)]
pub(super) struct Rewinds {
    any: AtomicBool,
    state: Mutex<RewindState>,
}

#[derive(Debug, Default)]
struct RewindState {
    /// (topic, partition, offset sought back to).
    pending: Vec<(String, i32, i64)>,
    /// (topic, partition, offset) and how often it was sought back to.
    counts: Vec<((String, i32, i64), u32)>,
}

fn same<M: Message>(message: &M, topic: &str, partition: i32) -> bool {
    message.topic() == topic && message.partition() == partition
}

impl Rewinds {
    fn lock(&self) -> std::sync::MutexGuard<'_, RewindState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refresh(&self, state: &RewindState) {
        let any = !state.pending.is_empty() || !state.counts.is_empty();
        self.any.store(any, Ordering::Release);
    }

    /// `message` is sought back to, its `redeliveries`-th time.
    pub(super) fn add<M: Message>(&self, message: &M, redeliveries: u32) {
        let mut state = self.lock();
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        match state
            .pending
            .iter_mut()
            .find(|(t, p, _)| t == topic && *p == partition)
        {
            Some(entry) => entry.2 = entry.2.min(offset),
            None => state.pending.push((topic.to_owned(), partition, offset)),
        }
        let key = (topic.to_owned(), partition, offset);
        match state.counts.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = redeliveries,
            None => state.counts.push((key, redeliveries)),
        }
        self.refresh(&state);
    }

    /// A message arrived: a seek that brought its partition back to (or before) it is
    /// done. Returns how often this consumer sought back to the message before.
    pub(super) fn arrived<M: Message>(&self, message: &M) -> u32 {
        if !self.any.load(Ordering::Acquire) {
            return 0;
        }
        let mut state = self.lock();
        state
            .pending
            .retain(|(t, p, o)| !(same(message, t, *p) && message.offset() <= *o));
        let count = state
            .counts
            .iter()
            .find(|((t, p, o), _)| same(message, t, *p) && *o == message.offset())
            .map_or(0, |(_, n)| *n);
        self.refresh(&state);
        count
    }

    /// `message` is done with: forget how often it was sought back to.
    pub(super) fn settled<M: Message>(&self, message: &M, redeliveries: u32) {
        if redeliveries == 0 {
            return;
        }
        let mut state = self.lock();
        state
            .counts
            .retain(|((t, p, o), _)| !(same(message, t, *p) && *o == message.offset()));
        self.refresh(&state);
    }

    /// Whether committing `message` would commit past a message still to come again.
    pub(super) fn blocks<M: Message>(&self, message: &M) -> bool {
        self.any.load(Ordering::Acquire)
            && self
                .lock()
                .pending
                .iter()
                .any(|(t, p, o)| same(message, t, *p) && message.offset() > *o)
    }
}
