//! The identity domain as commands and events (docs/ARCHITECTURE.md §1): each command loads what it
//! needs, validates, and pushes events with the expected version.

pub mod group;
pub mod org;
pub mod provenance;
pub mod token;
pub mod user;
pub mod verification;

use serde_json::{Map, Value};

use crate::eventstore::{self, Aggregate, Append, EventStore, Position, StoreError, StoredEvent};

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The caller's If-Match named a version the aggregate is no longer at.
    #[error("{aggregate} is at version {actual}, not {expected}")]
    VersionMismatch {
        aggregate: Aggregate,
        expected: u64,
        actual: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database pool")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database")]
    Db(#[from] tokio_postgres::Error),
    #[error("the operating system's random number generator failed")]
    Random(#[source] getrandom::Error),
    #[error("hashing a secret failed")]
    Hash(#[from] HashError),
    /// A bounded resource is at its limit (what it is): the caller may try again soon.
    #[error("{0} is at its limit")]
    Busy(&'static str),
}

/// Password hashes computed at once at most: each takes argon2's 19 MiB and a core for tens
/// of milliseconds, so a burst of password writes cannot exhaust memory or starve the rest.
const HASHES_AT_ONCE: usize = 4;
/// How long a hash waits for its turn before the request is refused (503).
const HASH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn hashing() -> &'static tokio::sync::Semaphore {
    static HASHING: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    HASHING.get_or_init(|| tokio::sync::Semaphore::new(HASHES_AT_ONCE))
}

/// Runs a password hash off the async threads, at most [`HASHES_AT_ONCE`] at a time.
pub(crate) async fn bounded_hash<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DomainError> + Send + 'static,
) -> Result<T, DomainError> {
    with_permit(hashing(), HASH_WAIT, f).await
}

async fn with_permit<T: Send + 'static>(
    permits: &tokio::sync::Semaphore,
    wait: std::time::Duration,
    f: impl FnOnce() -> Result<T, DomainError> + Send + 'static,
) -> Result<T, DomainError> {
    let _permit = tokio::time::timeout(wait, permits.acquire())
        .await
        .map_err(|_| DomainError::Busy("password hashing"))?
        .map_err(|_| DomainError::Busy("password hashing"))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DomainError::Hash(HashError::Task(e)))?
}

/// Why hashing a password or code failed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// password-hash's error (it is no `std::error::Error`, so it is shown, not chained).
    #[error("argon2: {0}")]
    Argon2(argon2::password_hash::Error),
    #[error("the hashing task did not finish")]
    Task(#[from] tokio::task::JoinError),
}

/// What a command wrote: the id it created or changed and the position to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub id: uuid::Uuid,
    pub position: Position,
}

/// A document of attributes (canonical SCIM names) as the domain keeps it.
pub type Doc = Map<String, Value>;

/// How often a command that lost a race reloads and decides again. From the second attempt
/// on it holds the aggregate's lock while it loads, so only a writer that skips the lock
/// (none in this service) can make it lose again.
const ATTEMPTS: usize = 4;

/// Loads the aggregate, lets `decide` validate and say what to append (None: nothing to
/// do), pushes with the expected version `decide` put in the append, and on `Conflict`
/// reloads and decides again. Returns the position to wait for: the push's, or for a
/// no-op the aggregate's last event.
pub(crate) async fn write<E>(
    store: &EventStore,
    aggregate: &Aggregate,
    decide: impl FnMut(&[StoredEvent]) -> Result<Option<Append>, E>,
) -> Result<Position, E>
where
    E: From<DomainError>,
{
    write_with(store, aggregate, None, decide).await
}

/// [`write`] for an aggregate whose history is snapshotted with `snapshot`.
pub(crate) async fn write_with<E>(
    store: &EventStore,
    aggregate: &Aggregate,
    snapshot: Option<Snapshotter>,
    mut decide: impl FnMut(&[StoredEvent]) -> Result<Option<Append>, E>,
) -> Result<Position, E>
where
    E: From<DomainError>,
{
    let last = |events: &[StoredEvent]| events.last().map(|e| e.position).unwrap_or_default();
    // Optimistic: most commands meet no competition.
    let events = {
        let client = store.pool().get().await.map_err(DomainError::from)?;
        load_events(&client, aggregate, snapshot).await?
    };
    let Some(append) = decide(&events)? else {
        return Ok(last(&events));
    };
    match store.push(&[append]).await {
        Ok(pushed) => return Ok(pushed.last()),
        Err(StoreError::Conflict { .. }) => {}
        Err(e) => return Err(DomainError::from(e).into()),
    }
    let mut attempt = 1;
    loop {
        attempt += 1;
        let mut client = store.pool().get().await.map_err(DomainError::from)?;
        let tx = client.transaction().await.map_err(DomainError::from)?;
        eventstore::lock_aggregate(&tx, aggregate)
            .await
            .map_err(DomainError::from)?;
        let events = load_events(&tx, aggregate, snapshot).await?;
        let Some(append) = decide(&events)? else {
            return Ok(last(&events));
        };
        match store.push_in(&tx, &[append]).await {
            Ok(pushed) => {
                tx.commit().await.map_err(DomainError::from)?;
                store.committed(&pushed);
                return Ok(pushed.last());
            }
            Err(StoreError::Conflict { .. }) if attempt < ATTEMPTS => continue,
            Err(e) => return Err(DomainError::from(e).into()),
        }
    }
}

