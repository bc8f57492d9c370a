//! Waiting on a client's future without trusting it to finish: the adapters' guard
//! against a client that loses a wake-up or never resolves after its connection died,
//! and the consume loop's heartbeat, the one timer its waits share.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{self, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

tokio::task_local! {
    /// The heartbeat of the consume loop being polled (see [`beating`]).
    static BEAT: Heartbeat;
}

/// One timer for the waits of one consume loop, re-armed when it fires, instead of a
/// timer made, registered and dropped for every wait: the loop waits for each delivery
/// and for most settlements, one after the other.
#[derive(Default)]
struct Heartbeat {
    /// Set while a wait uses the timer: a second wait at the same time takes a timer
    /// of its own.
    held: Cell<bool>,
    /// The period of the timer, set by the first wait.
    every: Cell<Option<Duration>>,
    timer: RefCell<Option<Pin<Box<Sleep>>>>,
}

/// Run `work` (a consume loop) with a heartbeat that its waits in [`watched`] share.
pub(crate) async fn beating<F: Future>(work: F) -> F::Output {
    BEAT.scope(Heartbeat::default(), work).await
}

/// The loop's heartbeat, taken by one wait until it is dropped.
#[cfg_attr(not(any(feature = "nats", feature = "amqp")), allow(dead_code))]
struct Held;

#[cfg_attr(not(any(feature = "nats", feature = "amqp")), allow(dead_code))]
impl Held {
    /// The heartbeat of the loop being polled, if there is one, it beats every `every`
    /// and no other wait holds it. A beat that came while nothing waited is skipped (the
    /// timer is re-armed), so a wait is never checked the moment it begins.
    fn take(every: Duration) -> Option<Held> {
        BEAT.try_with(|beat| {
            let free = !beat.held.get() && beat.every.get().is_none_or(|e| e == every);
            free.then(|| {
                beat.held.set(true);
                beat.every.set(Some(every));
                if let Some(timer) = beat.timer.borrow_mut().as_mut() {
                    if timer.is_elapsed() {
                        timer.as_mut().reset(Instant::now() + every);
                    }
                }
                Held
            })
        })
        .ok()
        .flatten()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = BEAT.try_with(|beat| beat.held.set(false));
    }
}

/// Await `work`. If it is not done at once, poll it again every `every` (so a lost
/// wake-up costs at most that long) and ask `check` each time: `work`'s output, or the
/// first `Some` of `check`. Work that is ready at once costs no timer, so messages that
/// are flowing pay nothing for the guard.
///
/// Inside a consume loop ([`beating`]) the waits share the loop's timer, so a wait's
/// first check comes at the loop's next beat: within `every` after the wait began, never
/// at its start. Elsewhere, and for a wait beside another, the first check comes `every`
/// after the wait began.
#[cfg_attr(not(any(feature = "nats", feature = "amqp")), allow(dead_code))]
pub(crate) async fn watched<T, W>(
    work: impl Future<Output = T>,
    every: Duration,
    mut check: impl FnMut() -> Option<W>,
) -> Result<T, W> {
    let mut work = std::pin::pin!(work);
    let ready = std::future::poll_fn(|cx| match work.as_mut().poll(cx) {
        Poll::Ready(done) => Poll::Ready(Some(done)),
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    if let Some(done) = ready {
        return Ok(done);
    }
    let held = Held::take(every);
    let mut own = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = work.as_mut().poll(cx) {
            return Poll::Ready(Ok(done));
        }
        let shared = held.as_ref().and_then(|_| {
            BEAT.try_with(|beat| beats(&mut beat.timer.borrow_mut(), every, cx, &mut check))
                .ok()
        });
        shared
            .unwrap_or_else(|| beats(&mut own, every, cx, &mut check))
            .map(Err)
    })
    .await
}

/// Poll `timer` (made on first use): each time it has fired, re-arm it `every` from now
/// and ask `check`, until `check` gives up or the timer is pending again.
#[cfg_attr(not(any(feature = "nats", feature = "amqp")), allow(dead_code))]
fn beats<W>(
    timer: &mut Option<Pin<Box<Sleep>>>,
    every: Duration,
    cx: &mut task::Context<'_>,
    check: &mut impl FnMut() -> Option<W>,
) -> Poll<W> {
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
    while timer.as_mut().poll(cx).is_ready() {
        timer.as_mut().reset(Instant::now() + every);
        if let Some(gave_up) = check() {
            return Poll::Ready(gave_up);
        }
    }
    Poll::Pending
}

#[cfg(test)]
mod tests {
    use super::{beating, watched};
    use std::cell::RefCell;
    use std::time::Duration;
    use tokio::time::{sleep, Instant};

    const SECOND: Duration = Duration::from_secs(1);

    /// Milliseconds since `start`.
    fn ms(start: Instant) -> u64 {
        u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    #[tokio::test(start_paused = true)]
    async fn waits_in_a_loop_are_checked_on_its_heartbeat() {
        let start = Instant::now();
        let checks = RefCell::new(Vec::new());
        let check = || {
            checks.borrow_mut().push(ms(start));
            None::<()>
        };
        beating(async {
            let first = watched(async { sleep(SECOND * 3 / 2).await }, SECOND, check).await;
            // Begun at 1.5 s: checked at the beat at 2 s, not 1 s after it began.
            let second = watched(async { sleep(SECOND).await }, SECOND, check).await;
            assert_eq!((first, second), (Ok(()), Ok(())));
            // The heartbeat fired at 3 s while nothing waited: that beat is skipped, and
            // the next wait, begun at 4.5 s, is checked a second later.
            sleep(SECOND * 2).await;
            let third = watched(async { sleep(SECOND * 3 / 2).await }, SECOND, check).await;
            assert_eq!(third, Ok(()));
        })
        .await;
        assert_eq!(*checks.borrow(), vec![1000, 2000, 5500]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_beside_another_has_a_timer_of_its_own() {
        let start = Instant::now();
        let (a, b) = (RefCell::new(Vec::new()), RefCell::new(Vec::new()));
        beating(async {
            let holds_the_beat = watched(std::future::pending::<()>(), SECOND, || {
                a.borrow_mut().push(ms(start));
                (a.borrow().len() == 3).then_some("a")
            });
            let beside = async {
                sleep(SECOND / 2).await;
                watched(std::future::pending::<()>(), SECOND, || {
                    b.borrow_mut().push(ms(start));
                    (b.borrow().len() == 2).then_some("b")
                })
                .await
            };
            let (a, b) = tokio::join!(holds_the_beat, beside);
            assert_eq!((a, b), (Err("a"), Err("b")));
        })
        .await;
        assert_eq!(*a.borrow(), vec![1000, 2000, 3000]);
        assert_eq!(*b.borrow(), vec![1500, 2500]);
    }

    #[tokio::test(start_paused = true)]
    async fn ready_work_is_its_output_and_never_checked() {
        let out = watched(async { 7 }, Duration::from_secs(1), || -> Option<()> {
            panic!("checked work that was ready")
        })
        .await;
        assert_eq!(out, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_never_ends_gives_up_on_the_first_failed_check() {
        let mut checks = 0;
        let out = watched(std::future::pending::<u8>(), Duration::from_secs(1), || {
            checks += 1;
            (checks == 3).then_some("gone")
        })
        .await;
        assert_eq!((out, checks), (Err("gone"), 3));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_work_ends_with_its_output_between_checks() {
        let work = async {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            "done"
        };
        let mut checks = 0;
        let out = watched(work, Duration::from_secs(1), || {
            checks += 1;
            None::<()>
        })
        .await;
        assert_eq!((out, checks), (Ok("done"), 2));
    }
}
