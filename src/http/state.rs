//! What every handler of both surfaces gets: the pool, the store, the hub, the caches and
//! settings. Built by `app.rs`.

use std::sync::Arc;

use deadpool_postgres::Pool;

use crate::config::{HttpOptions, ScimOptions};
use crate::eventstore::EventStore;
use crate::mail::MailWorker;
use crate::runtime::{ProgressHub, Projector};

/// Cloned by every extractor of every request: one reference count to move, not one per
/// field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub pool: Pool,
    pub store: EventStore,
    pub hub: ProgressHub,
    /// The projections this process runs (none when `Config::run_projections` is off).
    pub projector: Option<Arc<Projector>>,
    /// The bootstrap admin token (PORTCULLIS_ADMIN_TOKEN).
    pub admin_token: Option<Arc<secrecy::SecretString>>,
    pub scim: Arc<ScimOptions>,
    pub http: Arc<HttpOptions>,
    /// projections.health, read at most once a second for `/metrics`.
    pub health: Arc<super::cache::Cached<Arc<crate::runtime::HealthReport>>>,
    /// `/readyz`'s verdict (ready, body), computed at most once a second.
    pub readiness: Arc<super::cache::Cached<(bool, serde_json::Value)>>,
    /// Failed dashboard logins per client address.
    pub logins: Arc<super::throttle::FailureThrottle>,
    /// Unknown bearer tokens per client address.
    pub bearer_failures: Arc<super::throttle::FailureThrottle>,
    /// Signs SCIM list cursors (the same key on every node: it is in the database).
    pub cursor_key: Arc<crate::signing::SigningKey>,
    pub tokens: Arc<crate::domain::token::TokenCache>,
    pub clock: crate::clock::SharedClock,
    pub verification: Arc<crate::domain::verification::Settings>,
    /// The outbox worker (none when `Config::run_mail_worker` is off).
    pub mail: Option<Arc<MailWorker>>,
    /// Security events: wake-ups for poll requests, and the delivery worker.
    pub secevents: Arc<crate::secevents::SecEvents>,
    /// Lag samples for the dashboard's chart.
    pub lag_history: crate::runtime::LagHistory,
    pub(crate) _sampler: Arc<Sampler>,
}

/// Stops the lag sampler with the last clone of the state.
pub(crate) struct Sampler(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for Sampler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }

    /// Tells the local mail worker there is mail (other processes hear NOTIFY mail_outbox).
    pub fn wake_mailer(&self) {
        if let Some(m) = &self.mail {
            m.wake();
        }
    }
}
