//! The real read models under the real runner: applied a batch at a time and one event at a
//! time, random event sequences leave identical models; bad events are isolated.

use std::time::Duration;

use portcullis::eventstore::{
    Aggregate, Append, EventStore, ExpectedVersion, NewEvent, NotifyMode, Position, StoreOptions,
};
use portcullis::runtime::{ProgressHub, Projector, RunnerOptions};
use rand::seq::IndexedRandom;
use rand::{Rng, RngExt, SeedableRng};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::TestDb;

const WAIT: Duration = Duration::from_secs(60);

/// What the random sequence has made so far, so the next event is a realistic one.
#[derive(Default)]
struct World {
    orgs: Vec<Uuid>,
    users: Vec<(Uuid, Uuid)>,
    groups: Vec<(Uuid, Uuid)>,
    tokens: Vec<(Uuid, Uuid)>,
    members: Vec<(Uuid, Uuid)>,
}

/// One event: (org, aggregate type, aggregate id, event type, payload).
type Ev = (Uuid, &'static str, Uuid, &'static str, Value);

fn emails(rng: &mut impl Rng) -> Value {
    let n = rng.random_range(0..3);
    let types = ["work", "home", "other"];
    Value::Array(
        (0..n)
            .map(|i| {
                json!({
                    "value": format!("u{}@example.test", rng.random_range(0..1000)),
                    "type": types[i % 3],
                    "primary": i == 0,
                })
            })
            .collect(),
    )
}

fn next_event(rng: &mut impl Rng, w: &mut World) -> Ev {
    let org = *w.orgs.choose(rng).unwrap();
    let pick = rng.random_range(0..100);
    let user = w.users.choose(rng).copied();
    let group = w.groups.choose(rng).copied();
    match (pick, user, group) {
        (0..=24, _, _) | (_, None, _) => {
            let id = Uuid::new_v4();
            w.users.push((org, id));
            let attrs = json!({"userName": format!("user-{id}"), "emails": emails(rng),
                               "displayName": format!("U {}", rng.random_range(0..50))});
            (
                org,
                "user",
                id,
                "user.added",
                json!({ "attributes": attrs }),
            )
        }
        (25..=44, Some((o, id)), _) => {
            let p = match rng.random_range(0..4) {
                0 => json!({"set": {"emails": emails(rng)}, "unset": []}),
                1 => json!({"set": {}, "unset": ["emails", "displayName"]}),
                2 => json!({"set": {"active": rng.random_bool(0.5), "externalId": "x"}}),
                _ => json!({"set": {"displayName": "renamed"}, "unset": ["externalId"]}),
            };
            (o, "user", id, "user.changed", p)
        }
        (45..=49, Some((o, id)), _) => {
            w.users.retain(|u| u.1 != id);
            (o, "user", id, "user.removed", json!({}))
        }
        (50..=53, Some((o, id)), _) => {
            let verified = rng.random_bool(0.5);
            let (ty, p) = if verified {
                ("user.email.verified", json!({"email": "v@example.test"}))
            } else {
                ("user.email.changed", json!({}))
            };
            (o, "user", id, ty, p)
        }
        (54..=56, Some((o, id)), _) => (o, "user", id, "user.password.changed", json!({})),
        (57..=64, _, _) | (_, _, None) => {
            let id = Uuid::new_v4();
            w.groups.push((org, id));
            let attrs = json!({"displayName": format!("group-{id}")});
            (
                org,
                "group",
                id,
                "group.added",
                json!({ "attributes": attrs }),
            )
        }
        (65..=79, Some((_, u)), Some((o, g))) => {
            let (member, kind) = if rng.random_bool(0.8) {
                (u, "User")
            } else {
                (w.groups.choose(rng).unwrap().1, "Group")
            };
            w.members.push((g, member));
            let p = json!({"value": member.to_string(), "type": kind});
            (o, "group", g, "group.member.added", p)
        }
        (80..=86, _, Some((o, g))) => {
            let member = w
                .members
                .iter()
                .find(|m| m.0 == g)
                .map(|m| m.1)
                .unwrap_or_else(Uuid::new_v4);
            w.members.retain(|m| *m != (g, member));
            let p = json!({"value": member.to_string()});
            (o, "group", g, "group.member.removed", p)
        }
        (87..=89, _, Some((o, g))) => {
            let p =
                json!({"set": {"displayName": format!("g-{}", Uuid::new_v4()), "externalId": "e"}});
            (o, "group", g, "group.changed", p)
        }
        (90..=91, _, Some((o, g))) => {
            w.groups.retain(|x| x.1 != g);
            (o, "group", g, "group.removed", json!({}))
        }
        (92..=94, _, _) => {
            if let Some((o, t)) = w.tokens.pop().filter(|_| rng.random_bool(0.5)) {
                return (o, "token", t, "token.revoked", json!({}));
            }
            let t = Uuid::new_v4();
            w.tokens.push((org, t));
            let p = json!({"scope": "scim", "name": "t", "hash": t.to_string()});
            (org, "token", t, "token.issued", p)
        }
        (95..=96, _, _) => {
            let p = json!({"verify_email_on_change": rng.random_bool(0.5)});
            (org, "org", org, "org.settings.changed", p)
        }
        // Events no model can take: each must be dead-lettered and the rest applied.
        (97, _, _) => (
            org,
            "user",
            Uuid::new_v4(),
            "user.changed",
            json!({"set": {}}),
        ),
        (98, _, _) => {
            let p = json!({"value": Uuid::new_v4().to_string(), "type": "User"});
            (org, "group", Uuid::new_v4(), "group.member.added", p)
        }
        _ => (
            org,
            "user",
            Uuid::new_v4(),
            "user.added",
            json!({"no": "attributes"}),
        ),
    }
}