/// A required name (userName, a group's displayName): present, at most `max` characters,
/// no control characters.
pub(crate) fn required_name(
    doc: &Doc,
    field: &'static str,
    max: usize,
) -> Result<String, DomainError> {
    let name = doc.get(field).and_then(Value::as_str).unwrap_or_default();
    if name.trim().is_empty() {
        return Err(DomainError::Invalid {
            field,
            reason: format!("{field} is required"),
        });
    }
    if name.chars().count() > max || name.chars().any(char::is_control) {
        return Err(DomainError::Invalid {
            field,
            reason: format!("{field} has at most {max} characters and no control characters"),
        });
    }
    Ok(name.to_string())
}

/// The most bytes of a value the read models index (a B-tree entry holds about 2.7 kB; a
/// value past it would be stored in the log and then fail in every projection).
pub const MAX_INDEXED_BYTES: usize = 1024;

/// Refuses a document the read models could not hold, before anything is appended: a NUL
/// character anywhere (PostgreSQL text cannot carry it), and indexed values over
/// [`MAX_INDEXED_BYTES`] (`indexed` names the top-level string attributes; `emails[].value`
/// always counts).
pub(crate) fn check_storable(doc: &Doc, indexed: &[&'static str]) -> Result<(), DomainError> {
    fn has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(has_nul),
            Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    if doc.iter().any(|(k, v)| k.contains('\0') || has_nul(v)) {
        return Err(DomainError::Invalid {
            field: "attributes",
            reason: "text may not contain the NUL character (U+0000)".into(),
        });
    }
    let too_long = |field: &'static str| DomainError::Invalid {
        field,
        reason: format!("{field} has at most {MAX_INDEXED_BYTES} bytes"),
    };
    for field in indexed {
        if doc.get(*field).and_then(Value::as_str).map(str::len) > Some(MAX_INDEXED_BYTES) {
            return Err(too_long(field));
        }
    }
    let emails = doc.get("emails").and_then(Value::as_array);
    let values = emails.into_iter().flatten().filter_map(|e| e.get("value"));
    if values
        .filter_map(Value::as_str)
        .any(|v| v.len() > MAX_INDEXED_BYTES)
    {
        return Err(too_long("emails.value"));
    }
    Ok(())
}

/// Events after a snapshot at which a command writes a new one.
const SNAPSHOT_AFTER: usize = 200;

/// How an aggregate type whose histories grow long is snapshotted: its events folded into
/// the JSON state a snapshot keeps (None: nothing to keep). The type's module passes it.
pub(crate) type Snapshotter = fn(&[StoredEvent]) -> Option<Value>;

/// An aggregate's history as its fold needs it: every event, or for snapshotted types the
/// snapshot (a `<type>.snapshot` pseudo-event) and the events after it. Writes a fresh
/// snapshot when the tail has grown long.
pub(crate) async fn load_events<C: deadpool_postgres::GenericClient>(
    client: &C,
    aggregate: &Aggregate,
    snapshot: Option<Snapshotter>,
) -> Result<Vec<StoredEvent>, DomainError> {
    let Some(snap) = snapshot else {
        return Ok(eventstore::load(client, aggregate).await?);
    };
    let base = eventstore::snapshot(client, aggregate).await?;
    let after = base.as_ref().map(|b| b.version).unwrap_or(0);
    let mut events: Vec<StoredEvent> = base.into_iter().collect();
    events.extend(eventstore::load_after(client, aggregate, after).await?);
    if events.len() > SNAPSHOT_AFTER {
        if let (Some(state), Some(last)) = (snap(&events), events.last()) {
            // Only a cache: a failure here costs the next command some reading, nothing more.
            if let Err(e) = eventstore::save_snapshot(client, last, &state).await {
                tracing::warn!(aggregate = %aggregate, error = %crate::error_chain(&e), "could not save a snapshot");
            }
        }
    }
    Ok(events)
}

/// Checks an If-Match version against the aggregate's current one.
pub(crate) fn check_version(
    aggregate: &Aggregate,
    if_match: Option<u64>,
    actual: u64,
) -> Result<(), DomainError> {
    match if_match {
        Some(expected) if expected != actual => Err(DomainError::VersionMismatch {
            aggregate: aggregate.clone(),
            expected,
            actual,
        }),
        _ => Ok(()),
    }
}

/// The top-level attributes that differ: (set, unset).
pub(crate) fn diff(old: &Doc, new: &Doc) -> (Doc, Vec<String>) {
    let set: Doc = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let unset = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    (set, unset)
}

/// Applies a `*.changed` payload ({"set": {...}, "unset": [...]}) to a document.
pub(crate) fn apply_change(doc: &mut Doc, payload: &Value) {
    if let Some(set) = payload.get("set").and_then(Value::as_object) {
        for (k, v) in set {
            doc.insert(k.clone(), v.clone());
        }
    }
    if let Some(unset) = payload.get("unset").and_then(Value::as_array) {
        for k in unset.iter().filter_map(Value::as_str) {
            doc.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashing_past_its_bound_is_refused_as_busy() {
        let permits = tokio::sync::Semaphore::new(1);
        let held = permits.acquire().await.unwrap();
        let wait = std::time::Duration::from_millis(20);
        let refused = with_permit(&permits, wait, || Ok(())).await;
        assert!(matches!(refused, Err(DomainError::Busy(_))), "{refused:?}");
        drop(held);
        assert_eq!(with_permit(&permits, wait, || Ok(7)).await.unwrap(), 7);
    }
}
