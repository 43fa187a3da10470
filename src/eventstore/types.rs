//! The event store's vocabulary: aggregates, versions, events new and stored, unique
//! values, appends and what they return, filters and options.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::position::Position;

/// Identifies one aggregate: its type (`user`, `group`, ...) and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Aggregate {
    pub aggregate_type: String,
    pub id: Uuid,
}

impl Aggregate {
    pub fn new(aggregate_type: impl Into<String>, id: Uuid) -> Self {
        Aggregate {
            aggregate_type: aggregate_type.into(),
            id,
        }
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.aggregate_type, self.id)
    }
}

/// The version a command saw when it validated: the push fails with `Conflict` if the
/// aggregate moved on since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check (the aggregate's writers still take turns).
    Any,
    /// Exactly this version; 0 means the aggregate must not exist yet.
    Exact(u64),
}

impl ExpectedVersion {
    pub const NEW: ExpectedVersion = ExpectedVersion::Exact(0);
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::Exact(0) => f.write_str("a new aggregate"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: String,
    pub payload: Value,
    pub metadata: Value,
}

impl NewEvent {
    pub fn new(event_type: impl Into<String>, payload: Value) -> Self {
        NewEvent {
            event_type: event_type.into(),
            payload,
            metadata: json!({}),
        }
    }

    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }
}

/// A value held unique within an org (a userName, a group's displayName, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UniqueValue {
    pub name: String,
    pub value: String,
    pub case_insensitive: bool,
}

impl UniqueValue {
    pub fn case_insensitive(name: impl Into<String>, value: impl Into<String>) -> Self {
        UniqueValue {
            name: name.into(),
            value: value.into(),
            case_insensitive: true,
        }
    }

    pub fn exact(name: impl Into<String>, value: impl Into<String>) -> Self {
        UniqueValue {
            name: name.into(),
            value: value.into(),
            case_insensitive: false,
        }
    }
}

/// Events for one aggregate, appended atomically with the unique values they claim and release.
#[derive(Debug, Clone)]
pub struct Append {
    pub org_id: Uuid,
    pub aggregate: Aggregate,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    pub claim: Vec<UniqueValue>,
    pub release: Vec<UniqueValue>,
}

impl Append {
    pub fn new(org_id: Uuid, aggregate: Aggregate, expected: ExpectedVersion) -> Self {
        Append {
            org_id,
            aggregate,
            expected,
            events: Vec::new(),
            claim: Vec::new(),
            release: Vec::new(),
        }
    }

    pub fn event(mut self, event: NewEvent) -> Self {
        self.events.push(event);
        self
    }

    pub fn claim(mut self, value: UniqueValue) -> Self {
        self.claim.push(value);
        self
    }

    pub fn release(mut self, value: UniqueValue) -> Self {
        self.release.push(value);
        self
    }
}

/// The positions a push wrote, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub positions: Vec<Position>,
}

impl Pushed {
    /// The position to wait for: every event of the push is at or before it.
    pub fn last(&self) -> Position {
        self.positions.iter().copied().max().unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub position: Position,
    pub org_id: Uuid,
    pub aggregate: Aggregate,
    pub version: u64,
    pub event_type: String,
    pub payload: Value,
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
}

impl StoredEvent {
    /// Reads the columns of SELECT_EVENTS, starting at column `at`.
    pub(super) fn from_row(r: &tokio_postgres::Row, at: usize) -> Self {
        StoredEvent {
            position: Position::from_sql(r.get(at), r.get(at + 1)),
            org_id: r.get(at + 2),
            aggregate: Aggregate {
                aggregate_type: r.get(at + 3),
                id: r.get(at + 4),
            },
            version: r.get::<_, i64>(at + 5).max(0) as u64,
            event_type: r.get(at + 6),
            payload: r.get(at + 7),
            metadata: r.get(at + 8),
            created_at: r.get(at + 9),
        }
    }
}

/// Events read below the horizon, and the horizon itself: every transaction with
/// `tx < horizon` had ended when they were read, so a reader that got fewer events than it
/// asked for has seen everything before `Position { tx: horizon, seq: 0 }`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub events: Vec<StoredEvent>,
    pub horizon: u64,
}

impl Batch {
    /// How far a reader that asked for `limit` events has read: past the horizon when the
    /// batch came back short, else up to its last event.
    pub fn read_up_to(&self, after: Position, limit: i64) -> Position {
        let last = self.events.last().map(|e| e.position).unwrap_or(after);
        if (self.events.len() as i64) < limit {
            last.max(Position::new(self.horizon, 0))
        } else {
            last
        }
    }
}

/// How the service's own appends wake readers in other processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NotifyMode {
    /// The append trigger NOTIFYs in every writing transaction. Simple, but every such commit
    /// takes a cluster-wide lock through its WAL flush.
    Trigger,
    /// Appends opt out of the trigger; this process wakes its own readers at once and sends
    /// one NOTIFY per few milliseconds for everyone else.
    #[default]
    Coalesced,
}

/// Which events `read_after` returns; every part left `None` matches all.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_types: Option<Vec<String>>,
    pub aggregate: Option<Aggregate>,
    pub org_id: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Largest payload (and largest metadata) of one event, in bytes of JSON.
    pub max_event_bytes: usize,
    pub notify: NotifyMode,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_event_bytes: 64 * 1024,
            notify: NotifyMode::default(),
        }
    }
}

/// The columns [`StoredEvent::from_row`] reads.
pub(super) const SELECT_EVENTS: &str =
    "SELECT tx, seq, org_id, aggregate_type, aggregate_id, version, \
     event_type, payload, metadata, created_at FROM eventstore.events";

fn is_word(w: &str) -> bool {
    let mut chars = w.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

/// Mirrors eventstore.valid_event_type: dotted lower-case words, at least two.
pub(crate) fn valid_event_type(t: &str) -> bool {
    t.len() <= 128 && t.split('.').count() >= 2 && t.split('.').all(is_word)
}

/// Mirrors eventstore.valid_aggregate_type: one lower-case word.
pub(crate) fn valid_aggregate_type(t: &str) -> bool {
    t.len() <= 64 && is_word(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_and_aggregate_types_follow_the_sql_rules() {
        for ok in ["user.added", "user.email.verification.requested", "a1.b_2"] {
            assert!(valid_event_type(ok), "{ok}");
        }
        for bad in [
            "",
            "user",
            "User.added",
            "user..added",
            "user.added.",
            ".user",
            "1a.b",
            "a.b c",
            "a.B",
        ] {
            assert!(!valid_event_type(bad), "{bad:?}");
        }
        assert!(!valid_event_type(&format!("a.{}", "b".repeat(127))));
        assert!(valid_aggregate_type("user") && valid_aggregate_type("api_token"));
        for bad in ["", "User", "user.x", "1user", "us er"] {
            assert!(!valid_aggregate_type(bad), "{bad:?}");
        }
    }

    #[test]
    fn pushed_last_is_the_highest_position() {
        let p = Pushed {
            positions: vec![
                Position::new(5, 2),
                Position::new(5, 9),
                Position::new(4, 99),
            ],
        };
        assert_eq!(p.last(), Position::new(5, 9));
    }
}
