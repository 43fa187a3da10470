//! The identity domain as commands and events (DESIGN.md §6): each command loads what it
//! needs, validates, and pushes events with the expected version.

pub mod org;
pub mod token;

use crate::eventstore::{Position, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

/// What a command wrote: the id it created or changed and the position to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub id: uuid::Uuid,
    pub position: Position,
}
