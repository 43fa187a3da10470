//! Configuration: command-line flags, each with an environment variable (README, configuration).
//! The README's configuration table lists the same variables.

use secrecy::SecretString;
use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

mod db;
mod http;
mod secevents;

pub use db::DbArgs;
pub use http::{HttpArgs, HttpOptions};
pub use secevents::{ReceiversCommand, SigningKeysCommand};

use crate::eventstore::{NotifyMode, StoreOptions};
use crate::runtime::{RunnerOptions, Thresholds};

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Event-sourced identity service on PostgreSQL, speaking SCIM 2.0",
    long_about = "Portcullis stores organizations, users and groups as events in PostgreSQL, keeps \
read models with projections, and serves them to SCIM 2.0 clients.\n\n\
Every flag can also be set by the environment variable shown next to it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter, e.g. `info`, `portcullis=debug,tower_http=info`.
    #[arg(
        long,
        env = "PORTCULLIS_LOG",
        default_value = "info,refinery_core=warn,tokio_postgres=warn",
        global = true
    )]
    pub log: String,
    /// Log format: `text` for people, `json` (one object per line, with span fields) for
    /// log pipelines.
    #[arg(long, env = "PORTCULLIS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations, then serve HTTP until Ctrl-C or SIGTERM.
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations and say which ones were applied (idempotent).
    Migrate(DbArgs),
    /// Inspect and repair projections (the read models).
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Organizations (tenants).
    #[command(subcommand)]
    Orgs(OrgsCommand),
    /// API tokens for SCIM clients and admin automation.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Who changed what in an organization, newest first: one line per change (time,
    /// position, event, resource, actor, request id), or JSON lines with --json.
    Audit(AuditArgs),
    /// Receivers of an organization's SCIM security events (signed SETs, RFC 9967), pushed
    /// to an endpoint or polled.
    #[command(subcommand)]
    Receivers(ReceiversCommand),
    /// The keys an organization's SETs are signed with (published at
    /// /api/v1/orgs/{org}/jwks.json).
    #[command(subcommand)]
    SigningKeys(SigningKeysCommand),
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The organization.
    #[arg(long)]
    pub org: uuid::Uuid,
    /// Only this resource's history (a user, group or token id).
    #[arg(long)]
    pub resource: Option<uuid::Uuid>,
    /// Only events of this type, e.g. user.added.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Only changes by this actor: a token id, or a kind (cli, bootstrap_admin, ...).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only changes at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only changes before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Oldest first instead of newest first.
    #[arg(long)]
    pub oldest_first: bool,
    /// At most this many changes.
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
    /// One JSON object per line (the audit API's entries) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Create an organization; prints only its id, so scripts can capture it.
    Create {
        #[command(flatten)]
        db: DbArgs,
        /// A name for people (need not be unique).
        name: String,
        /// Return at once instead of waiting (up to 5 s) for a running service to apply it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show an organization's settings (JSON), changing those given first.
    Settings {
        #[command(flatten)]
        db: DbArgs,
        /// The organization.
        id: uuid::Uuid,
        /// Whether a verified email address that SCIM changes gets a new verification code at
        /// once (true) or waits until someone asks for one (false, the default).
        #[arg(long)]
        verify_email_on_change: Option<bool>,
    },
    /// List organizations (from their events, so also those a service has not projected
    /// yet): one line each, `<id> <name>`, oldest first.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Issue a token; prints only the token, once: it is stored hashed and cannot be shown
    /// again. Its id (for revoking) goes to standard error.
    Create {
        #[command(flatten)]
        db: DbArgs,
        /// The organization it acts for.
        #[arg(long)]
        org: uuid::Uuid,
        /// scim: provisioning and the org's API; admin: the admin endpoints.
        #[arg(long, value_enum)]
        scope: crate::domain::token::Scope,
        /// A label, e.g. the client that uses it.
        #[arg(long)]
        name: Option<String>,
        /// Return at once instead of waiting (up to 5 s) for a running service to accept it.
        #[arg(long)]
        no_wait: bool,
    },
    /// Revoke a token by its id; it is refused from then on.
    Revoke {
        #[command(flatten)]
        db: DbArgs,
        /// The token's id (printed by `tokens create` on standard error).
        id: uuid::Uuid,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Show every projection: position, lag, failed and dead-lettered events, status.
    Status {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON (the same document as GET /api/v1/admin/projections/health).
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a projection's read model without downtime: a running service builds a new
    /// copy beside the live one from the first event and swaps it in when it has caught up.
    /// Reads and writes go on against the live copy meanwhile; `status` shows the progress.
    Rebuild {
        #[command(flatten)]
        db: DbArgs,
        /// The projection's name (see `status`).
        name: String,
    },
    /// Empty a projection's read model and replay it from the first event (for DBAs: until it
    /// has caught up, SCIM reads answer 503). Over 50,000 or more events of its types the
    /// running service replays it by a rebuild (`status` shows it rebuilding). `rebuild` does
    /// the same without downtime.
    Reset {
        #[command(flatten)]
        db: DbArgs,
        /// The projection's name (see `status`).
        name: String,
    },
    /// Apply a projection's dead-lettered events again (after fixing their cause).
    RetryFailed {
        #[command(flatten)]
        db: DbArgs,
        name: String,
    },
    /// Mark a projection's dead-lettered events as seen, so they no longer degrade it.
    Acknowledge {
        #[command(flatten)]
        db: DbArgs,
        name: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Address to listen on for HTTP.
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub projections: ProjectionArgs,
    #[command(flatten)]
    pub scim: ScimArgs,
    #[command(flatten)]
    pub mail: MailArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Bearer token for the admin endpoints, for first start-up and automation (compared in
    /// constant time). Unset: only admin-scope API tokens are accepted.
    #[arg(long, env = "PORTCULLIS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Threads that run the service's tasks. Default: one per core. On a host PostgreSQL
    /// shares, fewer leave more of the CPU to its backends, which do most of each request's
    /// work.
    #[arg(long, env = "PORTCULLIS_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
}

#[derive(Debug, Clone, Args)]
pub struct ProjectionArgs {
    /// A projection more events behind than this is reported lagging.
    #[arg(long, env = "PORTCULLIS_LAG_EVENTS", default_value_t = 1000)]
    pub lag_events: i64,
    /// A projection whose oldest unapplied event is older than this (seconds) is lagging.
    #[arg(long, env = "PORTCULLIS_LAG_SECONDS", default_value_t = 30.0)]
    pub lag_seconds: f64,
    /// A projection with events waiting and no progress for this long (seconds) is stalled.
    #[arg(long, env = "PORTCULLIS_STALL_SECONDS", default_value_t = 60.0)]
    pub stall_seconds: f64,
    /// Lag thresholds for single projections, overriding the two above for them:
    /// `name=events:seconds,...`, e.g. `users=500:10,event_counts=100000:600`.
    #[arg(long, env = "PORTCULLIS_PROJECTION_LAG", value_parser = crate::runtime::parse_lag_overrides)]
    pub projection_lag: Option<std::vec::Vec<(String, i64, f64)>>,
    /// Failures after which an event is dead-lettered (skipped; the projection is degraded).
    #[arg(
        long = "projection-max-attempts",
        env = "PORTCULLIS_PROJECTION_MAX_ATTEMPTS",
        default_value_t = 5
    )]
    pub max_attempts: i32,
}

#[derive(Debug, Clone, Args)]
pub struct MailArgs {
    /// SMTP server for outgoing mail, e.g. `smtp://user:password@mail.example:587?tls=required`
    /// or `smtps://...`. Unset: mail goes to the log (codes included; for trying things out).
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Sender of verification mails.
    #[arg(
        long,
        env = "PORTCULLIS_MAIL_FROM",
        default_value = "Portcullis <no-reply@localhost>"
    )]
    pub mail_from: String,
    /// Base URL of this service as users reach it, for links in mails
    /// (default: http://<listen address>).
    #[arg(long, env = "PORTCULLIS_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// How long a verification code and link stay valid, in seconds.
    #[arg(
        long,
        env = "PORTCULLIS_VERIFICATION_TTL_SECONDS",
        default_value_t = 3600
    )]
    pub verification_ttl_seconds: i64,
    /// How soon a user may ask for another code, in seconds.
    #[arg(
        long,
        env = "PORTCULLIS_VERIFICATION_RESEND_SECONDS",
        default_value_t = 60
    )]
    pub verification_resend_seconds: i64,
    /// Sending attempts before a mail is given up (it stays in mail.outbox with the error).
    #[arg(long, env = "PORTCULLIS_MAIL_MAX_ATTEMPTS", default_value_t = 8)]
    pub mail_max_attempts: i32,
    /// Delay before the first retry of a failed mail, in seconds; doubles per failure.
    #[arg(long, env = "PORTCULLIS_MAIL_RETRY_SECONDS", default_value_t = 5)]
    pub mail_retry_seconds: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ScimArgs {
    /// How long a request waits for the read models to reach its write (or the client's
    /// Portcullis-Min-Position) before answering 503, in milliseconds.
    #[arg(long, env = "PORTCULLIS_WAIT_TIMEOUT_MS", default_value_t = 5000)]
    pub wait_timeout_ms: u64,
    /// Largest SCIM request body in bytes (also the /Bulk maxPayloadSize); larger gets 413.
    #[arg(long, env = "PORTCULLIS_SCIM_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub scim_max_body_bytes: usize,
    /// Most operations in one /Bulk request.
    #[arg(
        long,
        env = "PORTCULLIS_SCIM_MAX_BULK_OPERATIONS",
        default_value_t = 1000
    )]
    pub scim_max_bulk_operations: usize,
    /// How long a list cursor (RFC 9865 nextCursor/previousCursor) stays usable after the
    /// page that issued it, in seconds; older cursors get 400 expiredCursor.
    #[arg(
        long,
        env = "PORTCULLIS_SCIM_CURSOR_TIMEOUT_SECONDS",
        default_value_t = 3600
    )]
    pub scim_cursor_timeout_seconds: u64,
}

