//! Organizations: the tenants. Every other aggregate belongs to one.

use serde_json::json;
use uuid::Uuid;

use super::{DomainError, Written};
use crate::eventstore::{self, Aggregate, Append, EventStore, ExpectedVersion, NewEvent};

pub const AGGREGATE: &str = "org";
pub const ADDED: &str = "org.added";

pub fn aggregate(id: Uuid) -> Aggregate {
    Aggregate::new(AGGREGATE, id)
}

pub async fn create(store: &EventStore, name: &str) -> Result<Written, DomainError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(DomainError::Invalid {
            field: "name",
            reason: "an organization needs a name of 1 to 200 characters".into(),
        });
    }
    let id = Uuid::new_v4();
    let pushed = store
        .push(&[Append::new(id, aggregate(id), ExpectedVersion::NEW)
            .event(NewEvent::new(ADDED, json!({ "name": name })))])
        .await?;
    Ok(Written {
        id,
        position: pushed.last(),
    })
}

/// Whether the organization exists, from its events (not a read model: no waiting).
pub async fn exists(store: &EventStore, id: Uuid) -> Result<bool, DomainError> {
    let client = store.pool().get().await?;
    Ok(eventstore::load_version(&client, &aggregate(id)).await? > 0)
}

/// Every organization, oldest first, from the event log: (id, name).
pub async fn list(store: &EventStore) -> Result<Vec<(Uuid, String)>, DomainError> {
    let client = store.pool().get().await?;
    let rows = client
        .query(
            "SELECT aggregate_id, payload->>'name' FROM eventstore.events \
             WHERE event_type = $1 ORDER BY tx, seq",
            &[&ADDED],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
