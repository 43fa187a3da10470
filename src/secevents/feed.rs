//! A receiver as a checkpointed reader of the log: read its organization's events after its
//! position (below the horizon, so nothing can commit behind it), make the SETs it wants,
//! and queue them while moving the position, in one transaction that commits only if the
//! position is still where it was read. Two fillers at once (the node delivering for it and
//! a poll request elsewhere) cannot both queue the same changes.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use serde_json::{json, Value};
use uuid::Uuid;

use super::change::{self, Change};
use super::error::SecEventsError;
use super::scope::{Delta, Item};
use super::set::{self, Addressing, Made};
use super::uri::{EventKind, Form, Wants};
use crate::domain::group::{self, Kind};
use crate::domain::user;
use crate::eventstore::{self, EventFilter, Position};

/// SETs waiting for one receiver at most: past it, its position stops (its lag shows in
/// `secevents.receiver_health.events_unread`) until it acknowledges some.
pub const WINDOW: i64 = 10_000;
/// Events read per fill.
pub const BATCH: i64 = 500;

/// The SCIM base URL of an org: the `iss` of its SETs.
pub fn issuer(base: &str, org: Uuid) -> String {
    format!("{}/scim/v2/{org}", base.trim_end_matches('/'))
}

struct Reader {
    org: Uuid,
    audience: String,
    wants: Wants,
    position: Position,
    pending: i64,
    poll: bool,
    /// The feed is this group's members.
    group: Option<Uuid>,
}

async fn reader<C: GenericClient>(client: &C, id: Uuid) -> Result<Reader, SecEventsError> {
    let stmt = client
        .prepare_cached(
            "SELECT org_id, audience, event_uris, position_tx, position_seq, \
               (SELECT count(*) FROM secevents.pending p \
                 WHERE p.receiver_id = r.id AND p.rejected_at IS NULL), delivery = 'poll', \
               feed_group \
               FROM secevents.receivers r WHERE id = $1",
        )
        .await?;
    let r = client
        .query_opt(&stmt, &[&id])
        .await?
        .ok_or(SecEventsError::NoSuchReceiver(id))?;
    let uris: Vec<String> = r.get(2);
    Ok(Reader {
        org: r.get(0),
        audience: r.get(1),
        wants: Wants::parse(&uris)?,
        position: Position::from_sql(r.get(3), r.get(4)),
        pending: r.get(5),
        poll: r.get(6),
        group: r.get(7),
    })
}

/// What one fill did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filled {
    pub queued: u64,
    /// It read everything there was (or its window is full): no need to fill again now.
    pub done: bool,
    /// How far it has read the log (below the horizon).
    pub reached: Position,
    /// Its window is full: it reads on once SETs are acknowledged.
    pub blocked: bool,
}

impl Filled {
    /// Whether an open transaction held the horizon below `latest`, an append this process
    /// heard of: then its wake-up has passed, and the caller should look again soon.
    pub fn behind(&self, latest: Position) -> bool {
        !self.blocked && self.reached < latest
    }
}

/// The resource after `c`, as a full PUT event carries it.
async fn state_after<C: GenericClient>(
    client: &C,
    c: &Change,
) -> Result<Option<Value>, SecEventsError> {
    let agg = match c.kind {
        Kind::User => user::aggregate(c.id),
        Kind::Group => group::aggregate(c.id),
    };
    let mut events = eventstore::load(client, &agg).await?;
    events.retain(|e| e.version <= c.version);
    Ok(match c.kind {
        Kind::User => {
            user::fold(&events).map(|u| set::representation(c.kind, c.id, &u.doc, &[], u.version))
        }
        Kind::Group => group::fold(&events).map(|g| {
            let members: Vec<Value> = g
                .members
                .iter()
                .map(|m| json!({"value": m.id, "type": m.kind.as_str()}))
                .collect();
            set::representation(c.kind, c.id, &g.doc, &members, g.version)
        }),
    })
}

/// Reads one batch past the receiver's position and queues its SETs.
pub async fn fill(
    pool: &Pool,
    id: Uuid,
    base: &str,
    now: DateTime<Utc>,
) -> Result<Filled, SecEventsError> {
    let mut client = pool.get().await?;
    let r = reader(&client, id).await?;
    if r.pending >= WINDOW {
        return Ok(Filled {
            queued: 0,
            done: true,
            reached: r.position,
            blocked: true,
        });
    }
    let limit = BATCH.min(WINDOW - r.pending);
    let filter = EventFilter {
        event_types: Some(change::event_types()),
        org_id: Some(r.org),
        ..Default::default()
    };
    // Read first, before this session takes a transaction id that would hold the horizon.
    let batch = eventstore::read_batch(&client, r.position, &filter, limit).await?;
    let take = change::whole_changes(&batch.events, limit as usize);
    let to = if take < batch.events.len() {
        batch.events[take - 1].position
    } else {
        batch.read_up_to(r.position, limit)
    };
    if batch.events.is_empty() {
        // Nothing of its organization: the checkpoint stays (no write per wake-up), and the
        // next read starts from it again.
        return Ok(Filled {
            queued: 0,
            done: true,
            reached: to,
            blocked: false,
        });
    }
    let changes = change::changes(&batch.events[..take]);
    let (made, delta) = make_all(&client, &r, id, base, &changes, now).await?;
    let Some(queued) = commit(&mut client, id, &r, to, &made, &delta).await? else {
        // Someone else filled it meanwhile (or it was removed).
        return Ok(Filled {
            queued: 0,
            done: false,
            reached: r.position,
            blocked: false,
        });
    };
    Ok(Filled {
        queued,
        done: take == batch.events.len() && (batch.events.len() as i64) < limit,
        reached: to,
        blocked: false,
    })
}