impl ScimArgs {
    pub fn options(&self) -> ScimOptions {
        ScimOptions {
            wait_timeout: std::time::Duration::from_millis(self.wait_timeout_ms.max(1)),
            max_body_bytes: self.scim_max_body_bytes.max(1024),
            max_bulk_operations: self.scim_max_bulk_operations.max(1),
            cursor_timeout: std::time::Duration::from_secs(self.scim_cursor_timeout_seconds.max(1)),
        }
    }
}

/// Limits of the SCIM API.
#[derive(Debug, Clone)]
pub struct ScimOptions {
    pub wait_timeout: std::time::Duration,
    pub max_body_bytes: usize,
    pub max_bulk_operations: usize,
    pub cursor_timeout: std::time::Duration,
}

impl Default for ScimOptions {
    fn default() -> Self {
        ScimOptions {
            wait_timeout: std::time::Duration::from_secs(5),
            max_body_bytes: 1024 * 1024,
            max_bulk_operations: 1000,
            cursor_timeout: std::time::Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Largest JSON payload (and metadata) of one event, in bytes; larger appends are refused.
    #[arg(long, env = "PORTCULLIS_MAX_EVENT_BYTES", default_value_t = 64 * 1024)]
    pub max_event_bytes: usize,
    /// How appends wake readers in other processes: `coalesced` (appends skip the NOTIFY
    /// trigger; one NOTIFY per few ms after commit) or `trigger` (a NOTIFY in every append).
    #[arg(long, env = "PORTCULLIS_NOTIFY_MODE", value_enum, default_value_t = NotifyMode::Coalesced)]
    pub notify_mode: NotifyMode,
}

impl StoreArgs {
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            max_event_bytes: self.max_event_bytes,
            notify: self.notify_mode,
        }
    }
}

