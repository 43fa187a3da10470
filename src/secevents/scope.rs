//! Group feeds (RFC 9967 §2.3): a receiver whose feed is one group's user members gets
//! `feed:add` when a user joins the group, `feed:remove` when one leaves (or the group goes),
//! and the provisioning events of the users in the feed only. The feed as of the receiver's
//! checkpoint is `secevents.feed_members`; only the users a batch touches are read.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use uuid::Uuid;

use super::change::{Change, What};
use super::error::SecEventsError;
use super::uri::EventKind;
use crate::domain::group::{self, Kind};
use crate::eventstore::{self, Position};

/// What a receiver gets a SET for.
pub enum Item<'a> {
    Change(&'a Change),
    Feed {
        user: Uuid,
        kind: EventKind,
        position: Position,
        at: DateTime<Utc>,
    },
}

/// How a batch moves a feed.
#[derive(Debug, Default)]
pub struct Delta {
    pub entered: Vec<Uuid>,
    pub left: Vec<Uuid>,
}

/// The user ids among group members (`{"value", "type"}`).
fn users(members: &[Value]) -> impl Iterator<Item = Uuid> + '_ {
    members
        .iter()
        .filter(|m| m["type"] != "Group")
        .filter_map(|m| m["value"].as_str()?.parse().ok())
}

async fn members_among<C: GenericClient>(
    client: &C,
    receiver: Uuid,
    users: Option<&[Uuid]>,
) -> Result<HashSet<Uuid>, SecEventsError> {
    let rows = client
        .query(
            "SELECT user_id FROM secevents.feed_members \
             WHERE receiver_id = $1 AND ($2::uuid[] IS NULL OR user_id = ANY($2))",
            &[&receiver, &users],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// What the feed of `receiver` (the members of `group`) makes of `changes`.
pub async fn scoped<'a, C: GenericClient>(
    client: &C,
    receiver: Uuid,
    group: Uuid,
    changes: &'a [Change],
) -> Result<(Vec<Item<'a>>, Delta), SecEventsError> {
    let ours = |c: &Change| c.kind == Kind::Group && c.id == group;
    let mut touched: Vec<Uuid> = Vec::new();
    let mut whole = false;
    for c in changes {
        match (&c.what, c.kind) {
            (_, Kind::User) => touched.push(c.id),
            (What::Removed, Kind::Group) if ours(c) => whole = true,
            (What::Created { members, .. }, Kind::Group) if ours(c) => {
                touched.extend(users(members))
            }
            (What::Modified { added, removed, .. }, Kind::Group) if ours(c) => {
                touched.extend(users(added).chain(users(removed)))
            }
            _ => {}
        }
    }
    let mut members =
        members_among(client, receiver, (!whole).then_some(touched.as_slice())).await?;
    let before = members.clone();
    let mut items = Vec::new();
    let feed = |user, kind, c: &Change| Item::Feed {
        user,
        kind,
        position: c.position,
        at: c.at,
    };
    for c in changes {
        match (&c.what, c.kind) {
            (What::Removed, Kind::User) if members.remove(&c.id) => items.push(Item::Change(c)),
            (_, Kind::User) if members.contains(&c.id) => items.push(Item::Change(c)),
            (What::Removed, Kind::Group) if ours(c) => {
                let mut gone: Vec<Uuid> = members.drain().collect();
                gone.sort();
                items.extend(gone.into_iter().map(|u| feed(u, EventKind::FeedRemove, c)));
            }
            (What::Created { members: m, .. }, Kind::Group)
            | (What::Modified { added: m, .. }, Kind::Group)
                if ours(c) =>
            {
                for u in users(m) {
                    if members.insert(u) {
                        items.push(feed(u, EventKind::FeedAdd, c));
                    }
                }
                if let What::Modified { removed, .. } = &c.what {
                    for u in users(removed) {
                        if members.remove(&u) {
                            items.push(feed(u, EventKind::FeedRemove, c));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let delta = Delta {
        entered: members.difference(&before).copied().collect(),
        left: before.difference(&members).copied().collect(),
    };
    Ok((items, delta))
}

/// Applies a batch's delta to the feed (in the transaction that moves the checkpoint).
pub async fn apply<C: GenericClient>(
    client: &C,
    receiver: Uuid,
    d: &Delta,
) -> Result<(), SecEventsError> {
    if !d.left.is_empty() {
        client
            .execute(
                "DELETE FROM secevents.feed_members WHERE receiver_id = $1 AND user_id = ANY($2)",
                &[&receiver, &d.left],
            )
            .await?;
    }
    if !d.entered.is_empty() {
        client
            .execute(
                "INSERT INTO secevents.feed_members (receiver_id, user_id) \
                 SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING",
                &[&receiver, &d.entered],
            )
            .await?;
    }
    Ok(())
}

/// The users in `group` as of `at`: a new feed's first members. None: no such group then.
pub async fn members_at<C: GenericClient>(
    client: &C,
    org: Uuid,
    group_id: Uuid,
    at: Position,
) -> Result<Option<Vec<Uuid>>, SecEventsError> {
    let mut events = eventstore::load(client, &group::aggregate(group_id)).await?;
    events.retain(|e| e.position <= at);
    Ok(group::fold(&events).filter(|g| g.org_id == org).map(|g| {
        g.members
            .iter()
            .filter(|m| m.kind == Kind::User)
            .map(|m| m.id)
            .collect()
    }))
}
