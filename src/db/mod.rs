//! Connections (pools by purpose, session bounds, TLS: `tls`), error classes, migrations.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod};
use futures::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

pub mod tls;

mod embedded {
    refinery::embed_migrations!("sql");
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL")]
    Url(#[source] tokio_postgres::Error),
    #[error("cannot connect to the database")]
    Connect(#[source] tokio_postgres::Error),
    #[error("database")]
    Query(#[from] tokio_postgres::Error),
    #[error("cannot build the connection pool")]
    Pool(#[from] deadpool_postgres::BuildError),
    #[error("migration failed")]
    Migrate(#[from] refinery::Error),
    #[error("the TLS settings of DATABASE_URL")]
    Tls(#[from] tls::TlsError),
}

/// Whose connections a pool holds: the settings that bound a fault differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// HTTP requests: a statement, a lock wait and an idle transaction are each bounded, so
    /// an expensive filter or a stuck lock costs one request, not the pool.
    Requests,
    /// Projection runners, the hub, the mail worker: a runner cut off from the network must
    /// not hold its projection's lock for long, so idle transactions end quickly; batches may
    /// take longer than a request.
    Background,
    /// The command line, migrations and tests: no statement bound (a reset or a migration may
    /// run long), the rest as for everyone.
    Tool,
}

impl Purpose {
    fn name(self) -> &'static str {
        match self {
            Purpose::Requests => "requests",
            Purpose::Background => "background",
            Purpose::Tool => "tool",
        }
    }

    /// Session settings, in milliseconds: (statement_timeout, lock_timeout,
    /// idle_in_transaction_session_timeout). 0 is none.
    fn timeouts(self) -> (u64, u64, u64) {
        match self {
            Purpose::Requests => (30_000, 10_000, 5_000),
            Purpose::Background => (300_000, 0, 5_000),
            Purpose::Tool => (0, 0, 60_000),
        }
    }
}

/// How long sent data may go unacknowledged before either side drops the connection.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(8);

/// Session settings every connection of ours gets, merged with (never replacing) the
/// `options` of DATABASE_URL: a setting the URL names is the operator's. Server-side TCP
/// keepalives and `tcp_user_timeout` make Postgres drop a vanished client (and release its
/// locks) within seconds instead of the kernel's two hours; an open transaction also holds
/// back the event horizon of every node, so idle transactions are bounded everywhere. A node
/// cut off mid-transaction loses it after the idle bound (its last answer sat in a socket
/// buffer) or after `tcp_user_timeout` (its answer could not be sent): the cluster test
/// measures the takeover at about 5 s. JIT is off.
fn session_options(purpose: Purpose) -> Vec<(&'static str, String)> {
    let (statement, lock, idle) = purpose.timeouts();
    let mut options = vec![
        ("statement_timeout", statement.to_string()),
        ("lock_timeout", lock.to_string()),
        ("idle_in_transaction_session_timeout", idle.to_string()),
        ("tcp_keepalives_idle", "5".into()),
        ("tcp_keepalives_interval", "2".into()),
        ("tcp_keepalives_count", "3".into()),
        ("tcp_user_timeout", TCP_USER_TIMEOUT.as_millis().to_string()),
        // Every statement of ours is short; JIT compiling one whose estimate crosses
        // jit_above_cost (a health count over a big log, a 500-row batch) costs more CPU
        // than it saves, on the cores the requests need.
        ("jit", "off".into()),
    ];
    if purpose == Purpose::Background {
        // The runtime runs a few fixed statements on keys (a log read on its primary key,
        // state rows by name, read-model rows by id), over and over with new values: the
        // generic plan is the custom one, and planning each call again cost more than
        // running it (0.1-0.3 ms per statement of every batch). Requests keep custom plans:
        // a client's filter needs its values to pick an index.
        options.push(("plan_cache_mode", "force_generic_plan".into()));
    }
    options
}

/// `-c k=v` settings in `existing` (libpq's `options`), plus each of `ours` it does not name.
fn merge_options(existing: Option<&str>, ours: &[(&'static str, String)]) -> String {
    let existing = existing.unwrap_or("").trim();
    let named = |key: &str| {
        let key = key.replace('_', "-");
        existing
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .any(|(k, _)| k.trim_start_matches("--").replace('_', "-") == key)
    };
    let mut out = existing.to_string();
    for (k, v) in ours {
        if !named(k) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&format!("-c {k}={v}"));
        }
    }
    out
}

/// The connection settings for `url` (TLS settings taken out, see `tls`), and its rustls
/// configuration (`None` without TLS).
fn pg_config(
    url: &str,
    purpose: Purpose,
    name: &str,
) -> Result<(tokio_postgres::Config, Option<rustls::ClientConfig>), DbError> {
    let tls = tls::settings(url)?;
    let rustls = tls::client_config(&tls)?;
    let mut cfg = tokio_postgres::Config::from_str(&tls.url).map_err(DbError::Url)?;
    if cfg.get_application_name().is_none() {
        cfg.application_name(format!("portcullis {name}"));
    }
    let options = merge_options(cfg.get_options(), &session_options(purpose));
    cfg.options(&options);
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(10));
    }
    // The client side of the same bound: a server that vanished is noticed in seconds.
    cfg.keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(TCP_USER_TIMEOUT);
    Ok((cfg, rustls))
}

/// A pool for tools and tests ([`Purpose::Tool`]).
pub fn pool(url: &str, size: usize) -> Result<Pool, DbError> {
    pool_for(url, size, Purpose::Tool)
}

pub fn pool_for(url: &str, size: usize, purpose: Purpose) -> Result<Pool, DbError> {
    let (cfg, tls) = pg_config(url, purpose, purpose.name())?;
    let manager = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let mgr = match tls {
        Some(tls) => Manager::from_config(cfg, MakeRustlsConnect::new(tls), manager),
        None => Manager::from_config(cfg, NoTls, manager),
    };
    Ok(Pool::builder(mgr)
        .max_size(size.max(1))
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        // The connection used last comes first: its backend has just run and is still warm
        // (caches, and a CPU not yet asleep), where the one idle longest must be woken.
        // Measured with `make bench`: a lone create and read back 3.0-3.8 ms against 3.7-4.5,
        // and 16 clients' creates 0.47-0.49 of the domain command's rate against 0.40-0.41.
        .queue_mode(QueueMode::Lifo)
        .build()?)
}

/// What a connection of its own sends besides query results (notifications, notices); the
/// stream also drives the connection, so it must be polled, and it ends with the connection.
pub type Messages = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Send>,
>;

/// A connection of its own, outside the pool (LISTEN, migrations).
pub async fn connect(
    url: &str,
    purpose: &str,
) -> Result<(tokio_postgres::Client, Messages), DbError> {
    fn messages<S, T>(mut conn: tokio_postgres::Connection<S, T>) -> Messages
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        Box::pin(futures::stream::poll_fn(move |cx| conn.poll_message(cx)))
    }
    let (cfg, tls) = pg_config(url, Purpose::Tool, purpose)?;
    Ok(match tls {
        Some(tls) => {
            let (client, conn) = cfg
                .connect(MakeRustlsConnect::new(tls))
                .await
                .map_err(DbError::Connect)?;
            (client, messages(conn))
        }
        None => {
            let (client, conn) = cfg.connect(NoTls).await.map_err(DbError::Connect)?;
            (client, messages(conn))
        }
    })
}

/// Applies pending migrations under an advisory lock (several processes may start at once);
/// returns the names of those it applied.
pub async fn migrate(url: &str) -> Result<Vec<String>, DbError> {
    let (mut client, mut conn) = connect(url, "migrate").await?;
    let driver = tokio::spawn(async move {
        while let Some(m) = conn.next().await {
            if let Err(e) = m {
                tracing::warn!(error = %crate::error_chain(&e), "migration connection ended");
            }
        }
    });
    let result = async {
        client
            .execute(
                "SELECT pg_advisory_lock(hashtextextended('portcullis.migrate', 0))",
                &[],
            )
            .await?;
        let report = embedded::migrations::runner()
            .set_abort_divergent(true)
            .run_async(&mut client)
            .await?;
        Ok::<_, DbError>(
            report
                .applied_migrations()
                .iter()
                .map(|m| m.to_string())
                .collect(),
        )
    }
    .await;
    drop(client);
    let _ = driver.await;
    result
}

/// What a database error says about trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The connection went away or could not be made.
    Connection,
    /// The moment, not the statement: serialization or deadlock, cancel and timeouts,
    /// resource limits, shutdown, lock timeouts, I/O on the server.
    Transient,
    /// The statement can never succeed as it is: data, constraint and program-limit errors.
    Permanent,
    /// Not known to be either.
    Unknown,
}