/// Everything the app needs to start, whether from the CLI or from a test.
#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    pub pool_size: usize,
    pub store: StoreOptions,
    /// Run the projections in this process (tests may run them elsewhere, or not at all).
    pub run_projections: bool,
    pub runner: RunnerOptions,
    pub thresholds: Thresholds,
    pub scim: ScimOptions,
    pub http: HttpOptions,
    pub admin_token: Option<SecretString>,
    /// SMTP server (its URL may hold a password); None logs mail.
    pub smtp_url: Option<SecretString>,
    pub mail_from: String,
    pub mail: crate::mail::WorkerOptions,
    /// Run the mail worker in this process.
    pub run_mail_worker: bool,
    pub secevents: crate::secevents::DeliveryOptions,
    /// Deliver security events from this process.
    pub run_secevents_worker: bool,
    pub verification: crate::domain::verification::Settings,
    /// Time for expiry, rate limits and backoff (tests pass a ManualClock).
    pub clock: crate::clock::SharedClock,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The clock has no Debug; the secrets print redacted.
        f.debug_struct("Config")
            .field("pool_size", &self.pool_size)
            .field("store", &self.store)
            .field("run_projections", &self.run_projections)
            .field("thresholds", &self.thresholds)
            .field("scim", &self.scim)
            .field("http", &self.http)
            .field("smtp_url", &self.smtp_url)
            .field("mail", &self.mail)
            .field("verification", &self.verification)
            .field("admin_token", &self.admin_token)
            .finish_non_exhaustive()
    }
}

