//! Rate-limited logging of guest-triggered problems: a hostile guest must
//! not be able to flood the host's logs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts occurrences of one kind of event and says when to log one.
///
/// The first `burst` occurrences are logged, then one in every `every`.
#[derive(Debug)]
pub struct LogLimiter {
    seen: AtomicU64,
    burst: u64,
    every: u64,
}

impl LogLimiter {
    /// A limiter logging `burst` events, then one in `every`.
    pub const fn new(burst: u64, every: u64) -> Self {
        Self {
            seen: AtomicU64::new(0),
            burst,
            every,
        }
    }

    /// Records one event; returns its count when it should be logged.
    pub fn check(&self) -> Option<u64> {
        let count = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        (count <= self.burst || count % self.every.max(1) == 0).then_some(count)
    }
}

/// Logs a warning through a static [`LogLimiter`] (10 at once, then 1 in 1000).
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMITER: $crate::ratelimit::LogLimiter = $crate::ratelimit::LogLimiter::new(10, 1000);
        if let Some(count) = LIMITER.check() {
            log::warn!("{} (occurrence {count})", format_args!($($arg)+));
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_a_burst_then_one_in_every() {
        let limiter = LogLimiter::new(2, 5);

        let logged: Vec<u64> = (0..12).filter_map(|_| limiter.check()).collect();

        assert_eq!(logged, vec![1, 2, 5, 10]);
    }
}
