//! Builds the application: one function that `portcullis serve` and the tests both call.

use std::future::Future;
use std::sync::Arc;

use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::db::{self, DbError, Purpose};
use crate::eventstore::EventStore;
use crate::http::cache::Cached;
use crate::http::throttle::FailureThrottle;
use crate::http::{AppState, Sampler, Shared};
use crate::mail::{MailWorker, Mailer};
use crate::runtime::{ProgressHub, ProjectionError, Projector};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot start the projections")]
    Projection(#[from] ProjectionError),
    #[error("mail")]
    Mail(#[from] crate::mail::MailError),
    #[error(
        "the event log is {ahead} transaction ids ahead of this PostgreSQL cluster (restored \
         from a dump?): new events would sort before stored positions and never be projected. \
         Run `SELECT eventstore.rebase_after_restore();` in psql once, then start again"
    )]
    NotRebased { ahead: u64 },
    #[error("cannot read the SCIM cursor key (scim.cursor_key)")]
    CursorKey(#[source] tokio_postgres::Error),
    #[error("cannot read the event store")]
    Store(#[from] crate::eventstore::StoreError),
}

/// The tokio runtime `portcullis serve` runs on, and `make bench` measures: `worker_threads`
/// worker threads, or tokio's default (one per core).
pub fn runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    builder.enable_all().build()
}

/// How often `/metrics` and `/readyz` read the database, however often they are asked.
const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Background connections beyond one per projection runner: the hub, the lag sampler, the
/// mail worker and a rebuild.
const BACKGROUND_SPARE: usize = 4;

/// Connections of security-event delivery (fills and pushes' bookkeeping, all receivers).
const SECEVENTS_POOL: usize = 4;

impl AppState {
    /// Connects, starts the ProgressHub and (unless switched off) the projections.
    /// Expects a migrated database.
    pub async fn start(cfg: &Config) -> Result<AppState, StartError> {
        let pool = db::pool_for(&cfg.database_url, cfg.pool_size, Purpose::Requests)?;
        // The runtime's own connections: no flood of requests can starve the projections,
        // and so the writes that wait for them.
        let background = db::pool_for(
            &cfg.database_url,
            crate::read_models::all().len() + BACKGROUND_SPARE,
            Purpose::Background,
        )?;
        let store = EventStore::new(pool.clone(), cfg.store.clone());
        let cursor_key = {
            let client = pool.get().await.map_err(ProjectionError::from)?;
            let ahead = crate::eventstore::positions_ahead(&client).await?;
            if ahead > 0 {
                return Err(StartError::NotRebased { ahead });
            }
            cfg.thresholds.store(&client).await?;
            crate::signing::SigningKey::load(&client)
                .await
                .map_err(StartError::CursorKey)?
        };
        let hub = ProgressHub::start(&cfg.database_url, background.clone()).await?;
        let lag_history = crate::runtime::LagHistory::default();
        let sampler = Sampler(lag_history.start_sampling(background.clone()));
        let (mail, secevents) = workers(cfg, &background, &store)?;
        let projector = if cfg.run_projections {
            Some(Arc::new(
                Projector::start(
                    &cfg.database_url,
                    background.clone(),
                    store.clone(),
                    hub.clone(),
                    crate::read_models::all(),
                    cfg.runner.clone(),
                )
                .await?,
            ))
        } else {
            None
        };
        Ok(AppState::new(Shared {
            pool,
            store,
            hub,
            projector,
            admin_token: cfg.admin_token.clone().map(Arc::new),
            scim: Arc::new(cfg.scim.clone()),
            http: Arc::new(cfg.http.clone()),
            logins: Arc::new(FailureThrottle::logins()),
            bearer_failures: Arc::new(FailureThrottle::bearer_tokens()),
            health: Arc::new(Cached::new(HEALTH_EVERY)),
            readiness: Arc::new(Cached::new(HEALTH_EVERY)),
            cursor_key: Arc::new(cursor_key),
            tokens: Arc::default(),
            clock: cfg.clock.clone(),
            verification: Arc::new(cfg.verification.clone()),
            mail,
            secevents,
            _sampler: Arc::new(sampler),
            lag_history,
        }))
    }
}

/// The mail worker (unless switched off) and security-event delivery.
fn workers(
    cfg: &Config,
    background: &deadpool_postgres::Pool,
    store: &EventStore,
) -> Result<(Option<Arc<MailWorker>>, Arc<crate::secevents::SecEvents>), StartError> {
    let smtp_url = cfg.smtp_url.as_ref().map(|u| u.expose_secret());
    let mailer = Mailer::new(smtp_url, &cfg.mail_from)?;
    if mailer.is_log() {
        tracing::warn!("SMTP_URL is not set: mails, verification codes included, go to the log");
    }
    let mail = cfg.run_mail_worker.then(|| {
        Arc::new(MailWorker::start(
            &cfg.database_url,
            background.clone(),
            store.clone(),
            mailer,
            cfg.clock.clone(),
            cfg.mail.clone(),
        ))
    });
    // Their own few connections: however many receivers there are, they cannot take the
    // projections' (which every write waits for).
    let delivery = db::pool_for(&cfg.database_url, SECEVENTS_POOL, Purpose::Background)?;
    let secevents = Arc::new(crate::secevents::SecEvents::start(
        &cfg.database_url,
        delivery,
        store,
        cfg.clock.clone(),
        cfg.secevents.clone(),
        cfg.run_secevents_worker,
    ));
    Ok((mail, secevents))
}

pub fn router(state: AppState) -> axum::Router {
    crate::api::router(&state)
        .merge(crate::scim::router(&state))
        .layer(axum::middleware::from_fn(crate::http::telemetry::track))
        .with_state(state)
}

/// Serves HTTP on `listener` until `shutdown` resolves, then finishes in-flight requests and
/// gives the security-event leases back.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let opts = state.http.clone();
    let secevents = state.secevents.clone();
    let served = crate::http::server::run(listener, router(state), &opts, shutdown).await;
    secevents.stop().await;
    served
}