impl Config {
    pub fn new(database_url: impl Into<String>) -> Self {
        Config {
            database_url: database_url.into(),
            pool_size: 16,
            store: StoreOptions::default(),
            run_projections: true,
            runner: RunnerOptions::default(),
            thresholds: Thresholds::default(),
            scim: ScimOptions::default(),
            http: HttpOptions::default(),
            admin_token: None,
            smtp_url: None,
            mail_from: "Portcullis <no-reply@localhost>".into(),
            mail: crate::mail::WorkerOptions::default(),
            run_mail_worker: true,
            secevents: Default::default(),
            run_secevents_worker: true,
            verification: Default::default(),
            clock: std::sync::Arc::new(crate::clock::SystemClock),
        }
    }
}

/// `3600` -> `1 hour`, `90` -> `90 seconds`: how long a code is valid, as mails say it.
pub fn human(seconds: i64) -> String {
    match seconds {
        s if s % 3600 == 0 && s >= 3600 => {
            let h = s / 3600;
            format!("{h} hour{}", if h == 1 { "" } else { "s" })
        }
        s if s % 60 == 0 && s >= 60 => {
            let m = s / 60;
            format!("{m} minute{}", if m == 1 { "" } else { "s" })
        }
        s => format!("{s} seconds"),
    }
}

impl From<&ServeArgs> for Config {
    fn from(a: &ServeArgs) -> Self {
        let p = &a.projections;
        let public_url = a
            .mail
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", a.listen));
        Config {
            database_url: a.db.database_url.clone(),
            pool_size: a.db.pool_size,
            store: a.store.options(),
            run_projections: true,
            runner: RunnerOptions {
                max_attempts: p.max_attempts.max(1),
                ..RunnerOptions::default()
            },
            thresholds: Thresholds {
                lag_events: p.lag_events,
                lag_seconds: p.lag_seconds,
                stall_seconds: p.stall_seconds,
                per_projection: p.projection_lag.clone().unwrap_or_default(),
            },
            scim: a.scim.options(),
            http: a.http.options(),
            smtp_url: a
                .mail
                .smtp_url
                .clone()
                .filter(|u| !u.trim().is_empty())
                .map(SecretString::from),
            mail_from: a.mail.mail_from.clone(),
            mail: crate::mail::WorkerOptions {
                public_url: public_url.clone(),
                max_attempts: a.mail.mail_max_attempts.max(1),
                retry_base: std::time::Duration::from_secs(a.mail.mail_retry_seconds.max(1)),
                valid_for: human(a.mail.verification_ttl_seconds),
                ..Default::default()
            },
            run_mail_worker: true,
            secevents: crate::secevents::DeliveryOptions {
                public_url: public_url.clone(),
                ..Default::default()
            },
            run_secevents_worker: true,
            verification: crate::domain::verification::Settings {
                ttl: chrono::Duration::seconds(a.mail.verification_ttl_seconds.max(60)),
                resend_after: chrono::Duration::seconds(a.mail.verification_resend_seconds.max(0)),
                ..Default::default()
            },
            clock: std::sync::Arc::new(crate::clock::SystemClock),
            admin_token: a
                .admin_token
                .clone()
                .filter(|t| !t.is_empty())
                .map(SecretString::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_projection_lag_parses_into_thresholds() {
        let cli = Cli::try_parse_from([
            "portcullis",
            "serve",
            "--database-url",
            "postgres://x",
            "--projection-lag",
            "users=500:10, groups=20:2.5",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let cfg = Config::from(&*args);
        assert_eq!(
            cfg.thresholds.per_projection,
            vec![
                ("users".to_string(), 500, 10.0),
                ("groups".to_string(), 20, 2.5)
            ]
        );
        assert!(Cli::try_parse_from([
            "portcullis",
            "serve",
            "--database-url",
            "postgres://x",
            "--projection-lag",
            "users=lots"
        ])
        .is_err());
    }

    #[test]
    fn debug_output_never_shows_the_secrets() {
        let mut c = Config::new("postgres://localhost/x");
        c.admin_token = Some("pca_the-admin-token".into());
        c.smtp_url = Some("smtp://user:hunter2@mail.example:587".into());
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("the-admin-token") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("REDACTED"), "{shown}");
    }
}
