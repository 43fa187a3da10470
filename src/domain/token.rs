//! API tokens: random, shown once, stored only as a SHA-256 hash (fast to check on every
//! request, useless to whoever reads the log), scoped to one org and to `scim`, `admin` or `audit`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{org, DomainError, Written};
use crate::eventstore::{self, Aggregate, Append, EventStore, ExpectedVersion, NewEvent};

pub const AGGREGATE: &str = "token";
pub const ISSUED: &str = "token.issued";
pub const REVOKED: &str = "token.revoked";

/// Tokens start with this, so a leaked one is easy to recognise (and to scan for).
pub const PREFIX: &str = "pcs_";

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// SCIM provisioning and the user-facing API of one organization.
    Scim,
    /// The admin endpoints.
    Admin,
    /// Reading the organization's audit trail (`/api/v1/orgs/{org}/audit`).
    Audit,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Scim => "scim",
            Scope::Admin => "admin",
            Scope::Audit => "audit",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "scim" => Ok(Scope::Scim),
            "admin" => Ok(Scope::Admin),
            "audit" => Ok(Scope::Audit),
            other => Err(format!(
                "unknown scope {other:?}: expected scim, admin or audit"
            )),
        }
    }
}

pub fn aggregate(id: Uuid) -> Aggregate {
    Aggregate::new(AGGREGATE, id)
}

