//! Receivers: who gets an organization's SETs, how (push to an endpoint, or poll with a
//! token), which event URIs, and their health as `secevents.receiver_health` shows it.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::SecEventsError;
use super::uri::Wants;
use crate::domain::token;
use crate::eventstore::Position;

/// Prefix of a poll receiver's token (tells it apart from API tokens in a secret scanner).
pub const POLL_TOKEN_PREFIX: &str = "pcr_";
const MAX_URL: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// The service POSTs each SET to the receiver's endpoint (RFC 8935).
    Push,
    /// The receiver fetches SETs and acknowledges them (RFC 8936).
    Poll,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Push => "push",
            Delivery::Poll => "poll",
        }
    }

    /// As `secevents.receivers.delivery` stores it.
    pub(crate) fn parse(s: &str) -> Delivery {
        if s == "push" {
            Delivery::Push
        } else {
            Delivery::Poll
        }
    }
}

/// What registering a receiver takes.
#[derive(Debug, Deserialize)]
pub struct Registration {
    pub name: String,
    pub delivery: Delivery,
    /// The push endpoint (https, or http for a receiver on a private network).
    pub endpoint: Option<String>,
    /// Event URIs, full (`urn:ietf:params:scim:event:prov:create:full`) or short
    /// (`prov:create:full`).
    pub events: Vec<String>,
    /// The `aud` claim; by default the push endpoint, or the poll URL.
    pub audience: Option<String>,
    /// The `Authorization` header every push carries (e.g. `Bearer <token the receiver
    /// issued>`); write-only.
    #[serde(default)]
    pub authorization: Option<SecretString>,
    /// A group of the org: the feed is its user members (feed:add/feed:remove as they join
    /// and leave, provisioning events for them only). None: every user and group.
    #[serde(default)]
    pub group: Option<Uuid>,
}

/// A receiver and how it is doing.
#[derive(Debug, Clone, Serialize)]
pub struct Receiver {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub delivery: Delivery,
    pub endpoint: Option<String>,
    pub audience: String,
    pub events: Vec<String>,
    /// The group whose members make its feed, if any.
    pub group: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub health: Health,
}

#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// `ok`, `retrying` (pushes fail; backing off) or `rejected` (it refused SETs).
    pub status: String,
    pub position: String,
    pub events_unread: i64,
    pub pending: i64,
    pub rejected: i64,
    pub lag_seconds: f64,
    pub delivered_total: i64,
    pub last_delivered_at: Option<DateTime<Utc>>,
    pub failures: i32,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub next_attempt_at: DateTime<Utc>,
}

/// A new receiver, with its poll token (shown once).
pub struct Registered {
    pub receiver: Receiver,
    pub poll_token: Option<SecretString>,
}

fn invalid(msg: impl Into<String>) -> SecEventsError {
    SecEventsError::Invalid(msg.into())
}

