//! Capped exponential backoff with jitter for retrying CouchDB requests.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::ErrorKind;

/// Doubles from `initial` up to `max`; each wait is jittered to between half
/// and all of the current step, so many followers do not reconnect in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            step: initial,
        }
    }

    /// Forget past failures (call after progress was made).
    pub fn reset(&mut self) {
        self.step = self.initial;
    }

    /// The next delay. Credentials problems wait the maximum straight away:
    /// they do not fix themselves in milliseconds.
    pub fn next_delay(&mut self, kind: ErrorKind) -> Duration {
        if kind == ErrorKind::Unauthorized {
            self.step = self.max;
        }
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Sleeps for the next delay; `false` when cancelled first.
    pub async fn wait(&mut self, kind: ErrorKind, token: &CancellationToken) -> bool {
        let delay = self.next_delay(kind);
        tokio::select! {
            biased;
            () = token.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_and_caps() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let steps: Vec<_> = (0..5)
            .map(|_| backoff.next_delay(ErrorKind::Transient))
            .collect();
        for (delay, step) in steps.iter().zip([100, 200, 400, 700, 700]) {
            let step = Duration::from_millis(step);
            assert!(
                *delay >= step / 2 && *delay <= step,
                "{delay:?} not within {step:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay(ErrorKind::Transient) <= Duration::from_millis(100));
    }

    #[test]
    fn unauthorized_waits_the_maximum() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(8));
        assert!(backoff.next_delay(ErrorKind::Unauthorized) >= Duration::from_secs(4));
    }
}
