//! Builds the application: one function that `portcullis serve` and the tests both call.

use std::future::Future;

use deadpool_postgres::Pool;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::db::{self, DbError};
use crate::eventstore::EventStore;

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub store: EventStore,
}

impl AppState {
    /// Connects (lazily: the pool opens connections on first use) and starts the store's
    /// wake-up machinery. Expects a migrated database.
    pub fn new(cfg: &Config) -> Result<AppState, DbError> {
        let pool = db::pool(&cfg.database_url, cfg.pool_size)?;
        let store = EventStore::new(pool.clone(), cfg.store.clone());
        Ok(AppState { pool, store })
    }
}

pub fn router(state: AppState) -> axum::Router {
    crate::api::router().with_state(state)
}

/// Serves HTTP on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