/// Checks a push endpoint: an absolute http(s) URL with a host and no credentials in it (a
/// password in a URL would be stored and shown in clear).
pub fn check_endpoint(url: &str) -> Result<(), SecEventsError> {
    if url.len() > MAX_URL {
        return Err(invalid(format!(
            "endpoint is longer than {MAX_URL} characters"
        )));
    }
    let u = reqwest::Url::parse(url).map_err(|e| invalid(format!("endpoint: {e}")))?;
    if !matches!(u.scheme(), "https" | "http") || u.host_str().is_none() {
        return Err(invalid("endpoint must be an http or https URL with a host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(invalid("endpoint must not hold credentials"));
    }
    Ok(())
}

fn check(r: &Registration) -> Result<Wants, SecEventsError> {
    let name = r.name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(invalid("name takes 1 to 128 printable characters"));
    }
    match (r.delivery, &r.endpoint) {
        (Delivery::Push, Some(e)) => check_endpoint(e)?,
        (Delivery::Push, None) => return Err(invalid("a push receiver needs an endpoint")),
        (Delivery::Poll, Some(_)) => return Err(invalid("a poll receiver takes no endpoint")),
        (Delivery::Poll, None) => {}
    }
    if r.events.is_empty() || r.events.len() > 32 {
        return Err(invalid("events lists 1 to 32 event URIs"));
    }
    if let Some(a) = &r.authorization {
        use secrecy::ExposeSecret;
        let v = a.expose_secret();
        if r.delivery != Delivery::Push {
            return Err(invalid("only a push receiver takes an authorization"));
        }
        if v.is_empty() || v.len() > 4096 || reqwest::header::HeaderValue::from_str(v).is_err() {
            return Err(invalid(
                "authorization is an HTTP header value of 1 to 4096 visible characters",
            ));
        }
    }
    if let Some(a) = &r.audience {
        if a.is_empty() || a.len() > MAX_URL || a.chars().any(char::is_control) {
            return Err(invalid("audience takes 1 to 2048 printable characters"));
        }
    }
    Ok(Wants::parse(&r.events)?)
}

/// The URL a poll receiver polls.
pub fn poll_url(base: &str, org: Uuid, id: Uuid) -> String {
    format!(
        "{}/api/v1/orgs/{org}/receivers/{id}/poll",
        base.trim_end_matches('/')
    )
}

fn poll_token() -> Result<(SecretString, String), SecEventsError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| SecEventsError::KeyGeneration)?;
    let t = format!(
        "{POLL_TOKEN_PREFIX}{}",
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
    );
    let hash = token::hash(&t);
    Ok((SecretString::from(t), hash))
}

/// Registers a receiver of `org` (which must exist); it gets the changes committed from now
/// on. `base` is the service's public URL.
pub async fn register(
    client: &mut deadpool_postgres::Client,
    org: Uuid,
    r: &Registration,
    base: &str,
) -> Result<Registered, SecEventsError> {
    let wants = check(r)?;
    super::keys::ensure(&*client, org).await?;
    // The receiver, its feed and its wake-up together, or none of them.
    let client = client.transaction().await?;
    let id = Uuid::new_v4();
    let (poll_token, hash) = match r.delivery {
        Delivery::Poll => {
            let (t, h) = poll_token()?;
            (Some(t), Some(h))
        }
        Delivery::Push => (None, None),
    };
    let audience = r.audience.clone().unwrap_or_else(|| match &r.endpoint {
        Some(e) => e.clone(),
        None => poll_url(base, org, id),
    });
    // From the last event every reader may see: whatever commits later sorts after it.
    let start: Position = crate::eventstore::head(&client).await?;
    let members = match r.group {
        Some(g) => Some(
            super::scope::members_at(&client, org, g, start)
                .await?
                .ok_or_else(|| invalid(format!("no group {g} in this organization")))?,
        ),
        None => None,
    };
    client
        .execute(
            "INSERT INTO secevents.receivers (id, org_id, name, delivery, endpoint, \
               poll_token_hash, audience, event_uris, position_tx, position_seq, feed_group, \
               push_authorization) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &id,
                &org,
                &r.name.trim(),
                &r.delivery.as_str(),
                &r.endpoint,
                &hash,
                &audience,
                &wants.strings(),
                &start.tx_sql(),
                &start.seq,
                &r.group,
                &r.authorization.as_ref().map(|a| {
                    use secrecy::ExposeSecret;
                    a.expose_secret().to_string()
                }),
            ],
        )
        .await?;
    if let Some(m) = members {
        client
            .execute(
                "INSERT INTO secevents.feed_members (receiver_id, user_id) \
                 SELECT $1, unnest($2::uuid[])",
                &[&id, &m],
            )
            .await?;
    }
    announce(&client, id).await?;
    let receiver = get(&client, org, id).await?;
    client.commit().await?;
    Ok(Registered {
        receiver,
        poll_token,
    })
}

/// Tells every process's workers about a new or changed receiver (at commit).
async fn announce<C: GenericClient>(client: &C, id: Uuid) -> Result<(), SecEventsError> {
    client
        .execute(
            "SELECT pg_notify($1, $2)",
            &[&super::options::RECEIVERS_CHANNEL, &id.to_string()],
        )
        .await?;
    Ok(())
}

