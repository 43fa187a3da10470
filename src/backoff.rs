//! The one backoff of the service: exponential, capped. A reconnecting or retrying loop
//! takes [`Backoff::next_delay`] (with jitter, so many processes retrying at once spread
//! out); a retry time that is stored (a failing event's, a mail's) takes [`Backoff::nth`]
//! (without: it is computed again from the failure count).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The delay after the `failures`-th failure (1-based): base * 2^(failures-1), capped.
    pub fn nth(&self, failures: u32) -> Duration {
        let exp = failures.clamp(1, 31) - 1;
        self.base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.max)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay of a retrying loop, drawn from the upper half of its cap.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let millis = self.nth(self.attempt).as_millis().max(1) as u64;
        Duration::from_millis(rand::random_range(millis / 2..=millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_doubles_up_to_the_cap() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(600));
        let d: Vec<u64> = [1, 2, 4, 8, 40]
            .iter()
            .map(|&n| b.nth(n).as_secs())
            .collect();
        assert_eq!(d, vec![5, 10, 40, 600, 600]);
        assert_eq!(b.nth(0), Duration::from_secs(5));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(5) && first <= Duration::from_millis(10));
        for _ in 0..10 {
            b.next_delay();
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_millis(50) && late <= Duration::from_millis(100));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }
}