/// SHA-256 of the token, hex: what the log and the read model keep.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new token: 32 bytes from the operating system's CSPRNG, base64url.
fn generate() -> Result<String, DomainError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(DomainError::Random)?;
    Ok(format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A token just issued. The plain token exists only here: show it once.
#[derive(Debug)]
pub struct Issued {
    pub written: Written,
    pub token: secrecy::SecretString,
}

pub async fn issue(
    store: &EventStore,
    org_id: Uuid,
    scope: Scope,
    name: Option<&str>,
) -> Result<Issued, DomainError> {
    if !org::exists(store, org_id).await? {
        return Err(DomainError::NotFound(format!("organization {org_id}")));
    }
    let name = name.map(str::trim).filter(|n| !n.is_empty());
    if name.is_some_and(|n| n.chars().count() > 200) {
        return Err(DomainError::Invalid {
            field: "name",
            reason: "a token name has at most 200 characters".into(),
        });
    }
    let token = generate()?;
    let id = Uuid::new_v4();
    let pushed = store
        .push(&[
            Append::new(org_id, aggregate(id), ExpectedVersion::NEW).event(NewEvent::new(
                ISSUED,
                json!({ "scope": scope, "name": name, "hash": hash(&token) }),
            )),
        ])
        .await?;
    Ok(Issued {
        written: Written {
            id,
            position: pushed.last(),
        },
        token: token.into(),
    })
}

/// Revokes a token; revoking a revoked token changes nothing.
pub async fn revoke(store: &EventStore, token_id: Uuid) -> Result<Written, DomainError> {
    let events = {
        let client = store.pool().get().await?;
        eventstore::load(&client, &aggregate(token_id)).await?
    };
    let Some(first) = events.first() else {
        return Err(DomainError::NotFound(format!("token {token_id}")));
    };
    let last = events.last().expect("non-empty");
    if last.event_type == REVOKED {
        return Ok(Written {
            id: token_id,
            position: last.position,
        });
    }
    let pushed = store
        .push(&[Append::new(
            first.org_id,
            aggregate(token_id),
            ExpectedVersion::Exact(last.version),
        )
        .event(NewEvent::new(REVOKED, json!({})))])
        .await?;
    Ok(Written {
        id: token_id,
        position: pushed.last(),
    })
}

/// Tokens verified recently, keyed by their hash and tagged with the api_tokens generation
/// seen before the lookup. An entry counts only while that projection has not moved since,
/// so any change to the read model (a revocation included) is seen as soon as without the
/// cache; steady read traffic skips a query per request. Generations move on notifications;
/// should this process miss them (its LISTEN connection down while the pool works), an
/// entry still lasts at most [`CACHE_TTL_SECONDS`].
#[derive(Default)]
pub struct TokenCache {
    inner: std::sync::Mutex<(u64, Verified)>,
    /// Hashes of tokens this process found valid at some point (kept across generations):
    /// a throttled address may still present one of these.
    seen_valid: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Callers by token hash, with when each was last checked against the read model.
type Verified = HashMap<String, (Caller, DateTime<Utc>)>;

/// Entries kept at most (the cache empties when full: it only saves a query).
const CACHE_MAX: usize = 10_000;

/// The longest a verified token is believed without asking the read model again.
pub const CACHE_TTL_SECONDS: i64 = 10;

impl TokenCache {
    /// Authenticates through the cache; `at` is the api_tokens read model's generation now
    /// (`ProgressHub::generation`): entries live until the model changes, or for
    /// [`CACHE_TTL_SECONDS`] after `now`.
    pub async fn authenticate(
        &self,
        pool: &deadpool_postgres::Pool,
        presented: &str,
        at: u64,
        now: DateTime<Utc>,
    ) -> Result<Option<Caller>, DomainError> {
        let key = hash(presented);
        {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if g.0 != at {
                *g = (at, HashMap::new());
            } else if let Some((c, checked)) = g.1.get(&key) {
                if now - *checked < chrono::Duration::seconds(CACHE_TTL_SECONDS) {
                    return Ok(Some(c.clone()));
                }
            }
        }
        let caller = authenticate(&pool.get().await?, presented).await?;
        if caller.is_some() {
            let mut seen = self.seen_valid.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() >= CACHE_MAX {
                seen.clear();
            }
            seen.insert(key.clone());
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match &caller {
            Some(c) if g.0 == at => {
                if g.1.len() >= CACHE_MAX {
                    g.1.clear();
                }
                g.1.insert(key, (c.clone(), now));
            }
            _ => {
                g.1.remove(&key);
            }
        }
        Ok(caller)
    }
}

impl TokenCache {
    /// Whether `presented` was a valid token when this process last looked (it may have been
    /// revoked since: only the read model says whether it is valid now).
    pub fn seen_valid(&self, presented: &str) -> bool {
        let seen = self.seen_valid.lock().unwrap_or_else(|e| e.into_inner());
        seen.contains(&hash(presented))
    }
}

/// Who a presented token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub token_id: Uuid,
    pub org_id: Uuid,
    pub scope: Scope,
    /// The name it was issued with.
    pub name: Option<String>,
}

/// Looks the token up by its hash in the api_tokens read model; revoked and unknown tokens
/// are both `None`.
pub async fn authenticate<C: GenericClient>(
    client: &C,
    presented: &str,
) -> Result<Option<Caller>, DomainError> {
    if !presented.starts_with(PREFIX) || presented.len() > 100 {
        return Ok(None);
    }
    let stmt = client
        .prepare_cached(
            "SELECT token_id, org_id, scope, name FROM projections.api_tokens \
             WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .await?;
    let row = client.query_opt(&stmt, &[&hash(presented)]).await?;
    Ok(row.and_then(|r| {
        Some(Caller {
            token_id: r.get(0),
            org_id: r.get(1),
            scope: r.get::<_, String>(2).parse().ok()?,
            name: r.get(3),
        })
    }))
}

/// Whether the token whose [`hash`] this is, is an admin-scope API token not revoked: what a
/// dashboard session opened with it needs to stay valid.
pub async fn admin_hash_active<C: GenericClient>(
    client: &C,
    token_hash: &str,
) -> Result<bool, DomainError> {
    let stmt = client
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM projections.api_tokens \
             WHERE token_hash = $1 AND revoked_at IS NULL AND scope = 'admin')",
        )
        .await?;
    Ok(client.query_one(&stmt, &[&token_hash]).await?.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hash_to_hex() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX));
        assert_eq!(a.len(), PREFIX.len() + 43, "32 bytes in unpadded base64url");
        let h = hash(&a);
        assert_eq!(h.len(), 64);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(h, hash(&a));
        assert_ne!(h, hash(&b));
    }

    #[test]
    fn issued_tokens_do_not_print() {
        let i = Issued {
            written: Written {
                id: Uuid::nil(),
                position: Default::default(),
            },
            token: "pcs_secret".into(),
        };
        assert!(!format!("{i:?}").contains("pcs_secret"));
    }
}
