//! Builds the application: one function that `portcullis serve` and the tests both call.

use std::future::Future;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::net::TcpListener;

use crate::config::{Config, ScimOptions};
use crate::db::{self, DbError};
use crate::eventstore::EventStore;
use crate::projection::{ProgressHub, ProjectionError, Projector};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot start the projections: {0}")]
    Projection(#[from] ProjectionError),
}

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub store: EventStore,
    pub hub: ProgressHub,
    /// The projections this process runs (none when `Config::run_projections` is off).
    pub projector: Option<Arc<Projector>>,
    pub admin_token: Option<Arc<str>>,
    pub scim: Arc<ScimOptions>,
    pub tokens: Arc<crate::domain::token::TokenCache>,
}

impl AppState {
    /// Connects, starts the ProgressHub and (unless switched off) the projections.
    /// Expects a migrated database.
    pub async fn start(cfg: &Config) -> Result<AppState, StartError> {
        let pool = db::pool(&cfg.database_url, cfg.pool_size)?;
        let store = EventStore::new(pool.clone(), cfg.store.clone());
        {
            let client = pool.get().await.map_err(ProjectionError::from)?;
            cfg.thresholds.store(&client).await?;
        }
        let hub = ProgressHub::start(&cfg.database_url, pool.clone()).await?;
        let projector = if cfg.run_projections {
            Some(Arc::new(
                Projector::start(
                    &cfg.database_url,
                    pool.clone(),
                    store.clone(),
                    hub.clone(),
                    crate::projections::all(),
                    cfg.runner.clone(),
                )
                .await?,
            ))
        } else {
            None
        };
        Ok(AppState {
            pool,
            store,
            hub,
            projector,
            admin_token: cfg.admin_token.as_deref().map(Arc::from),
            scim: Arc::new(cfg.scim.clone()),
            tokens: Arc::default(),
        })
    }
}

pub fn router(state: AppState) -> axum::Router {
    crate::api::router()
        .merge(crate::scim::router(&state))
        .with_state(state)
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
