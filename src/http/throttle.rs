//! Failures per client address: an address that fails too often in a window must wait
//! (429 with Retry-After) before it may try again. Dashboard logins and bearer tokens each
//! have one, so a client guessing credentials costs neither the database nor argon2 more
//! than a few attempts a minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

/// Addresses a throttle remembers at most (it forgets expired windows first).
const MAX_ADDRESSES: usize = 10_000;

pub struct FailureThrottle {
    /// Failures an address may make per window before it must wait.
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (DateTime<Utc>, u32)>>,
}

impl FailureThrottle {
    pub fn new(max: u32, window: Duration) -> FailureThrottle {
        FailureThrottle {
            max,
            window,
            failures: Mutex::default(),
        }
    }

    /// Dashboard logins: 5 failures a minute.
    pub fn logins() -> FailureThrottle {
        FailureThrottle::new(5, Duration::minutes(1))
    }

    /// Unknown bearer tokens: 30 a minute (a client with a wrong token retries, it does not
    /// send hundreds of tokens).
    pub fn bearer_tokens() -> FailureThrottle {
        FailureThrottle::new(30, Duration::minutes(1))
    }

    /// `Err(seconds)` when `who` has failed too often lately and must wait that long.
    pub fn check(&self, who: IpAddr, now: DateTime<Utc>) -> Result<(), i64> {
        let g = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match g.get(&who) {
            Some((start, n)) if *n >= self.max && now < *start + self.window => {
                Err((*start + self.window - now).num_seconds().max(1))
            }
            _ => Ok(()),
        }
    }

    pub fn failed(&self, who: IpAddr, now: DateTime<Utc>) {
        let mut g = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() >= MAX_ADDRESSES {
            g.retain(|_, (start, _)| now < *start + self.window);
            if g.len() >= MAX_ADDRESSES {
                g.clear();
            }
        }
        let entry = g.entry(who).or_insert((now, 0));
        if now >= entry.0 + self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_throttled_per_address_for_a_window() {
        let t = FailureThrottle::logins();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let now = Utc::now();
        for _ in 0..5 {
            assert!(t.check(a, now).is_ok());
            t.failed(a, now);
        }
        assert_eq!(t.check(a, now), Err(60));
        assert!(t.check(b, now).is_ok(), "another address is not affected");
        assert!(
            t.check(a, now + Duration::minutes(1)).is_ok(),
            "the window ends"
        );
    }
}