fn sequence(seed: u64, n: usize) -> Vec<Ev> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut w = World::default();
    let mut out = Vec::new();
    for i in 0..3 {
        let org = Uuid::new_v4();
        w.orgs.push(org);
        out.push((
            org,
            "org",
            org,
            "org.added",
            json!({"name": format!("org {i}")}),
        ));
    }
    out.extend((0..n).map(|_| next_event(&mut rng, &mut w)));
    out
}

async fn push_all(store: &EventStore, events: &[Ev]) -> Position {
    let mut last = Position::ZERO;
    for (org, agg, id, ty, payload) in events {
        let append = Append::new(*org, Aggregate::new(*agg, *id), ExpectedVersion::Any)
            .event(NewEvent::new(*ty, payload.clone()));
        last = store.push(&[append]).await.unwrap().last();
    }
    last
}

/// Every read model as text, without what differs between two databases (times, positions).
pub(crate) async fn models(db: &TestDb) -> Vec<String> {
    let c = db.client().await;
    let queries = [
        "SELECT user_id, org_id, user_name, external_id, display_name, active, doc, version, verified_email FROM projections.users ORDER BY user_id",
        "SELECT user_id, ord, org_id, value, type, is_primary, display FROM projections.user_emails ORDER BY user_id, ord",
        "SELECT group_id, org_id, display_name, external_id, version FROM projections.groups ORDER BY group_id",
        "SELECT group_id, member_id, org_id, member_type, rank() OVER (PARTITION BY group_id ORDER BY added_at) FROM projections.group_members ORDER BY group_id, member_id",
        "SELECT org_id, name, verify_email_on_change FROM projections.orgs ORDER BY org_id",
        "SELECT token_id, org_id, scope, name, token_hash, revoked_at IS NOT NULL AS revoked FROM projections.api_tokens ORDER BY token_id",
        "SELECT org_id, event_type, events FROM projections.event_counts ORDER BY org_id, event_type",
        "SELECT projection, aggregate_id, aggregate_version, event_type, dead_lettered_at IS NOT NULL AS dead FROM projections.failed_events ORDER BY projection, aggregate_id, aggregate_version",
    ];
    let mut out = Vec::new();
    for q in queries {
        let row = c
            .query_one(
                &format!("SELECT coalesce(json_agg(t)::text, '[]') FROM ({q}) t"),
                &[],
            )
            .await
            .unwrap();
        out.push(row.get(0));
    }
    out
}

/// Pushes the events, then lets the real projections catch up in batches of `batch`.
async fn project(events: &[Ev], batch: i64) -> (TestDb, Vec<String>) {
    let db = TestDb::new().await;
    let m = project_into(&db, events, batch).await;
    (db, m)
}

