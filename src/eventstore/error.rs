use super::types::{Aggregate, ExpectedVersion};

/// What can go wrong when appending to or reading from the event store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer moved the aggregate on since the command loaded it.
    #[error("version conflict on {aggregate}: expected {expected}, found version {actual}")]
    Conflict {
        aggregate: Aggregate,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// A unique value (a userName, ...) is held by another aggregate.
    #[error("{constraint} {value:?} is already taken")]
    AlreadyExists { constraint: String, value: String },
    #[error("event {event_type} is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        event_type: String,
        size: usize,
        limit: usize,
    },
    #[error("invalid append: {0}")]
    Invalid(String),
    #[error("database pool")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database")]
    Db(#[from] tokio_postgres::Error),
}

pub(crate) const SQLSTATE_CONFLICT: &str = "PC001";
pub(crate) const SQLSTATE_TAKEN: &str = "PC002";
pub(crate) const SQLSTATE_INVALID: &str = "PC003";

impl StoreError {
    /// Turns the SQLSTATEs that eventstore.push raises into typed errors.
    pub(crate) fn from_db(e: tokio_postgres::Error) -> StoreError {
        let Some(db) = e.as_db_error() else {
            return StoreError::Db(e);
        };
        let detail: Option<serde_json::Value> =
            db.detail().and_then(|d| serde_json::from_str(d).ok());
        let field = |k: &str| detail.as_ref().and_then(|d| d.get(k)).cloned();
        match db.code().code() {
            SQLSTATE_CONFLICT => {
                let aggregate = Aggregate {
                    aggregate_type: field("aggregate_type")
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    id: field("aggregate_id")
                        .and_then(|v| v.as_str().and_then(|s| s.parse().ok()))
                        .unwrap_or_default(),
                };
                let expected = field("expected").and_then(|v| v.as_u64()).unwrap_or(0);
                let actual = field("actual").and_then(|v| v.as_u64()).unwrap_or(0);
                StoreError::Conflict {
                    aggregate,
                    expected: ExpectedVersion::Exact(expected),
                    actual,
                }
            }
            SQLSTATE_TAKEN => StoreError::AlreadyExists {
                constraint: field("constraint")
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                value: field("value")
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            },
            SQLSTATE_INVALID => StoreError::Invalid(db.message().to_string()),
            // A creation that found the aggregate already there. The version it has is looked
            // up afterwards (the transaction is aborted); see EventStore::push_in.
            "23505" if db.constraint() == Some("events_aggregate_version_key") => {
                match db.detail().and_then(parse_version_key) {
                    Some((aggregate, version)) => StoreError::Conflict {
                        aggregate,
                        expected: ExpectedVersion::Exact(version.saturating_sub(1)),
                        actual: version,
                    },
                    None => StoreError::Db(e),
                }
            }
            // The table's CHECK constraints guard writers that skip our validation.
            "23514" => StoreError::Invalid(db.message().to_string()),
            _ => StoreError::Db(e),
        }
    }
}

/// "Key (aggregate_type, aggregate_id, version)=(user, 6f1c..., 1) already exists."
fn parse_version_key(detail: &str) -> Option<(Aggregate, u64)> {
    let values = detail.split_once(")=(")?.1.split_once(')')?.0;
    let mut parts = values.split(", ");
    let aggregate_type = parts.next()?.to_string();
    let id = parts.next()?.parse().ok()?;
    let version = parts.next()?.parse().ok()?;
    Some((Aggregate { aggregate_type, id }, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_unique_violation_detail() {
        let (agg, v) = parse_version_key(
            "Key (aggregate_type, aggregate_id, version)=(user, 6f1c2a3e-0000-4000-8000-000000000001, 1) already exists.",
        )
        .unwrap();
        assert_eq!(agg.aggregate_type, "user");
        assert_eq!(agg.id.to_string(), "6f1c2a3e-0000-4000-8000-000000000001");
        assert_eq!(v, 1);
        assert!(parse_version_key("garbage").is_none());
    }
}
