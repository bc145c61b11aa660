//! Exponential backoff: the delay before retry number `n`.

use std::time::Duration;

/// Delays that start at `initial` and grow by `factor` per failure up to `max`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub factor: u32,
}

impl Backoff {
    /// `initial`, doubling, capped at `max`.
    pub const fn doubling(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            factor: 2,
        }
    }

    /// The delay after `failures` consecutive failures (the first failure waits `initial`).
    pub fn delay(&self, failures: u32) -> Duration {
        let mut delay = self.initial;
        for _ in 1..failures {
            delay = delay.saturating_mul(self.factor);
            if delay >= self.max {
                return self.max;
            }
        }
        delay.min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        // The kubelet's container restart backoff: 10 s doubling, capped at 5 min.
        let b = Backoff::doubling(Duration::from_secs(10), Duration::from_secs(300));
        let secs: Vec<u64> = (0..=7).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [10, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(300));
    }
}
