//! The commands for security-event receivers and signing keys.

use clap::Subcommand;
use uuid::Uuid;

use super::db::DbArgs;
use crate::secevents::receivers::Delivery;

#[derive(Debug, Subcommand)]
pub enum ReceiversCommand {
    /// Register a receiver; it gets the changes committed from now on. Prints it as JSON;
    /// a poll receiver's token is printed once, on standard error.
    Add {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        org: Uuid,
        /// A name for people, e.g. the system that receives.
        #[arg(long)]
        name: String,
        /// push: the service POSTs each SET to --endpoint (RFC 8935). poll: the receiver
        /// fetches them from the poll URL with its token (RFC 8936).
        #[arg(long, value_enum)]
        delivery: Delivery,
        /// The push endpoint (https://...).
        #[arg(long)]
        endpoint: Option<String>,
        /// Event URIs it wants, comma-separated, full or short: e.g.
        /// prov:create:full,prov:patch:notice,prov:delete,prov:deactivate.
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<String>,
        /// The `aud` claim (default: the endpoint, or the poll URL).
        #[arg(long)]
        audience: Option<String>,
        /// The Authorization header value every push carries, e.g. `Bearer <token the
        /// receiver issued>` (write-only; from the environment, so it stays out of shell
        /// history).
        #[arg(long, env = "PORTCULLIS_PUSH_AUTHORIZATION", hide_env_values = true)]
        authorization: Option<String>,
        /// A group of the organization: the feed is its user members (feed:add and
        /// feed:remove as they join and leave; provisioning events for them only).
        #[arg(long)]
        group: Option<Uuid>,
        /// The service's public URL, for `iss` and the poll URL
        /// (as the service has it in PORTCULLIS_PUBLIC_URL).
        #[arg(
            long,
            env = "PORTCULLIS_PUBLIC_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        public_url: String,
    },
    /// List an organization's receivers with their health (lag, pending, failures).
    List {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        org: Uuid,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a receiver and the SETs waiting for it.
    Remove {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        org: Uuid,
        id: Uuid,
    },
    /// Send the SETs a receiver refused again, and push now instead of after the backoff.
    Retry {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        org: Uuid,
        id: Uuid,
    },
}

#[derive(Debug, Subcommand)]
pub enum SigningKeysCommand {
    /// List an organization's keys (id, active or retired).
    List {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        org: Uuid,
    },
    /// Make a new active key; the old one signs nothing more and stays published until
    /// removed. Prints the new key id.
    Rotate {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        org: Uuid,
    },
    /// Unpublish a retired key: SETs it signed no longer verify.
    Remove {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        org: Uuid,
        kid: String,
    },
}
