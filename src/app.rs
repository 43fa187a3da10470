//! Builds the application: one function that `portcullis serve` and the tests both call.

use std::future::Future;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::net::TcpListener;

use crate::config::{Config, ScimOptions};
use crate::db::{self, DbError};
use crate::eventstore::EventStore;
use crate::mail::{MailWorker, Mailer};
use crate::projection::{ProgressHub, ProjectionError, Projector};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot start the projections: {0}")]
    Projection(#[from] ProjectionError),
    #[error("mail: {0}")]
    Mail(#[from] crate::mail::MailError),
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
    pub clock: crate::clock::SharedClock,
    pub verification: Arc<crate::domain::verification::Settings>,
    /// The outbox worker (none when `Config::run_mail_worker` is off).
    pub mail: Option<Arc<MailWorker>>,
}

impl AppState {
    /// Tells the local mail worker there is mail (other processes hear NOTIFY mail_outbox).
    pub fn wake_mailer(&self) {
        if let Some(m) = &self.mail {
            m.wake();
        }
    }
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
        let mailer = Mailer::new(cfg.smtp_url.as_deref(), &cfg.mail_from)?;
        if mailer.is_log() {
            tracing::warn!(
                "SMTP_URL is not set: mails, verification codes included, go to the log"
            );
        }
        let mail = cfg.run_mail_worker.then(|| {
            Arc::new(MailWorker::start(
                &cfg.database_url,
                pool.clone(),
                store.clone(),
                mailer,
                cfg.clock.clone(),
                cfg.mail.clone(),
            ))
        });
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
            clock: cfg.clock.clone(),
            verification: Arc::new(cfg.verification.clone()),
            mail,
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
