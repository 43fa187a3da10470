//! Read-your-writes: inside one request (every write answers from the read models it waited
//! for) and across servers (Portcullis-Position / Portcullis-Min-Position).

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use portcullis::eventstore::Position;
use portcullis::http::position::POSITION_HEADER;
use portcullis::scim::readback::ReadBacks;
use portcullis::scim::resource::Selection;
use portcullis::scim::schema::{ResourceType, GROUP_TYPE, USER_TYPE};
use portcullis::scim::Ctx;
use uuid::Uuid;

use super::{ids, Scim};
use crate::support::{eventually, TestApp, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_users_from_sixteen_clients_read_back_at_once() {
    let db = TestDb::new().await;
    let s = Arc::new(Scim::new(&db).await);
    let tasks: Vec<_> = (0..16)
        .map(|client| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..(200 / 16 + usize::from(client < 200 % 16)) {
                    let name = format!("c{client}-u{i}@example.com");
                    let created = s
                        .post("/Users", &json!({"userName": name, "title": "v1"}))
                        .await;
                    assert_eq!(created.status, 201, "{:#}", created.body);
                    assert_eq!(created.body["userName"], name.as_str(), "its own read back");
                    let id = created.id();
                    let got = s.get(&format!("/Users/{id}")).await;
                    assert_eq!(got.status, 200, "GET right after POST: {:#}", got.body);
                    assert_eq!(got.body["userName"], name.as_str());
                    let f = format!(
                        "/Users?filter=userName%20eq%20%22{}%22",
                        name.to_uppercase()
                    );
                    let found = s.get(&f).await;
                    assert_eq!(
                        ids(&found.body),
                        vec![id.clone()],
                        "filter right after POST"
                    );
                    let patched = s
                        .patch(
                            &format!("/Users/{id}"),
                            json!([{"op": "replace", "path": "title", "value": "v2"}]),
                        )
                        .await;
                    assert_eq!(patched.body["title"], "v2");
                    let again = s.get(&format!("/Users/{id}")).await;
                    assert_eq!(
                        again.body["title"], "v2",
                        "GET right after PATCH is never stale"
                    );
                    assert_eq!(
                        again.body["meta"]["version"],
                        patched.body["meta"]["version"]
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.get("/Users?count=0").await.body["totalResults"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_position_carries_read_your_writes_across_servers() {
    let db = TestDb::new().await;
    let writer = Scim::new(&db).await;
    // A second server on the same database that runs no projections of its own: it learns
    // progress from the writer's projector through NOTIFY.
    let mut cfg = db.config();
    cfg.run_projections = false;
    cfg.scim.wait_timeout = Duration::from_millis(300);
    let reader = writer.also_on(TestApp::spawn_with(cfg).await);
    for i in 0..20 {
        let r = writer
            .post("/Users", &json!({"userName": format!("x{i}")}))
            .await;
        let pos = r.header("portcullis-position").unwrap().to_string();
        let id = r.id();
        let got = reader
            .send(
                Method::GET,
                &format!("/Users/{id}"),
                None,
                &[("portcullis-min-position", &pos)],
            )
            .await;
        assert_eq!(got.status, 200, "{:#}", got.body);
        assert_eq!(got.body["userName"], format!("x{i}"));
        let list = reader
            .send(
                Method::GET,
                "/Users?count=0",
                None,
                &[("Portcullis-Min-Position", &pos)],
            )
            .await;
        assert_eq!(list.body["totalResults"], i + 1);
    }
    // A position the read models have not reached: 503 after the timeout, never a stale 200.
    let ahead = "999999999999/1";
    let r = reader
        .send(
            Method::GET,
            "/Users",
            None,
            &[("portcullis-min-position", ahead)],
        )
        .await;
    r.assert_error(503, None);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("999999999999/1"),
        "{:#}",
        r.body
    );
    reader
        .send(
            Method::GET,
            "/Users",
            None,
            &[("portcullis-min-position", "yesterday")],
        )
        .await
        .assert_error(400, Some("invalidSyntax"));
    reader.app.stop().await;
}

/// A server whose projections never run and whose waits end after 200 ms, on an org whose
/// token another server made usable first.
async fn stalled(db: &TestDb) -> (Scim, uuid::Uuid, String) {
    let setup = TestApp::spawn(db).await;
    let (org, token) = super::org_with_token(&setup).await;
    setup.stop().await;
    let mut cfg = db.config();
    cfg.run_projections = false;
    cfg.scim.wait_timeout = Duration::from_millis(200);
    let app = TestApp::spawn_with(cfg).await;
    let stalled = Scim {
        app,
        org,
        token: token.clone(),
    };
    (stalled, org, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_that_does_not_catch_up_gives_503_and_loses_nothing() {
    let db = TestDb::new().await;
    let (stalled, org, token) = stalled(&db).await;
    let r = stalled
        .post("/Users", &json!({"userName": "patient"}))
        .await;
    r.assert_error(503, None);
    assert!(
        r.body["detail"].as_str().unwrap().contains("users"),
        "{:#}",
        r.body
    );
    let pos = r
        .header("portcullis-position")
        .expect("the write's position")
        .to_string();

    // The write was kept: a server with projections serves it, and the userName is taken.
    let live = Scim {
        app: TestApp::spawn(&db).await,
        org,
        token,
    };
    let found = live
        .send(
            Method::GET,
            "/Users?filter=userName%20eq%20%22patient%22",
            None,
            &[("portcullis-min-position", &pos)],
        )
        .await;
    assert_eq!(found.body["totalResults"], 1, "{:#}", found.body);
    live.post("/Users", &json!({"userName": "PATIENT"}))
        .await
        .assert_error(409, Some("uniqueness"));
    stalled.app.stop().await;
}

/// A Bulk request whose wait times out still returns every operation's result and the
/// position to wait for, and says the wait timed out (its writes are committed; a client
/// retrying the whole request would write twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_returns_its_results_when_the_wait_times_out() {
    let db = TestDb::new().await;
    let (stalled, org, token) = stalled(&db).await;
    let r = stalled
        .post(
            "/Bulk",
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
            "Operations": [
                {"method": "POST", "path": "/Users", "bulkId": "a", "data": {"userName": "bulk-a"}},
                {"method": "POST", "path": "/Users", "bulkId": "b", "data": {"userName": "bulk-b"}}
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(r.header("portcullis-wait"), Some("timed-out"));
    let ops = r.body["Operations"].as_array().unwrap();
    assert_eq!(ops.len(), 2);
    for op in ops {
        assert_eq!(op["status"], "201", "{op:#}");
        assert!(op["location"]
            .as_str()
            .is_some_and(|l| l.contains("/Users/")));
    }
    let pos = r
        .header("portcullis-position")
        .expect("a position")
        .to_string();
    let live = Scim {
        app: TestApp::spawn(&db).await,
        org,
        token,
    };
    let found = live
        .send(
            Method::GET,
            "/Users?filter=userName%20sw%20%22bulk-%22",
            None,
            &[("portcullis-min-position", &pos)],
        )
        .await;
    assert_eq!(found.body["totalResults"], 2, "{:#}", found.body);
    let r = live
        .post(
            "/Bulk",
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
                    "Operations": [{"method": "POST", "path": "/Users", "data": {"userName": "bulk-c"}}]}),
        )
        .await;
    assert_eq!(r.header("portcullis-wait"), Some("complete"));
}

/// After a crash of PostgreSQL, batches the runners committed asynchronously may be gone
/// although every hub was told of them. A read with a position token must not answer from
/// the model that lost them: the position is confirmed in the database first (503 until the
/// batches are applied again), never a 404 for a user that exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_the_database_lost_in_a_crash_is_not_trusted() {
    let db = TestDb::new().await;
    let writer = Scim::new(&db).await;
    let mut cfg = db.config();
    cfg.run_projections = false;
    let reader = writer.also_on(TestApp::spawn_with(cfg).await);
    let created = writer.post("/Users", &json!({"userName": "lost"})).await;
    assert_eq!(created.status, 201);
    let (id, at) = (
        created.id(),
        created.header("portcullis-position").unwrap().to_string(),
    );
    let position: portcullis::eventstore::Position = at.parse().unwrap();
    let hub = &reader.app.state.hub;
    hub.wait_for_all(&["users", "groups"], position, Duration::from_secs(30))
        .await
        .unwrap();
    // No runner may apply it again while the reader looks: the writer (the only one) stops.
    writer.app.stop().await;
    // What crash recovery leaves when the batch that applied the user was not flushed: the
    // row and the positions as they were before it (the log keeps the event).
    let c = db.client().await;
    c.batch_execute(&format!(
        "BEGIN;
         DELETE FROM projections.users WHERE user_id = '{id}';
         UPDATE projections.projection_states SET position_tx = {tx}, position_seq = 0;
         COMMIT;",
        tx = position.tx_sql() - 1
    ))
    .await
    .unwrap();
    let path = format!("/Users/{id}");
    let r = reader
        .send(
            Method::GET,
            &path,
            None,
            &[("portcullis-min-position", &at)],
        )
        .await;
    r.assert_error(503, None);
    assert_eq!(r.header("retry-after"), Some("1"));
    // Without a token the read answers from the model as it is.
    assert_eq!(reader.get(&path).await.status, 404);
}

/// The same for a write: its hub says the read models hold it, but the database does not (a
/// crash took the batches the hub was told of). The write is kept and answered 503 with its
/// position, never 404; once a runner has applied it, it reads back at that position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_read_models_the_database_lost_answers_503_never_404() {
    let db = TestDb::new().await;
    let writer = Scim::new(&db).await;
    let mut cfg = db.config();
    cfg.run_projections = false;
    let node = writer.also_on(TestApp::spawn_with(cfg).await);
    writer.app.stop().await;
    // What this hub heard of before the crash: both models far ahead of the database.
    let ahead = Position::from_sql(i64::MAX / 2, 1);
    for model in ["users", "groups"] {
        node.app.state.hub.publish(model, ahead);
    }
    let r = node.post("/Users", &json!({"userName": "kept"})).await;
    r.assert_error(503, None);
    assert_eq!(r.header("retry-after"), Some("1"));
    let at = r
        .header(POSITION_HEADER)
        .expect("the write's position")
        .to_string();

    // A runner applies it again: it reads back at that position, and it was written once.
    let live = node.also_on(TestApp::spawn(&db).await);
    let found = live
        .send(
            Method::GET,
            "/Users?filter=userName%20eq%20%22kept%22",
            None,
            &[("portcullis-min-position", &at)],
        )
        .await;
    assert_eq!(found.status, 200, "{:#}", found.body);
    assert_eq!(found.body["totalResults"], 1, "{:#}", found.body);
    live.post("/Users", &json!({"userName": "kept"}))
        .await
        .assert_error(409, Some("uniqueness"));
}

/// The read backs of user writes that wait together go out as one statement, and each gets
/// its own resource: users of two orgs, a missing id, a user asked for in the other org, the
/// same user twice, and a position the read models do not hold yet. A group is read back on
/// its own, and a read back after the wave has gone starts a wave of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_backs_waiting_together_share_a_statement_and_each_gets_its_own() {
    let db = TestDb::new().await;
    let a = Scim::new(&db).await;
    let (org_b, _) = super::org_with_token(&a.app).await;
    let mut users = Vec::new();
    for i in 0..6 {
        let r = a
            .post("/Users", &json!({"userName": format!("rb{i}")}))
            .await;
        assert_eq!(r.status, 201);
        let at: Position = r.header(POSITION_HEADER).unwrap().parse().unwrap();
        users.push((r.id(), format!("rb{i}"), at));
    }
    let g = a.post("/Groups", &json!({"displayName": "rb group"})).await;
    let g_at: Position = g.header(POSITION_HEADER).unwrap().parse().unwrap();
    let ctx = |org| Ctx {
        org,
        base: "http://rb.example/scim/v2".into(),
    };
    let (ctx_a, ctx_b) = (Arc::new(ctx(a.org)), Arc::new(ctx(org_b)));
    let ahead = Position::from_sql(i64::MAX / 2, 1);

    // One connection, held: the reads queue behind it until it is free.
    let pool = portcullis::db::pool(&db.url, 1).unwrap();
    let rb = ReadBacks::new(pool.clone());
    let held = pool.get().await.unwrap();
    let mut asks: Vec<(&'static ResourceType, Arc<Ctx>, Uuid, Position)> = users
        .iter()
        .map(|(id, _, at)| (&USER_TYPE, ctx_a.clone(), id.parse().unwrap(), *at))
        .collect();
    let first: Uuid = users[0].0.parse().unwrap();
    asks.push((&USER_TYPE, ctx_a.clone(), first, users[5].2)); // the same user again
    asks.push((&GROUP_TYPE, ctx_a.clone(), g.id().parse().unwrap(), g_at));
    asks.push((&USER_TYPE, ctx_a.clone(), Uuid::new_v4(), g_at)); // missing
    asks.push((&USER_TYPE, ctx_b.clone(), first, g_at)); // another org's user
    asks.push((&USER_TYPE, ctx_a.clone(), first, ahead)); // not projected that far
    let reads: Vec<_> = asks
        .iter()
        .cloned()
        .map(|(rt, ctx, id, at)| {
            let rb = rb.clone();
            tokio::spawn(async move {
                rb.by_id_at(rt, &ctx, id, &Selection::default(), at)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let n = asks.len() - 1; // the group's is not queued
    eventually(
        "every user read back queued",
        Duration::from_secs(10),
        || {
            let queued = rb.queued();
            async move { (queued == n).then_some(()) }
        },
    )
    .await;
    drop(held);
    let mut got = Vec::new();
    for r in reads {
        got.push(r.await.unwrap());
    }
    assert_eq!(rb.batches(), 1, "one round trip for all the users");
    for (i, (_, name, _)) in users.iter().enumerate() {
        let (doc, version) = got[i].clone().expect("the user");
        assert_eq!(
            (doc["userName"].as_str(), version),
            (Some(name.as_str()), 1)
        );
        assert_eq!(doc["id"], users[i].0.as_str());
        assert_eq!(
            doc["meta"]["location"],
            format!("http://rb.example/scim/v2/Users/{}", users[i].0)
        );
    }
    assert_eq!(got[6].as_ref().unwrap().0["userName"], "rb0");
    assert_eq!(got[7].as_ref().unwrap().0["displayName"], "rb group");
    assert!(got[8].is_none(), "a missing id");
    assert!(got[9].is_none(), "another org's user");
    assert!(got[10].is_none(), "a position the read models do not hold");
    let later = rb
        .by_id_at(&USER_TYPE, &ctx_a, first, &Selection::default(), g_at)
        .await
        .unwrap();
    assert_eq!(later.unwrap().0["userName"], "rb0");
    assert_eq!(rb.batches(), 2, "the next wave reads again");
}

/// A user's read back rides along the live round that applies the write: offered while that
/// round cannot commit yet (a row of its positions' UPDATE is held), it is answered once the
/// round commits, from the round's own connection. A ride offered after its write was applied
/// is withdrawn as soon as the hub has the position: the request reads on its own, nothing
/// waits for a round that will not come, and nothing is left queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_back_rides_along_the_round_that_applies_the_write() {
    let db = TestDb::new().await;
    let a = Scim::new(&db).await;
    let state = a.app.state.clone();
    let projector = state
        .projector
        .clone()
        .expect("the app runs its projections");
    let rb = ReadBacks::riding(state.pool.clone(), &projector);
    let ctx = Ctx {
        org: a.org,
        base: "http://rb.example/scim/v2".into(),
    };
    let sel = Selection::default();
    let reached = |at: Position| {
        let hub = state.hub.clone();
        async move {
            hub.wait_for_all(&["users", "groups"], at, Duration::from_secs(30))
                .await
                .map_err(portcullis::scim::ScimError::from)
        }
    };

    let mut blocker = db.client().await;
    let held = blocker.transaction().await.unwrap();
    held.execute(
        "SELECT 1 FROM projections.projection_states WHERE name = 'event_counts' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let mut doc = portcullis::domain::Doc::new();
    doc.insert("userName".into(), json!("rider"));
    let w = portcullis::domain::user::create(&state.store, a.org, doc, None)
        .await
        .unwrap();
    let ride = rb
        .ride(&USER_TYPE, &ctx, w.id, &sel, w.position)
        .expect("a live round runs here");
    assert_eq!(rb.riding_queued(), 1);
    held.rollback().await.unwrap();
    let row = rb.answer(ride, reached(w.position)).await.unwrap();
    let row = row.expect("the round that applied the write read it back");
    assert_eq!(row.get::<_, Uuid>(0), w.id);
    assert_eq!((rb.riding_queued(), rb.batches()), (0, 1));

    // Applied before it was offered: no round carries it.
    reached(w.position).await.unwrap();
    let ride = rb.ride(&USER_TYPE, &ctx, w.id, &sel, w.position).unwrap();
    let row = rb.answer(ride, reached(w.position)).await.unwrap();
    assert!(row.is_none(), "withdrawn: the request reads on its own");
    assert_eq!((rb.riding_queued(), rb.batches()), (0, 1));
    let (doc, _) = rb
        .by_id_at(&USER_TYPE, &ctx, w.id, &sel, w.position)
        .await
        .unwrap()
        .expect("the user");
    assert_eq!(doc["userName"], "rider");
    // Groups are not carried.
    assert!(rb.ride(&GROUP_TYPE, &ctx, w.id, &sel, w.position).is_none());
}
