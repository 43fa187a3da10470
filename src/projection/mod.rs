//! The projection runtime (DESIGN.md §4-5): runners that apply events to read models exactly
//! once, their state in SQL, and waiting for a position without polling.

mod runner;
mod state;
mod wait;

use async_trait::async_trait;
use deadpool_postgres::Transaction;

use crate::eventstore::{StoreError, StoredEvent};

pub use runner::{Projector, RunnerOptions};
pub use state::{
    acknowledge_failed, failed_events, health, lag, last_event_timestamp, parse_lag_overrides,
    reset, retry_failed, state, states, FailedEvent, HealthReport, Lag, ProjectionHealth,
    ProjectionState, RetryReport, Thresholds,
};
pub use wait::{ProgressHub, WaitError, PROGRESS_CHANNEL};

/// What a reducer may fail with. A database error that is not the connection's fault counts
/// against the event (retried, then dead-lettered); a lost connection fails the batch.
pub type ReduceError = Box<dyn std::error::Error + Send + Sync>;

/// A read model kept from events.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Unique name; the key of its row in projections.projection_states.
    fn name(&self) -> &'static str;

    /// The event types it consumes; `None` for every type.
    fn event_types(&self) -> Option<Vec<String>>;

    /// The tables it owns (schema-qualified); reset empties them.
    fn tables(&self) -> Vec<String>;

    /// Applies one event, inside the batch's transaction. Must be deterministic: after a
    /// failure the batch is rolled back and applied again.
    async fn reduce(&self, tx: &Transaction<'_>, event: &StoredEvent) -> Result<(), ReduceError>;

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
    #[error("projection {projection}: {source}")]
    Reduce {
        projection: String,
        #[source]
        source: ReduceError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// A reducer error caused by the connection rather than by the event.
pub(crate) fn is_connection_error(e: &ReduceError) -> bool {
    e.downcast_ref::<tokio_postgres::Error>()
        .is_some_and(|pg| pg.as_db_error().is_none())
}
