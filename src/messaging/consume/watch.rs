//! Waiting on a client's future without trusting it to finish: the adapters' guard
//! against a client that loses a wake-up or never resolves after its connection died.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

/// Await `work`. If it is not done at once, poll it again every `every` (so a lost
/// wake-up costs at most that long) and ask `check` each time: `work`'s output, or the
/// first `Some` of `check`. Work that is ready at once costs no timer, so messages that
/// are flowing pay nothing for the guard.
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
    loop {
        tokio::select! {
            done = &mut work => return Ok(done),
            () = tokio::time::sleep(every) => {
                if let Some(gave_up) = check() {
                    return Err(gave_up);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::watched;
    use std::time::Duration;

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
