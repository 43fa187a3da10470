//! Where the database is: the flags every command that reads or writes it takes.

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL connection URL, e.g. postgres://user:password@localhost:5432/portcullis.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Connections in the pool.
    #[arg(long, env = "PORTCULLIS_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,
}
