//! The projection runtime (docs/ARCHITECTURE.md): runners that apply events to read models
//! exactly once, their state in SQL, and waiting for a position without polling.

mod context;
mod failures;
mod lag;
mod live;
mod rebuild;
mod ride;
mod runner;
mod state;
mod tx;
mod wait;

use async_trait::async_trait;
use deadpool_postgres::Transaction;

use crate::db::Fault;
use crate::eventstore::{StoreError, StoredEvent};

pub use context::RunnerOptions;
pub use lag::{LagHistory, Sample};
pub use rebuild::request_rebuild;
pub use ride::{Deliver, RoundRead};
pub use runner::Projector;
pub use state::{
    acknowledge_failed, failed_events, health, lag, last_event_timestamp, parse_lag_overrides,
    reset, retry_failed, state, states, FailedEvent, HealthReport, Lag, ProjectionHealth,
    ProjectionState, RebuildProgress, RetryReport, Thresholds,
};
pub use tx::Tx;
pub use wait::{confirm_reached, ProgressHub, WaitError, PROGRESS_CHANNEL};

/// Sets up a transaction that applies events to the live read models: projections name
/// their tables without a schema (a rebuild writes the same SQL into `projections_rebuild`).
/// It commits synchronously: its flush is what makes durable the deferred pushes it applies
/// (`EventStore::deferring`), whose writers answer once a read model holds them.
pub(crate) const LIVE_SESSION_SQL: &str =
    "SELECT set_config('search_path', 'projections, public', true)";

/// What applying events may fail with. The runner decides from its [`FailureClass`] whether
/// to retry the batch, to retry the event with backoff, or to dead-letter it at once.
#[derive(Debug, thiserror::Error)]
pub enum ReduceError {
    /// The reducer's own verdict: this event does not fit the model (a malformed payload, a
    /// change to a row that does not exist). Applying it again cannot succeed.
    #[error("{0}")]
    Rejected(String),
    #[error("database error")]
    Db(#[from] tokio_postgres::Error),
    /// Anything else: retried with backoff, dead-lettered after the configured attempts.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl From<&str> for ReduceError {
    fn from(s: &str) -> Self {
        ReduceError::Rejected(s.to_string())
    }
}

impl From<String> for ReduceError {
    fn from(s: String) -> Self {
        ReduceError::Rejected(s)
    }
}

/// How a failure is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The connection went away: the batch is retried on a new one.
    Connection,
    /// The moment, not the event (deadlock, cancel, lock or resource limits): the batch is
    /// retried with backoff and the event is never dead-lettered.
    Transient,
    /// The event can never be applied (data, constraint and program-limit SQLSTATE classes,
    /// a reducer's rejection): dead-lettered at once, so it delays nobody beyond one batch.
    Permanent,
    /// Not known to be either: retried with backoff, dead-lettered after N attempts.
    Unknown,
}

impl ReduceError {
    pub fn class(&self) -> FailureClass {
        match self {
            ReduceError::Rejected(_) => FailureClass::Permanent,
            ReduceError::Other(_) => FailureClass::Unknown,
            ReduceError::Db(e) => match crate::db::fault(e) {
                Fault::Connection => FailureClass::Connection,
                Fault::Transient => FailureClass::Transient,
                Fault::Permanent => FailureClass::Permanent,
                Fault::Unknown => FailureClass::Unknown,
            },
        }
    }
}

/// A read model kept from events.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Unique name; the key of its row in projections.projection_states.
    fn name(&self) -> &'static str;

    /// The event types it consumes; `None` for every type.
    fn event_types(&self) -> Option<Vec<String>>;

    /// The tables it owns (schema-qualified); reset empties them.
    fn tables(&self) -> Vec<String>;

    /// Applies events in log order inside the batch's transaction, with a few set-based
    /// statements. Must leave the same model as applying them one call per event (a test
    /// holds every read model to that), and be deterministic: after a failure the runner
    /// applies parts of the batch again to find the event at fault.
    async fn apply(&self, tx: &Tx<'_>, events: &[&StoredEvent]) -> Result<(), ReduceError>;

    /// Whether [`Projection::apply`] of these events sends every statement it will send
    /// without waiting for any answer but those of [`Tx::prepare_cached`], or fails before
    /// sending any. The live round then sends its COMMIT right behind them instead of a
    /// round trip later. A `true` where more statements follow an answer would commit a
    /// batch without them: claim it only for paths written that way.
    fn sends_at_once(&self, _events: &[&StoredEvent]) -> bool {
        false
    }

    /// Whether applying an aggregate's events again, in order, from any one of them on,
    /// leaves the model as it was (a fold keyed by aggregate). retry-failed then re-applies
    /// a dead letter together with the aggregate's later events, so a later removal stays
    /// removed. A counter is not: it re-applies the dead letter alone.
    fn replays_aggregates(&self) -> bool {
        false
    }

    /// Clears the read model and rewinds the projection (projections.reset in SQL).
    async fn reset(&self, tx: &Transaction<'_>) -> Result<(), ReduceError> {
        tx.execute("SELECT projections.reset($1)", &[&self.name()])
            .await?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("no projection named {0:?}")]
    Unknown(String),
    #[error("projection {projection}")]
    Reduce {
        projection: String,
        #[source]
        source: ReduceError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database pool")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error")]
    Db(#[from] tokio_postgres::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reducers_rejection_is_permanent() {
        assert_eq!(
            ReduceError::from("user.changed for unknown user").class(),
            FailureClass::Permanent
        );
    }
}
