//! RFC 9865 cursors: where a cursor-paged list stopped, signed so a client can neither forge
//! nor alter one, and bound to the org, the resource type and the query that issued it.
//!
//! A cursor is base64url of `payload || tag`, the tag an HMAC-SHA256 (first 16 bytes) of the
//! payload under the deployment's signing key (`crate::signing`). The payload holds the keyset position (the sort value, `created_at` and id of
//! the row next to the page's edge), the direction, the issue time and a hash of the query.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::signing::SigningKey;
use uuid::Uuid;

use super::error::ScimError;
use super::schema::Kind;

const VERSION: u8 = 1;
/// Far above any real cursor (sort values are bounded by the attribute limits), so a client
/// cannot make the server decode megabytes.
const MAX_ENCODED: usize = 4096;

/// Which way a cursor pages from its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The rows after the position (a `nextCursor`).
    After,
    /// The rows before the position (a `previousCursor`).
    Before,
}

/// A keyset position: the order's values at one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The `sortBy` value as text (None: no sortBy, or the row's value is null).
    pub sort: Option<String>,
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// A decoded cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub direction: Direction,
    pub at: Position,
}

/// What a cursor is bound to: it is refused anywhere else.
pub struct Binding<'a> {
    pub org: Uuid,
    pub kind: Kind,
    /// The query's shape (filter and sort), canonical.
    pub query: &'a str,
}

impl Binding<'_> {
    fn digest(&self) -> [u8; 8] {
        let mut h = Sha256::new();
        h.update(self.org.as_bytes());
        h.update([self.kind as u8]);
        h.update(self.query.as_bytes());
        let d = h.finalize();
        let mut out = [0u8; 8];
        out.copy_from_slice(&d[..8]);
        out
    }
}

fn invalid(detail: &str) -> ScimError {
    ScimError::bad(
        "invalidCursor",
        format!(
            "{detail}; send an empty cursor for the first page, then the nextCursor or \
             previousCursor of the previous response, with the same filter and sort"
        ),
    )
}

pub fn encode(key: &SigningKey, b: &Binding, c: &Cursor, now: DateTime<Utc>) -> String {
    let mut p = Vec::with_capacity(96);
    p.push(VERSION);
    p.push(match c.direction {
        Direction::After => 0,
        Direction::Before => 1,
    });
    p.extend_from_slice(&b.digest());
    p.extend_from_slice(&now.timestamp().to_be_bytes());
    p.extend_from_slice(&c.at.created_at.timestamp_micros().to_be_bytes());
    p.extend_from_slice(c.at.id.as_bytes());
    if let Some(s) = &c.at.sort {
        p.push(1);
        p.extend_from_slice(s.as_bytes());
    } else {
        p.push(0);
    }
    key.seal(&p)
}

/// Reads a cursor back: invalidCursor if it was not issued here for this query, expiredCursor
/// if it is older than `timeout`.
pub fn decode(
    key: &SigningKey,
    b: &Binding,
    text: &str,
    now: DateTime<Utc>,
    timeout: std::time::Duration,
) -> Result<Cursor, ScimError> {
    const FIXED: usize = 1 + 1 + 8 + 8 + 8 + 16 + 1;
    let p = key
        .open(text, MAX_ENCODED)
        .filter(|p| p.len() >= FIXED && p[0] == VERSION)
        .ok_or_else(|| invalid("the cursor is not one this server issued"))?;
    if p[2..10] != b.digest() {
        return Err(invalid(
            "the cursor belongs to another query (filter, sortBy, sortOrder or resource type)",
        ));
    }
    let int = |at: usize| i64::from_be_bytes(p[at..at + 8].try_into().expect("8 bytes"));
    let age = now.timestamp().saturating_sub(int(10));
    if age > timeout.as_secs() as i64 {
        return Err(ScimError::bad(
            "expiredCursor",
            format!(
                "the cursor expired: it was issued {age} s ago and cursors last {} s \
                 (cursorTimeout); start again with an empty cursor",
                timeout.as_secs()
            ),
        ));
    }
    let created_at = DateTime::from_timestamp_micros(int(18))
        .ok_or_else(|| invalid("the cursor is not one this server issued"))?;
    let id = Uuid::from_slice(&p[26..42]).expect("16 bytes");
    let sort = match p[42] {
        0 => None,
        _ => Some(
            String::from_utf8(p[43..].to_vec())
                .map_err(|_| invalid("the cursor is not one this server issued"))?,
        ),
    };
    let direction = match p[1] {
        0 => Direction::After,
        _ => Direction::Before,
    };
    Ok(Cursor {
        direction,
        at: Position {
            sort,
            created_at,
            id,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use std::time::Duration;

    fn binding(org: Uuid) -> Binding<'static> {
        Binding {
            org,
            kind: Kind::User,
            query: "userName sw \"a\"",
        }
    }

    fn cursor() -> Cursor {
        Cursor {
            direction: Direction::After,
            at: Position {
                sort: Some("alice".into()),
                created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
                id: Uuid::new_v4(),
            },
        }
    }

    fn scim_type(e: ScimError) -> &'static str {
        e.scim_type().unwrap()
    }

    #[test]
    fn round_trips_and_refuses_any_change() {
        let key = SigningKey::new(b"k".repeat(32));
        let org = Uuid::new_v4();
        let now = Utc::now();
        let hour = Duration::from_secs(3600);
        let c = cursor();
        let text = encode(&key, &binding(org), &c, now);
        assert_eq!(decode(&key, &binding(org), &text, now, hour).unwrap(), c);

        // Every single-byte change is caught by the tag.
        let raw = URL_SAFE_NO_PAD.decode(&text).unwrap();
        for i in 0..raw.len() {
            let mut t = raw.clone();
            t[i] ^= 1;
            let e = decode(&key, &binding(org), &URL_SAFE_NO_PAD.encode(t), now, hour);
            assert_eq!(scim_type(e.unwrap_err()), "invalidCursor", "byte {i}");
        }
        for bad in ["", "x", "!!!!", &"A".repeat(5000)] {
            let e = decode(&key, &binding(org), bad, now, hour).unwrap_err();
            assert_eq!(scim_type(e), "invalidCursor");
        }
        // Another key, org, type or query: invalid.
        let other = SigningKey::new(b"j".repeat(32));
        assert!(decode(&other, &binding(org), &text, now, hour).is_err());
        let e = decode(&key, &binding(Uuid::new_v4()), &text, now, hour).unwrap_err();
        assert_eq!(scim_type(e), "invalidCursor");
        let groups = Binding {
            kind: Kind::Group,
            ..binding(org)
        };
        assert!(decode(&key, &groups, &text, now, hour).is_err());
        let query = Binding {
            query: "userName sw \"b\"",
            ..binding(org)
        };
        assert!(decode(&key, &query, &text, now, hour).is_err());
    }

    #[test]
    fn expires_after_the_timeout() {
        let key = SigningKey::new(vec![7; 32]);
        let org = Uuid::new_v4();
        let now = Utc::now();
        let text = encode(&key, &binding(org), &cursor(), now);
        let later = now + chrono::Duration::seconds(61);
        let minute = Duration::from_secs(60);
        let e = decode(&key, &binding(org), &text, later, minute).unwrap_err();
        assert_eq!(scim_type(e), "expiredCursor");
        assert!(decode(&key, &binding(org), &text, now, minute).is_ok());
    }
}
