//! The test harness: a real PostgreSQL server per test process, a database per test cloned
//! from a migrated template, and the app started in-process on port 0.
//!
//! Where the server comes from: `DATABASE_URL` when set (any server you point it at; `make test`
//! sets it for its throwaway local cluster); otherwise a container started with testcontainers
//! from `PORTCULLIS_TEST_PG_IMAGE` (default `postgres:15`; `make test` builds a local image when
//! none can be pulled).

pub mod pg;
pub mod receiver;
pub mod smtp;

use std::time::Duration;

use portcullis::app;
use portcullis::config::Config;
use portcullis::eventstore::{EventStore, StoreOptions};
use portcullis::http::AppState;
use tokio::sync::oneshot;

pub use pg::TestDb;

/// The app, serving real HTTP on 127.0.0.1 with a port the OS chose.
pub struct TestApp {
    pub base: String,
    pub state: AppState,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(db: &TestDb) -> TestApp {
        Self::spawn_with(db.config()).await
    }

    pub async fn spawn_with(cfg: Config) -> TestApp {
        let state = AppState::start(&cfg).await.expect("app state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app::serve(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        TestApp {
            base: format!("http://{addr}"),
            state,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Graceful shutdown; returns once the server has stopped.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server");
        }
    }
}

impl TestDb {
    pub fn config(&self) -> Config {
        let mut c = Config::new(self.url.clone());
        c.pool_size = 24;
        c
    }

    pub fn store(&self, opts: StoreOptions) -> EventStore {
        let pool = portcullis::db::pool(&self.url, 24).expect("pool");
        EventStore::new(pool, opts)
    }
}

/// Logs go to the test's captured output; RUST_LOG picks the level (default: warnings).
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Polls `check` until it returns `Some`, backing off between tries; panics with `what` at the
/// deadline. For conditions that have no notification to wait on.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut backoff = Duration::from_millis(1);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        // Backoff between checks of a condition, bounded by the deadline above.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
}