const SELECT: &str = "SELECT r.id, r.org_id, r.name, r.delivery, r.endpoint, r.audience, \
       r.event_uris, r.feed_group, r.created_at, h.status, h.position, h.events_unread, h.pending, \
       h.rejected, h.lag_seconds, h.delivered_total, h.last_delivered_at, h.failures, \
       h.last_error, h.last_error_at, h.next_attempt_at \
  FROM secevents.receivers r JOIN secevents.receiver_health h USING (id)";

fn from_row(r: &tokio_postgres::Row) -> Receiver {
    Receiver {
        id: r.get(0),
        org_id: r.get(1),
        name: r.get(2),
        delivery: Delivery::parse(r.get(3)),
        endpoint: r.get(4),
        audience: r.get(5),
        events: r.get(6),
        group: r.get(7),
        created_at: r.get(8),
        health: Health {
            status: r.get(9),
            position: r.get(10),
            events_unread: r.get(11),
            pending: r.get(12),
            rejected: r.get(13),
            lag_seconds: r.get(14),
            delivered_total: r.get(15),
            last_delivered_at: r.get(16),
            failures: r.get(17),
            last_error: r.get(18),
            last_error_at: r.get(19),
            next_attempt_at: r.get(20),
        },
    }
}

pub async fn get<C: GenericClient>(
    client: &C,
    org: Uuid,
    id: Uuid,
) -> Result<Receiver, SecEventsError> {
    let row = client
        .query_opt(
            &format!("{SELECT} WHERE r.org_id = $1 AND r.id = $2"),
            &[&org, &id],
        )
        .await?;
    row.map(|r| from_row(&r))
        .ok_or(SecEventsError::NoSuchReceiver(id))
}

/// The receivers of `org`, or of every organization.
pub async fn list<C: GenericClient>(
    client: &C,
    org: Option<Uuid>,
) -> Result<Vec<Receiver>, SecEventsError> {
    let rows = client
        .query(
            &format!(
                "{SELECT} WHERE $1::uuid IS NULL OR r.org_id = $1 ORDER BY r.created_at, r.id"
            ),
            &[&org],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Removes a receiver and what waits for it.
pub async fn remove<C: GenericClient>(
    client: &C,
    org: Uuid,
    id: Uuid,
) -> Result<(), SecEventsError> {
    let n = client
        .execute(
            "DELETE FROM secevents.receivers WHERE org_id = $1 AND id = $2",
            &[&org, &id],
        )
        .await?;
    if n == 0 {
        return Err(SecEventsError::NoSuchReceiver(id));
    }
    Ok(())
}

/// Sends the SETs it refused again, and pushes now; returns how many were queued again.
pub async fn retry<C: GenericClient>(
    client: &C,
    org: Uuid,
    id: Uuid,
) -> Result<u64, SecEventsError> {
    get(client, org, id).await?;
    let n = client
        .execute(
            "UPDATE secevents.pending SET rejected_at = NULL, rejection = NULL \
             WHERE receiver_id = $1 AND rejected_at IS NOT NULL",
            &[&id],
        )
        .await?;
    client
        .execute(
            "UPDATE secevents.receivers SET next_attempt_at = now() WHERE id = $1",
            &[&id],
        )
        .await?;
    announce(client, id).await?;
    Ok(n)
}

/// The poll receiver whose token this is, in `org`.
pub async fn by_poll_token<C: GenericClient>(
    client: &C,
    org: Uuid,
    id: Uuid,
    presented: &str,
) -> Result<bool, SecEventsError> {
    let row = client
        .query_opt(
            "SELECT 1 FROM secevents.receivers \
             WHERE org_id = $1 AND id = $2 AND delivery = 'poll' AND poll_token_hash = $3",
            &[&org, &id, &token::hash(presented)],
        )
        .await?;
    Ok(row.is_some())
}

/// Whether `org` has receivers: then it is "configured for Security Events" (RFC 9967 §4)
/// and its `/ServiceProviderConfig` says so.
pub async fn any_in<C: GenericClient>(
    client: &C,
    org: Uuid,
) -> Result<bool, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM secevents.receivers WHERE org_id = $1)")
        .await?;
    Ok(client.query_one(&stmt, &[&org]).await?.get(0))
}
