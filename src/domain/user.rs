//! Users: a document of SCIM attributes (canonical names, the enterprise extension under its
//! URN), a userName unique per org case-insensitively, and a write-only argon2 password hash.

use argon2::password_hash::{PasswordHasher, SaltString};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{apply_change, check_version, diff, verification, write, Doc, DomainError, Written};
use crate::eventstore::{
    Aggregate, Append, EventStore, ExpectedVersion, NewEvent, StoredEvent, UniqueValue,
};

pub const AGGREGATE: &str = "user";
pub const ADDED: &str = "user.added";
pub const CHANGED: &str = "user.changed";
pub const PASSWORD_CHANGED: &str = "user.password.changed";
pub const REMOVED: &str = "user.removed";
/// The unique constraint on userName (per org, case-insensitive).
pub const USER_NAME: &str = "user.user_name";

const MAX_USER_NAME: usize = 256;

pub fn aggregate(id: Uuid) -> Aggregate {
    Aggregate::new(AGGREGATE, id)
}

/// A user as its events leave it.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub org_id: Uuid,
    pub version: u64,
    pub doc: Doc,
}

impl User {
    pub fn user_name(&self) -> &str {
        self.doc
            .get("userName")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// Folds a user's events; None when it does not exist or was removed.
pub fn fold(events: &[StoredEvent]) -> Option<User> {
    let mut user: Option<User> = None;
    for e in events {
        match e.event_type.as_str() {
            ADDED => {
                user = Some(User {
                    org_id: e.org_id,
                    version: e.version,
                    doc: e.payload["attributes"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                })
            }
            CHANGED => {
                if let Some(u) = &mut user {
                    apply_change(&mut u.doc, &e.payload);
                }
            }
            REMOVED => user = None,
            _ => {}
        }
        if let Some(u) = &mut user {
            u.version = e.version;
        }
    }
    user
}

fn validate(doc: &Doc) -> Result<String, DomainError> {
    super::check_storable(doc, &["externalId", "displayName"])?;
    super::required_name(doc, "userName", MAX_USER_NAME)
}

/// Hashes a password with argon2id (the crate's defaults), off the async threads.
pub async fn hash_password(password: String) -> Result<String, DomainError> {
    if password.is_empty() || password.len() > 1024 {
        return Err(DomainError::Invalid {
            field: "password",
            reason: "a password has 1 to 1024 bytes".into(),
        });
    }
    super::bounded_hash(move || {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(DomainError::Random)?;
        let salt = SaltString::encode_b64(&bytes)
            .map_err(|e| DomainError::Hash(super::HashError::Argon2(e)))?;
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| DomainError::Hash(super::HashError::Argon2(e)))
    })
    .await
}

fn password_event(hash: String) -> NewEvent {
    NewEvent::new(PASSWORD_CHANGED, json!({ "hash": hash }))
}

/// Creates a user. `password_hash` comes from [`hash_password`].
pub async fn create(
    store: &EventStore,
    org_id: Uuid,
    doc: Doc,
    password_hash: Option<String>,
) -> Result<Written, DomainError> {
    let name = validate(&doc)?;
    let id = Uuid::new_v4();
    let mut append = Append::new(org_id, aggregate(id), ExpectedVersion::NEW)
        .claim(UniqueValue::case_insensitive(USER_NAME, name))
        .event(NewEvent::new(ADDED, json!({ "attributes": doc })));
    if let Some(h) = password_hash {
        append = append.event(password_event(h));
    }
    let pushed = store.push(&[append]).await?;
    Ok(Written {
        id,
        position: pushed.last(),
    })
}

/// Loads a user of `org_id` from its events (None if missing, removed or another org's).
pub async fn load(store: &EventStore, org_id: Uuid, id: Uuid) -> Result<Option<User>, DomainError> {
    let client = store.pool().get().await?;
    let events = crate::eventstore::load(&client, &aggregate(id)).await?;
    Ok(fold(&events).filter(|u| u.org_id == org_id))
}

/// What [`update`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Updated {
    pub written: Written,
    /// The address changed from one the user had verified to another: it may need a code.
    pub verified_address_changed: bool,
}

/// Changes a user: `change` gets the current attributes and returns the new ones. Checks
/// If-Match, claims a new userName and releases the old, records a change of address
/// (which resets its verification), and writes nothing when nothing changed.
pub async fn update<E: From<DomainError>>(
    store: &EventStore,
    org_id: Uuid,
    id: Uuid,
    if_match: Option<u64>,
    password_hash: Option<String>,
    mut change: impl FnMut(&Doc) -> Result<Doc, E>,
) -> Result<Updated, E> {
    let agg = aggregate(id);
    let mut verified_address_changed = false;
    let position = write(store, &agg, |events| -> Result<_, E> {
        let user = fold(events)
            .filter(|u| u.org_id == org_id)
            .ok_or_else(|| DomainError::NotFound(format!("user {id}")))?;
        check_version(&agg, if_match, user.version)?;
        let new = change(&user.doc)?;
        let name = validate(&new)?;
        let (set, unset) = diff(&user.doc, &new);
        let mut append = Append::new(org_id, agg.clone(), ExpectedVersion::Exact(user.version));
        if !set.is_empty() || !unset.is_empty() {
            append = append.event(NewEvent::new(
                CHANGED,
                json!({ "set": set, "unset": unset }),
            ));
        }
        verified_address_changed = false;
        if let Some((address, was_verified)) = verification::address_change(events, &user.doc, &new)
        {
            append = append.event(verification::email_changed(address.as_deref()));
            verified_address_changed = was_verified && address.is_some();
        }
        if let Some(h) = &password_hash {
            append = append.event(password_event(h.clone()));
        }
        if append.events.is_empty() {
            return Ok(None);
        }
        if name != user.user_name() {
            // Case-only renames keep the claim (the same value case-insensitively).
            if name.to_lowercase() != user.user_name().to_lowercase() {
                append = append
                    .release(UniqueValue::case_insensitive(USER_NAME, user.user_name()))
                    .claim(UniqueValue::case_insensitive(USER_NAME, name));
            }
        }
        Ok(Some(append))
    })
    .await?;
    Ok(Updated {
        written: Written { id, position },
        verified_address_changed,
    })
}

/// Deletes a user and frees its userName.
pub async fn remove(
    store: &EventStore,
    org_id: Uuid,
    id: Uuid,
    if_match: Option<u64>,
) -> Result<Written, DomainError> {
    let agg = aggregate(id);
    let position = write(store, &agg, |events| -> Result<_, DomainError> {
        let user = fold(events)
            .filter(|u| u.org_id == org_id)
            .ok_or_else(|| DomainError::NotFound(format!("user {id}")))?;
        check_version(&agg, if_match, user.version)?;
        Ok(Some(
            Append::new(org_id, agg.clone(), ExpectedVersion::Exact(user.version))
                .release(UniqueValue::case_insensitive(USER_NAME, user.user_name()))
                .event(NewEvent::new(REMOVED, json!({}))),
        ))
    })
    .await?;
    Ok(Written { id, position })
}
