//! A value computed at most once per interval, by one caller at a time: what keeps a flood
//! of unauthenticated `/metrics` or `/readyz` requests to one database query per second.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct Cached<T> {
    ttl: Duration,
    slot: Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Cached<T> {
    pub fn new(ttl: Duration) -> Self {
        Cached {
            ttl,
            slot: Mutex::new(None),
        }
    }

    /// The value, computed by `f` when the last one is older than the interval. Callers that
    /// arrive meanwhile wait for that computation instead of starting their own.
    pub async fn get_or<E, F, Fut>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((at, v)) = &*slot {
            if at.elapsed() < self.ttl {
                return Ok(v.clone());
            }
        }
        let v = f().await?;
        *slot = Some((Instant::now(), v.clone()));
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn computes_once_per_interval() {
        let c = Cached::new(Duration::from_secs(3600));
        let first: Result<u32, ()> = c.get_or(|| async { Ok(1) }).await;
        let second: Result<u32, ()> = c.get_or(|| async { Ok(2) }).await;
        assert_eq!((first, second), (Ok(1), Ok(1)));
        let fresh = Cached::new(Duration::ZERO);
        let _: Result<u32, ()> = fresh.get_or(|| async { Ok(1) }).await;
        let again: Result<u32, ()> = fresh.get_or(|| async { Ok(2) }).await;
        assert_eq!(again, Ok(2));
        let failed: Result<u32, &str> = fresh.get_or(|| async { Err("down") }).await;
        assert_eq!(failed, Err("down"), "a failure is not cached");
    }
}
