//! What delivery runs on: its settings and the channels it NOTIFYs.

use std::time::Duration;

/// NOTIFYed when a receiver is registered or told to retry.
pub const RECEIVERS_CHANNEL: &str = "secevents_receivers";
/// NOTIFYed when SETs were queued (poll requests waiting elsewhere wake up).
pub const PENDING_CHANNEL: &str = "secevents_pending";

#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// The service's public URL: `iss` is `{public_url}/scim/v2/{org}`.
    pub public_url: String,
    /// How long a process delivers for a receiver without renewing; after a crash, another
    /// takes over within it.
    pub lease: Duration,
    /// First retry delay after a failed push; doubles per failure up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long one push may take.
    pub push_timeout: Duration,
    /// How long a poll without `returnImmediately` waits for SETs at most.
    pub long_poll: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            public_url: "http://127.0.0.1:8080".into(),
            lease: Duration::from_secs(15),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            push_timeout: Duration::from_secs(10),
            long_poll: Duration::from_secs(20),
        }
    }
}