async fn project_into(db: &TestDb, events: &[Ev], batch: i64) -> Vec<String> {
    let pool = portcullis::db::pool(&db.url, 8).unwrap();
    let opts = StoreOptions {
        notify: NotifyMode::Coalesced,
        ..StoreOptions::default()
    };
    let store = EventStore::new(pool.clone(), opts);
    let last = push_all(&store, events).await;
    let hub = ProgressHub::start(&db.url, pool.clone()).await.unwrap();
    let all = portcullis::read_models::all();
    let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
    let runner = RunnerOptions {
        live_batch: batch,
        catchup_batch: batch,
        ..RunnerOptions::default()
    };
    let projector = Projector::start(&db.url, pool, store, hub.clone(), all, runner)
        .await
        .unwrap();
    hub.wait_for_all(&names, last, WAIT).await.unwrap();
    let m = models(db).await;
    projector.stop();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_and_single_events_leave_identical_read_models() {
    for seed in [1u64, 2, 3, rand::random()] {
        let events = sequence(seed, 400);
        let ((_a, one), (_b, batched)) =
            futures::join!(project(&events, 1), project(&events, 2000));
        let names = [
            "users",
            "user_emails",
            "groups",
            "group_members",
            "orgs",
            "api_tokens",
            "event_counts",
            "failed_events",
        ];
        for ((name, a), b) in names.iter().zip(&one).zip(&batched) {
            assert_eq!(
                a, b,
                "seed {seed}: {name} differs between one event and 2000 per batch"
            );
        }
        let dead: Value = serde_json::from_str(&one[7]).unwrap();
        let dead = dead.as_array().unwrap();
        assert!(
            dead.iter().all(|f| f["dead"] == json!(true)),
            "seed {seed}: every bad event is dead-lettered at once: {dead:?}"
        );
        let users: Value = serde_json::from_str(&one[0]).unwrap();
        assert!(
            users.as_array().unwrap().len() > 50,
            "seed {seed}: the sequence made users"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_event_inside_a_large_batch_is_isolated_and_the_rest_applies() {
    let org = Uuid::new_v4();
    let random: String = (0..3500)
        .map(|_| rand::random_range(b'a'..=b'z') as char)
        .collect();
    let mut events: Vec<Ev> = (0..1000)
        .map(|i| {
            let attrs = json!({"userName": format!("u{i}"), "emails": [{"value": format!("u{i}@x.example")}]});
            (org, "user", Uuid::new_v4(), "user.added", json!({ "attributes": attrs }))
        })
        .collect();
    let bad = json!({"attributes": {"userName": "bad", "externalId": random}});
    events[617] = (org, "user", Uuid::new_v4(), "user.added", bad);
    // Pushed before the projector starts: it catches up in one batch of all 1000.
    let (_db, m) = project(&events, 2000).await;
    let users: Value = serde_json::from_str(&m[0]).unwrap();
    assert_eq!(users.as_array().unwrap().len(), 999);
    let emails: Value = serde_json::from_str(&m[1]).unwrap();
    assert_eq!(emails.as_array().unwrap().len(), 999);
    let dead: Value = serde_json::from_str(&m[7]).unwrap();
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    assert_eq!(dead[0]["aggregate_id"], json!(events[617].2));
    assert_eq!(dead[0]["dead"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_failed_reapplies_in_log_order_and_never_resurrects_a_removed_user() {
    let org = Uuid::new_v4();
    let (kept, removed) = (Uuid::new_v4(), Uuid::new_v4());
    let added = |id: Uuid, name: &str| {
        let attrs = json!({"userName": name, "displayName": "first"});
        (
            org,
            "user",
            id,
            "user.added",
            json!({ "attributes": attrs }),
        )
    };
    let renamed = json!({"set": {"displayName": "second"}});
    let events: Vec<Ev> = vec![
        added(kept, "blocked-kept"),
        (org, "user", kept, "user.changed", renamed),
        added(removed, "blocked-removed"),
        (org, "user", removed, "user.removed", json!({})),
    ];
    // A DBA's constraint makes both creations fail (and so the rename of the first).
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE projections.users ADD CONSTRAINT no_blocked CHECK (user_name NOT LIKE 'blocked%')",
        )
        .await
        .unwrap();
    // One event a batch: a creation and a removal in one batch would write nothing at all.
    let m = project_into(&db, &events, 1).await;
    let dead: Value = serde_json::from_str(&m[7]).unwrap();
    assert_eq!(dead.as_array().unwrap().len(), 3, "{dead}");
    db.client()
        .await
        .batch_execute("ALTER TABLE projections.users DROP CONSTRAINT no_blocked")
        .await
        .unwrap();
    let pool = portcullis::db::pool(&db.url, 2).unwrap();
    let clock = portcullis::clock::SystemClock;
    let users = portcullis::read_models::Users;
    let r = portcullis::runtime::retry_failed(&pool, &users, &clock)
        .await
        .unwrap();
    assert_eq!((r.applied, r.still_failing), (3, 0));
    let m = models(&db).await;
    let users: Value = serde_json::from_str(&m[0]).unwrap();
    let users = users.as_array().unwrap();
    assert_eq!(users.len(), 1, "the removed user stays removed: {users:?}");
    assert_eq!(users[0]["user_id"], json!(kept));
    assert_eq!(users[0]["display_name"], "second", "applied in log order");
    assert_eq!(users[0]["version"], 2);
}