/// Classifies an error by its SQLSTATE class (PostgreSQL manual, appendix A); an error with
/// no SQLSTATE is the connection's unless it carries another cause (a value conversion).
pub fn fault(e: &tokio_postgres::Error) -> Fault {
    let Some(db) = e.as_db_error() else {
        let io = std::error::Error::source(e).is_none_or(|s| s.is::<std::io::Error>());
        return if e.is_closed() || io {
            Fault::Connection
        } else {
            Fault::Unknown
        };
    };
    sqlstate_fault(db.code().code())
}

fn sqlstate_fault(code: &str) -> Fault {
    match &code[..2.min(code.len())] {
        "08" => Fault::Connection,
        "40" | "53" | "55" | "57" | "58" => Fault::Transient,
        "22" | "23" | "54" => Fault::Permanent,
        _ => Fault::Unknown,
    }
}

/// Whether an error (anywhere in its cause chain) means the database is unavailable for
/// now: a client should try again later (503) rather than report a fault (500).
pub fn unavailable(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() {
            return matches!(fault(pg), Fault::Connection | Fault::Transient);
        }
        if let Some(p) = e.downcast_ref::<deadpool_postgres::PoolError>() {
            return match p {
                deadpool_postgres::PoolError::Timeout(_) | deadpool_postgres::PoolError::Closed => {
                    true
                }
                deadpool_postgres::PoolError::Backend(pg) => {
                    matches!(fault(pg), Fault::Connection | Fault::Transient)
                }
                _ => false,
            };
        }
        if e.is::<std::io::Error>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The same server as `url`, another database: `postgres://u:p@h:5432/a?x=y` with `b` gives
/// `postgres://u:p@h:5432/b?x=y`; a `key=value` string gets ` dbname=b` appended (the last
/// key wins).
pub fn url_with_database(url: &str, database: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let query_at = rest.find('?').unwrap_or(rest.len());
        let path_at = rest[..query_at].find('/').unwrap_or(query_at);
        format!(
            "{}{}/{}{}",
            &url[..scheme_end + 3],
            &rest[..path_at],
            database,
            &rest[query_at..]
        )
    } else {
        format!("{url} dbname={database}")
    }
}

