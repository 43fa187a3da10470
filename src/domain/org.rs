//! Organizations: the tenants. Every other aggregate belongs to one.

use serde_json::json;
use uuid::Uuid;

use super::{DomainError, Written};
use crate::eventstore::{self, Aggregate, Append, EventStore, ExpectedVersion, NewEvent};

pub const AGGREGATE: &str = "org";
pub const ADDED: &str = "org.added";
pub const SETTINGS_CHANGED: &str = "org.settings.changed";

/// An organization's settings, from its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Settings {
    /// A verified address that SCIM changes gets a new verification code at once.
    pub verify_email_on_change: bool,
}

/// The organization's settings (defaults when it never changed them).
pub async fn settings(store: &EventStore, id: Uuid) -> Result<Settings, DomainError> {
    let client = store.pool().get().await?;
    let mut s = Settings::default();
    for e in eventstore::load(&client, &aggregate(id)).await? {
        if e.event_type == SETTINGS_CHANGED {
            if let Some(v) = e.payload["verify_email_on_change"].as_bool() {
                s.verify_email_on_change = v;
            }
        }
    }
    Ok(s)
}

/// Changes the organization's settings.
pub async fn set_verify_email_on_change(
    store: &EventStore,
    id: Uuid,
    on: bool,
) -> Result<super::Written, DomainError> {
    let agg = aggregate(id);
    let position = super::write(store, &agg, |events| -> Result<_, DomainError> {
        let last = events
            .last()
            .ok_or_else(|| DomainError::NotFound(format!("organization {id}")))?;
        Ok(Some(
            Append::new(id, agg.clone(), ExpectedVersion::Exact(last.version)).event(
                NewEvent::new(SETTINGS_CHANGED, json!({ "verify_email_on_change": on })),
            ),
        ))
    })
    .await?;
    Ok(super::Written { id, position })
}

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
    Ok(eventstore::load_of_type(&client, ADDED)
        .await?
        .into_iter()
        .map(|e| {
            let name = e.payload["name"].as_str().unwrap_or_default().to_string();
            (e.aggregate.id, name)
        })
        .collect())
}
