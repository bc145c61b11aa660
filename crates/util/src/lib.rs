//! Small pieces shared by every Flotilla crate: tracing setup, waiting on conditions, the
//! [`Clock`], [`Backoff`], named tasks and the [`LeaderGroup`].

mod backoff;
mod clock;
mod leader;
mod task;

pub use backoff::Backoff;
pub use clock::{Clock, ManualClock, SystemClock};
pub use leader::{GroupStatus, GroupStatusHandle, LeaderGroup};
pub use task::{dedicated_runtime, spawn_named, spawn_named_on};

use std::future::Future;
use std::time::{Duration, Instant};

/// Sets up `tracing` to stderr; `RUST_LOG` overrides `default_filter`.
pub fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs in files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The pauses between polls: 10 ms, doubling up to 200 ms, until `timeout` has passed.
struct Pauses {
    deadline: Instant,
    pause: Duration,
}

impl Pauses {
    fn new(timeout: Duration) -> Pauses {
        Pauses {
            deadline: Instant::now() + timeout,
            pause: Duration::from_millis(10),
        }
    }

    /// The next pause, or `None` once the deadline has passed.
    fn next(&mut self) -> Option<Duration> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(Duration::from_millis(200));
        Some(pause)
    }
}

/// Polls `check` until it returns `Some`, or gives up after `timeout` with `None`.
/// The interval starts at 10 ms and doubles up to 200 ms.
pub async fn wait_until<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let mut pauses = Pauses::new(timeout);
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        tokio::time::sleep(pauses.next()?).await;
    }
}

/// [`wait_until`] for a synchronous `check` on a thread that may block (tests driving CLIs).
pub fn wait_until_blocking<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let mut pauses = Pauses::new(timeout);
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        std::thread::sleep(pauses.next()?);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_until_returns_the_value_or_gives_up() {
        let mut n = 0;
        let got = wait_until(Duration::from_secs(5), || {
            n += 1;
            let v = (n >= 3).then_some(n);
            async move { v }
        })
        .await;
        assert_eq!(got, Some(3));
        let none: Option<()> = wait_until(Duration::from_millis(30), || async { None }).await;
        assert_eq!(none, None);
    }
}
