//! Push delivery (RFC 8935): each SET is POSTed to the receiver's endpoint as
//! `application/secevent+jwt`, in log order, one at a time (so one resource's SETs arrive in
//! order). 202 (any 2xx) acknowledges it; 400 is the receiver refusing that SET (kept as
//! rejected, the rest goes on); anything else is a failure: the receiver backs off and the
//! SET is sent again, so delivery is at-least-once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use uuid::Uuid;

use super::error::SecEventsError;
use crate::backoff::Backoff;

/// SETs taken per round; the lease is renewed between rounds.
const ROUND: i64 = 100;
/// Bytes of an error answer read at most.
const MAX_ERROR_BODY: usize = 4096;

/// The HTTP client of push delivery: bounded in time, never following redirects (a SET goes
/// where it was registered to go, nowhere else).
#[derive(Clone)]
pub struct Pusher {
    http: reqwest::Client,
}

enum Outcome {
    Accepted,
    Rejected(String),
    Failed(String),
}

impl Pusher {
    pub fn new(timeout: Duration) -> Pusher {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(4)
            .build()
            .expect("an HTTP client with these settings builds");
        Pusher { http }
    }

    async fn post(&self, endpoint: &str, authorization: Option<&str>, token: &str) -> Outcome {
        let mut req = self
            .http
            .post(endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/secevent+jwt")
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(a) = authorization {
            let mut v = match reqwest::header::HeaderValue::from_str(a) {
                Ok(v) => v,
                Err(_) => {
                    return Outcome::Failed("the stored authorization is not a header value".into())
                }
            };
            v.set_sensitive(true);
            req = req.header(reqwest::header::AUTHORIZATION, v);
        }
        let sent = req.body(token.to_string()).send().await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(crate::error_chain(&e)),
        };
        let status = resp.status();
        if status.is_success() {
            return Outcome::Accepted;
        }
        if status == reqwest::StatusCode::BAD_REQUEST {
            return Outcome::Rejected(rejection(resp).await);
        }
        Outcome::Failed(format!("the receiver answered HTTP {}", status.as_u16()))
    }
}

/// The receiver's `err` and `description` (RFC 8935 §2.3), from a bounded read of the body.
async fn rejection(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let err = v["err"].as_str().unwrap_or("invalid_request");
    match v["description"].as_str() {
        Some(d) => format!("{err}: {}", d.chars().take(500).collect::<String>()),
        None => err.to_string(),
    }
}

/// What a round of pushes did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Everything waiting went (or there was nothing).
    Drained,
    /// A full round went; more may wait.
    More,
    /// A push failed; nothing before this time.
    BackingOff(DateTime<Utc>),
    /// This process no longer delivers for it (lease lost, or removed).
    NotOurs,
}

/// One round of pushes for receiver `id`, delivered by `me`.
pub async fn round(
    pool: &Pool,
    pusher: &Pusher,
    id: Uuid,
    me: &str,
    backoff: &Backoff,
    now: DateTime<Utc>,
) -> Result<Pushed, SecEventsError> {
    let (endpoint, failures, authorization, sets) = {
        let client = pool.get().await?;
        let Some(r) = client
            .query_opt(
                "SELECT endpoint, failures, next_attempt_at, push_authorization \
                   FROM secevents.receivers \
                 WHERE id = $1 AND leased_by = $2 AND delivery = 'push'",
                &[&id, &me],
            )
            .await?
        else {
            return Ok(Pushed::NotOurs);
        };
        let due: DateTime<Utc> = r.get(2);
        if due > now {
            return Ok(Pushed::BackingOff(due));
        }
        let sets: Vec<(String, String, DateTime<Utc>)> = client
            .query(
                "SELECT jti, token, event_at FROM secevents.pending \
                 WHERE receiver_id = $1 AND rejected_at IS NULL ORDER BY tx, seq, jti LIMIT $2",
                &[&id, &ROUND],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let authorization: Option<String> = r.get(3);
        (
            r.get::<_, String>(0),
            r.get::<_, i32>(1),
            authorization,
            sets,
        )
    };
    if sets.is_empty() {
        return Ok(Pushed::Drained);
    }
    // No connection is held while the receiver answers.
    let mut accepted: Vec<&str> = Vec::new();
    let mut rejected: Vec<(&str, String)> = Vec::new();
    let mut failed = None;
    let m = crate::metrics::metrics();
    for (jti, token, at) in &sets {
        match pusher
            .post(&endpoint, authorization.as_deref(), token)
            .await
        {
            Outcome::Accepted => {
                let delay = (chrono::Utc::now() - *at).num_microseconds().unwrap_or(0);
                m.set_delay_seconds.observe(delay.max(0) as f64 / 1e6);
                accepted.push(jti)
            }
            Outcome::Rejected(why) => rejected.push((jti, why)),
            Outcome::Failed(why) => {
                m.set_push_failures.inc();
                failed = Some(why);
                break;
            }
        }
    }
    let next = failed.as_ref().map(|_| {
        now + chrono::Duration::from_std(backoff.nth((failures + 1) as u32)).unwrap_or_default()
    });
    record(pool, id, &accepted, &rejected, failed.as_deref(), next, now).await?;
    m.sets_delivered.inc_by(accepted.len() as u64);
    Ok(match next {
        Some(t) => Pushed::BackingOff(t),
        None if sets.len() as i64 == ROUND => Pushed::More,
        None => Pushed::Drained,
    })
}

/// Deletes what was acknowledged, marks what was refused, and notes the failure (or that
/// there was none), in one transaction.
async fn record(
    pool: &Pool,
    id: Uuid,
    accepted: &[&str],
    rejected: &[(&str, String)],
    failed: Option<&str>,
    next: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), SecEventsError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    super::pending::acknowledge(&tx, id, accepted).await?;
    super::pending::refuse(&tx, id, rejected, now).await?;
    tx.execute(
        "UPDATE secevents.receivers SET \
           delivered_total = delivered_total + $2, \
           last_delivered_at = CASE WHEN $2 > 0 THEN $3 ELSE last_delivered_at END, \
           failures = CASE WHEN $4::text IS NULL THEN 0 ELSE failures + 1 END, \
           last_error = coalesce($4, last_error), \
           last_error_at = CASE WHEN $4::text IS NULL THEN last_error_at ELSE $3 END, \
           next_attempt_at = coalesce($5, $3) \
         WHERE id = $1",
        &[&id, &(accepted.len() as i64), &now, &failed, &next],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