/// The migrations built into this binary, as `V<n>__<name>`.
pub fn embedded_migrations() -> Vec<String> {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect()
}

/// The highest migration version built into this binary.
pub fn latest_migration() -> i32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version() as i32)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_options_keep_what_the_url_says() {
        let ours = session_options(Purpose::Requests);
        let merged = merge_options(Some("-c statement_timeout=5s --lock-timeout=1s"), &ours);
        assert!(merged.starts_with("-c statement_timeout=5s --lock-timeout=1s "));
        assert_eq!(merged.matches("statement_timeout").count(), 1, "{merged}");
        assert!(!merged.contains("lock_timeout"), "{merged}");
        assert!(merged.contains("-c idle_in_transaction_session_timeout=5000"));
        let fresh = merge_options(None, &ours);
        assert!(fresh.starts_with("-c statement_timeout=30000 -c lock_timeout=10000"));
    }

    #[test]
    fn sqlstates_are_classed_by_what_a_retry_can_change() {
        for (code, want) in [
            ("54000", Fault::Permanent),
            ("23505", Fault::Permanent),
            ("22P02", Fault::Permanent),
            ("40P01", Fault::Transient),
            ("57014", Fault::Transient),
            ("55P03", Fault::Transient),
            ("53200", Fault::Transient),
            ("57P01", Fault::Transient),
            ("08006", Fault::Connection),
            ("42P01", Fault::Unknown),
        ] {
            assert_eq!(sqlstate_fault(code), want, "{code}");
        }
    }

    #[test]
    fn an_unavailable_database_is_found_anywhere_in_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("store")]
        struct Wrapper(#[source] deadpool_postgres::PoolError);
        let timeout = deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait);
        assert!(unavailable(&Wrapper(timeout)));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(unavailable(&refused));
        assert!(!unavailable(&std::fmt::Error));
    }

    #[test]
    fn only_the_runtime_forces_generic_plans() {
        let generic = |p: Purpose| {
            session_options(p)
                .iter()
                .any(|(k, v)| *k == "plan_cache_mode" && v == "force_generic_plan")
        };
        assert!(generic(Purpose::Background));
        assert!(!generic(Purpose::Requests));
        assert!(!generic(Purpose::Tool));
    }

    #[test]
    fn url_with_database_replaces_only_the_database() {
        assert_eq!(
            url_with_database("postgres://u:p@h:5432/a?sslmode=disable", "b"),
            "postgres://u:p@h:5432/b?sslmode=disable"
        );
        assert_eq!(url_with_database("postgres://h", "b"), "postgres://h/b");
        assert_eq!(
            url_with_database("postgresql://h:1/", "b"),
            "postgresql://h:1/b"
        );
        assert_eq!(
            url_with_database("host=h user=u", "b"),
            "host=h user=u dbname=b"
        );
    }
}
