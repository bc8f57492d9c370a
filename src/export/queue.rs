//! A bounded FIFO between the threads that end spans and one worker thread, with the
//! two things the SDK's channel lacks: a producer can wait for room instead of losing
//! its item, and a flush waits until everything pushed before it has been handled *and*
//! the sink flushed.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What [`Queue::pop`] handed the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Popped {
    /// Items were moved into the batch: handle them, then call [`Queue::handled`].
    Items,
    /// Nothing is queued and a flush is waiting: flush the sink, then call
    /// [`Queue::flushed`].
    Flush,
    /// `delay` passed with nothing queued.
    Idle,
    /// The queue is closed and empty: flush the sink, call [`Queue::flushed`], stop.
    Closed,
}

/// How long [`Queue::push`] waits for room in a full queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Not at all: the item is handed back.
    No,
    /// Until there is room (or the queue is closed).
    Forever,
    /// Until there is room or this instant has passed.
    Until(Instant),
}

/// A bounded queue of `T` with one consumer (the worker).
#[derive(Debug)]
pub(crate) struct Queue<T> {
    state: Mutex<State<T>>,
    /// Producers waiting for room.
    room: Condvar,
    /// The worker waiting for items, a flush or the close.
    work: Condvar,
    /// Flushers waiting for the worker.
    flushed: Condvar,
    limit: usize,
}

#[derive(Debug)]
struct State<T> {
    /// The items, each with its weight (bytes, for blocks of lines).
    items: VecDeque<(T, usize)>,
    /// The weight of everything queued.
    weight: usize,
    /// Items ever accepted.
    pushed: u64,
    /// Items the worker has finished with.
    handled: u64,
    /// The highest `pushed` a flusher is waiting for.
    flush_wanted: u64,
    /// `handled` when the worker last flushed its sink.
    flushed: u64,
    closed: bool,
    /// When the worker last got a batch (or an idle turn).
    last_turn: Instant,
}

impl<T> Queue<T> {
    /// A queue that holds at most `limit` items (at least one).
    pub(crate) fn new(limit: usize) -> Queue<T> {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                weight: 0,
                pushed: 0,
                handled: 0,
                flush_wanted: 0,
                flushed: 0,
                closed: false,
                last_turn: Instant::now(),
            }),
            room: Condvar::new(),
            work: Condvar::new(),
            flushed: Condvar::new(),
            limit: limit.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding the lock; if something did, the state is intact.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add `item`, which weighs `weight`. When the queue is full, wait for room as `wait`
    /// says, then hand the item back; a closed queue always hands it back. `Ok` carries
    /// the weight of everything queued, this item included.
    pub(crate) fn push(&self, item: T, weight: usize, wait: Wait) -> Result<usize, T> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return Err(item);
            }
            if state.items.len() < self.limit {
                return Ok(self.accept(&mut state, item, weight));
            }
            state = match wait {
                Wait::No => return Err(item),
                Wait::Forever => self.room.wait(state).unwrap_or_else(|p| p.into_inner()),
                Wait::Until(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(item);
                    }
                    self.room
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    fn accept(&self, state: &mut State<T>, item: T, weight: usize) -> usize {
        state.items.push_back((item, weight));
        state.weight += weight;
        state.pushed += 1;
        self.work.notify_one();
        state.weight
    }

    /// For the worker: wait until `batch` items are queued, or some are and `delay` has
    /// passed since the last turn (or a flush or the close wants them), and move up to
    /// `batch` of them into `out`.
    pub(crate) fn pop(&self, out: &mut Vec<T>, batch: usize, delay: Duration) -> Popped {
        let batch = batch.max(1);
        let mut state = self.lock();
        loop {
            let flush_due = state.flush_wanted > state.flushed;
            let waited = state.last_turn.elapsed();
            let len = state.items.len();
            if len >= batch || (len > 0 && (flush_due || state.closed || waited >= delay)) {
                let mut weight = 0;
                out.extend(
                    state
                        .items
                        .drain(..len.min(batch))
                        .inspect(|(_, w)| weight += w)
                        .map(|(item, _)| item),
                );
                state.weight -= weight;
                state.last_turn = Instant::now();
                self.room.notify_all();
                return Popped::Items;
            }
            if len == 0 {
                if flush_due {
                    return Popped::Flush;
                }
                if state.closed {
                    return Popped::Closed;
                }
                if waited >= delay {
                    state.last_turn = Instant::now();
                    return Popped::Idle;
                }
            }
            let timeout = delay.saturating_sub(waited);
            state = self
                .work
                .wait_timeout(state, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// For the worker: `n` popped items are done with.
    pub(crate) fn handled(&self, n: usize) {
        self.lock().handled += n as u64;
    }

    /// For the worker: the sink is flushed; everything handled so far is out.
    pub(crate) fn flushed(&self) {
        let mut state = self.lock();
        state.flushed = state.handled;
        self.flushed.notify_all();
    }

    /// Wait until every item pushed before this call has been handled and the sink
    /// flushed, at most `timeout`. `false` if the time ran out first.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        let target = state.pushed;
        state.flush_wanted = state.flush_wanted.max(target);
        self.work.notify_one();
        while state.flushed < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .flushed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Accept nothing more; the worker drains what is queued and stops.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.work.notify_all();
        self.room.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Popped, Queue, Wait};

    #[test]
    fn a_full_queue_hands_items_back_or_waits_for_room() {
        let queue = Arc::new(Queue::new(2));
        assert_eq!(queue.push(1, 1, Wait::No), Ok(1));
        assert_eq!(queue.push(2, 1, Wait::No), Ok(2));
        assert_eq!(queue.push(3, 1, Wait::No), Err(3));
        let soon = std::time::Instant::now() + Duration::from_millis(20);
        assert_eq!(
            queue.push(3, 1, Wait::Until(soon)),
            Err(3),
            "no room in time"
        );

        let producer = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.push(3, 1, Wait::Forever))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !producer.is_finished(),
            "a waiting push waits while the queue is full"
        );
        let mut out = Vec::new();
        assert_eq!(queue.pop(&mut out, 1, Duration::ZERO), Popped::Items);
        assert_eq!(out, [1]);
        assert_eq!(producer.join().expect("producer"), Ok(2));
    }

    #[test]
    fn flush_waits_for_the_worker_and_close_drains() {
        let queue = Arc::new(Queue::new(8));
        for i in 0..5 {
            queue.push(i, 1, Wait::No).expect("room");
        }
        let worker = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut flushes = 0;
                loop {
                    let mut batch = Vec::new();
                    match queue.pop(&mut batch, 2, Duration::from_secs(60)) {
                        Popped::Items => {
                            let n = batch.len();
                            seen.extend(batch);
                            queue.handled(n);
                        }
                        Popped::Flush => {
                            flushes += 1;
                            queue.flushed();
                        }
                        Popped::Idle => {}
                        Popped::Closed => {
                            queue.flushed();
                            return (seen, flushes);
                        }
                    }
                }
            })
        };
        assert!(
            queue.flush(Duration::from_secs(10)),
            "flush returns once handled"
        );
        queue.push(5, 1, Wait::No).expect("room");
        queue.close();
        assert_eq!(
            queue.push(6, 1, Wait::Forever),
            Err(6),
            "a closed queue takes nothing"
        );
        let (seen, flushes) = worker.join().expect("worker");
        assert_eq!(seen, [0, 1, 2, 3, 4, 5], "in order, nothing lost");
        assert_eq!(flushes, 1);
    }
}
