//! Configuration: command-line flags, each with an environment variable (DESIGN.md §7).
//! The README's configuration table lists the same variables.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

use crate::eventstore::{NotifyMode, StoreOptions};

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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations, then serve HTTP until Ctrl-C or SIGTERM.
    Serve(ServeArgs),
    /// Apply pending database migrations and say which ones were applied (idempotent).
    Migrate(DbArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL connection URL, e.g. postgres://user:password@localhost:5432/portcullis.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Connections in the pool.
    #[arg(long, env = "PORTCULLIS_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,
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
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub pool_size: usize,
    pub store: StoreOptions,
}

impl Config {
    pub fn new(database_url: impl Into<String>) -> Self {
        Config {
            database_url: database_url.into(),
            pool_size: 16,
            store: StoreOptions::default(),
        }
    }
}

impl From<&ServeArgs> for Config {
    fn from(a: &ServeArgs) -> Self {
        Config {
            database_url: a.db.database_url.clone(),
            pool_size: a.db.pool_size,
            store: a.store.options(),
        }
    }
}
