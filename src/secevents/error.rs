use uuid::Uuid;

/// What can go wrong registering receivers, keeping keys and delivering SETs.
#[derive(Debug, thiserror::Error)]
pub enum SecEventsError {
    /// The registration does not describe a receiver the service can serve.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    UnknownUri(#[from] super::uri::UnknownUri),
    #[error("no receiver {0} in this organization")]
    NoSuchReceiver(Uuid),
    #[error("no organization {0}")]
    NoSuchOrg(Uuid),
    #[error("no retired signing key {0:?} in this organization")]
    NoSuchKey(String),
    #[error("the active signing key cannot be removed; rotate first")]
    ActiveKey,
    #[error("organization {0} has no signing key")]
    NoSigningKey(Uuid),
    #[error("cannot generate a signing key")]
    KeyGeneration,
    #[error("cannot sign a SET")]
    Sign(#[from] jsonwebtoken::errors::Error),
    #[error("cannot read the event log")]
    Store(#[from] crate::eventstore::StoreError),
    #[error("database pool")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database")]
    Db(#[from] tokio_postgres::Error),
}

impl SecEventsError {
    /// Whether the database (not the input) is at fault: the surfaces answer 503.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            SecEventsError::Store(_) | SecEventsError::Pool(_) | SecEventsError::Db(_)
        )
    }
}