/// Moves the checkpoint from where it was read to `to` and queues `made`, in one
/// transaction; None when the checkpoint was no longer where it was read.
async fn commit(
    client: &mut deadpool_postgres::Client,
    id: Uuid,
    r: &Reader,
    to: Position,
    made: &[Made],
    delta: &Delta,
) -> Result<Option<u64>, SecEventsError> {
    let tx = client.transaction().await?;
    let moved = tx
        .execute(
            "UPDATE secevents.receivers SET position_tx = $2, position_seq = $3, \
               queued_total = queued_total + $4 \
             WHERE id = $1 AND position_tx = $5 AND position_seq = $6",
            &[
                &id,
                &to.tx_sql(),
                &to.seq,
                &(made.len() as i64),
                &r.position.tx_sql(),
                &r.position.seq,
            ],
        )
        .await?;
    if moved == 0 {
        return Ok(None);
    }
    super::scope::apply(&tx, id, delta).await?;
    let queued = queue(&tx, id, made).await?;
    if queued > 0 && r.poll {
        // Poll requests waiting in other processes: one NOTIFY per batch, never per write.
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&super::options::PENDING_CHANNEL, &id.to_string()],
        )
        .await?;
    }
    tx.commit().await?;
    crate::metrics::metrics().sets_queued.inc_by(queued);
    Ok(Some(queued))
}

async fn make_all<C: GenericClient>(
    client: &C,
    r: &Reader,
    id: Uuid,
    base: &str,
    changes: &[Change],
    now: DateTime<Utc>,
) -> Result<(Vec<Made>, Delta), SecEventsError> {
    if changes.is_empty() {
        return Ok((Vec::new(), Delta::default()));
    }
    let (items, delta) = match r.group {
        Some(g) => super::scope::scoped(client, id, g, changes).await?,
        None => (changes.iter().map(Item::Change).collect(), Delta::default()),
    };
    // Registration made the org's key; rotation always leaves one active.
    let key = super::keys::active(client, r.org)
        .await?
        .ok_or(SecEventsError::NoSigningKey(r.org))?;
    let issuer = issuer(base, r.org);
    let to = Addressing {
        receiver: id,
        issuer: &issuer,
        audience: &r.audience,
        wants: &r.wants,
    };
    let wants_full_put = r.wants.forms(EventKind::Put).contains(&Some(Form::Full));
    let mut made = Vec::new();
    for item in items {
        made.extend(match item {
            Item::Change(c) => {
                let state = if wants_full_put && c.is_put() {
                    state_after(client, c).await?
                } else {
                    None
                };
                set::make(c, &to, &key, state, now)?
            }
            Item::Feed {
                user,
                kind,
                position,
                at,
            } => set::make_feed(user, kind, position, at, &to, &key, now)?,
        });
    }
    Ok((made, delta))
}

/// Queues `made` for receiver `id`.
async fn queue<C: GenericClient>(
    client: &C,
    id: Uuid,
    made: &[Made],
) -> Result<u64, SecEventsError> {
    if made.is_empty() {
        return Ok(0);
    }
    let jti: Vec<&str> = made.iter().map(|m| m.jti.as_str()).collect();
    let tx: Vec<i64> = made.iter().map(|m| m.position.tx_sql()).collect();
    let seq: Vec<i64> = made.iter().map(|m| m.position.seq).collect();
    let subject: Vec<&str> = made.iter().map(|m| m.subject.as_str()).collect();
    let token: Vec<&str> = made.iter().map(|m| m.token.as_str()).collect();
    let at: Vec<DateTime<Utc>> = made.iter().map(|m| m.event_at).collect();
    let n = client
        .execute(
            "INSERT INTO secevents.pending (receiver_id, jti, tx, seq, subject, token, event_at) \
             SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::text[], \
                                      $6::text[], $7::timestamptz[]) \
             ON CONFLICT DO NOTHING",
            &[&id, &jti, &tx, &seq, &subject, &token, &at],
        )
        .await?;
    Ok(n)
}

/// Fills until the receiver has read everything or its window is full (at most `rounds`
/// batches, so one busy receiver cannot keep a caller forever).
pub async fn fill_up(
    pool: &Pool,
    id: Uuid,
    base: &str,
    now: DateTime<Utc>,
    mut rounds: usize,
) -> Result<Filled, SecEventsError> {
    let mut queued = 0;
    loop {
        let f = fill(pool, id, base, now).await?;
        queued += f.queued;
        if f.done || rounds <= 1 {
            return Ok(Filled { queued, ..f });
        }
        rounds -= 1;
    }
}
