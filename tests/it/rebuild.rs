//! Blue/green rebuilds: a new copy built beside the live model and swapped in atomically,
//! under reads and writes, across a killed builder, with two processes.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis::eventstore::{EventStore, NotifyMode, StoreOptions};
use portcullis::runtime::{ProgressHub, Projector, RunnerOptions};
use serde_json::json;

use crate::scim::{Scim, USER};
use crate::support::{eventually, TestDb};

const WAIT: Duration = Duration::from_secs(60);

async fn rebuild_done(db: &TestDb) {
    let c = db.client().await;
    eventually("the rebuild is swapped in", WAIT, || async {
        let n: i64 = c
            .query_one("SELECT count(*) FROM projections.rebuilds", &[])
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_under_reads_and_writes_is_never_seen_partial_and_swaps_atomically() {
    let db = TestDb::new().await;
    let s = Arc::new(Scim::new(&db).await);
    for i in 0..150 {
        s.user(&format!("before{i}"), json!({})).await;
    }
    let acked = Arc::new(AtomicI64::new(150));
    s.app
        .state
        .projector
        .as_ref()
        .unwrap()
        .rebuild("users")
        .await
        .unwrap();
    let writer = {
        let (s, acked) = (s.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0..60 {
                let body = json!({"schemas": [USER], "userName": format!("during{i}")});
                let r = s.post("/Users", &body).await;
                assert_eq!(r.status, 201, "{:#}", r.body);
                acked.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() || reads < 20 {
        let at_least = acked.load(Ordering::SeqCst);
        let r = s.get("/Users?count=0").await;
        assert_eq!(r.status, 200, "{:#}", r.body);
        let total = r.body["totalResults"].as_i64().unwrap();
        assert!(
            total >= at_least,
            "a read saw {total} users, {at_least} were acknowledged"
        );
        reads += 1;
    }
    writer.await.unwrap();
    rebuild_done(&db).await;
    let r = s.get("/Users?count=0").await;
    assert_eq!(r.body["totalResults"], 210);
    let one = s.get("/Users?filter=userName%20eq%20%22during7%22").await;
    assert_eq!(
        one.body["totalResults"], 1,
        "the swapped-in model serves filters"
    );
    let c = db.client().await;
    let names: Vec<String> = c
        .query(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'projections' AND tablename = 'users' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        names.contains(&"users_org_user_name_idx".to_string()),
        "{names:?}"
    );
}

/// A projector of its own: one "process".
async fn process(db: &TestDb, batch: i64) -> (Projector, ProgressHub) {
    let opts = RunnerOptions {
        catchup_batch: batch,
        ..RunnerOptions::default()
    };
    process_with(db, opts).await
}

async fn process_with(db: &TestDb, opts: RunnerOptions) -> (Projector, ProgressHub) {
    let pool = portcullis::db::pool(&db.url, 8).unwrap();
    let store = EventStore::new(
        pool.clone(),
        StoreOptions {
            notify: NotifyMode::Coalesced,
            ..StoreOptions::default()
        },
    );
    let hub = ProgressHub::start(&db.url, pool.clone()).await.unwrap();
    let p = Projector::start(
        &db.url,
        pool,
        store,
        hub.clone(),
        portcullis::read_models::all(),
        opts,
    )
    .await
    .unwrap();
    (p, hub)
}

async fn counts(db: &TestDb) -> String {
    db.client()
        .await
        .query_one(
            "SELECT coalesce(json_agg(c ORDER BY org_id, event_type)::text, '') FROM \
             (SELECT org_id, event_type, events FROM projections.event_counts) c",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_builder_resumes_and_two_processes_apply_every_event_once() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    for i in 0..120 {
        s.user(&format!("u{i}"), json!({})).await;
    }
    let live = counts(&db).await;
    // The service's own projector stops: two other "processes" share the work.
    s.app.stop().await;
    // Holding the projection's lock, the test keeps the swap from happening (the builder
    // waits for it) while the copy fills up.
    let holder = db.client().await;
    holder
        .batch_execute(
            "SELECT pg_advisory_lock(hashtextextended('portcullis.projection/event_counts', 0))",
        )
        .await
        .unwrap();
    let (a, _) = process(&db, 10).await;
    a.rebuild("event_counts").await.unwrap();
    let c = db.client().await;
    eventually("the copy has made progress", WAIT, || async {
        let n: i64 = c
            .query_one(
                "SELECT coalesce(max(events_applied), 0) FROM projections.rebuilds",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n > 0).then_some(())
    })
    .await;
    // Killed mid-rebuild: its batch in flight is rolled back with its connections.
    a.stop();
    let left: i64 = c
        .query_one("SELECT count(*) FROM projections.rebuilds", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1, "the rebuild survives its builder");
    assert_eq!(counts(&db).await, live, "the live model served on, whole");
    holder
        .batch_execute(
            "SELECT pg_advisory_unlock(hashtextextended('portcullis.projection/event_counts', 0))",
        )
        .await
        .unwrap();
    let (b1, _) = process(&db, 10).await;
    let (b2, _) = process(&db, 10).await;
    rebuild_done(&db).await;
    assert_eq!(
        counts(&db).await,
        live,
        "the rebuilt counts: every event once, though two processes could build"
    );
    drop((b1, b2));
}

#[tokio::test]
async fn deferred_indexes_are_built_once_each_and_nothing_else_is_run() {
    let db = TestDb::new().await;
    // The service registers the projections; stopped, it builds nothing itself.
    Scim::new(&db).await.app.stop().await;
    let c = db.client().await;
    c.execute("SELECT projections.request_rebuild('users')", &[])
        .await
        .unwrap();
    let deferred: Vec<String> = c
        .query_one(
            "SELECT deferred_indexes FROM projections.rebuilds WHERE projection = 'users'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        deferred.len() >= 3,
        "users has secondary indexes: {deferred:?}"
    );
    let build = |stmt: String| {
        let c = &c;
        async move {
            c.query_one(
                "SELECT projections.build_rebuild_index('users', $1)",
                &[&stmt],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
        }
    };
    // A statement that is not on the rebuild's list is never run.
    assert!(!build("DROP TABLE projections.users".into()).await);
    assert!(!build(deferred[0].replace("projections_rebuild.", "projections.")).await);
    // Two builders at once: each index is built by one of them.
    let other = db.client().await;
    let again = deferred[0].clone();
    let (first, second) = tokio::join!(build(deferred[0].clone()), async {
        other
            .query_one(
                "SELECT projections.build_rebuild_index('users', $1)",
                &[&again],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    });
    assert!(first != second, "exactly one builds it: {first} {second}");
    for stmt in &deferred[1..] {
        assert!(build(stmt.clone()).await);
    }
    let (left, copies): (Vec<String>, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT deferred_indexes FROM projections.rebuilds WHERE projection = 'users'), \
                        (SELECT count(*) FROM pg_indexes WHERE schemaname = 'projections_rebuild' \
                            AND tablename IN ('users', 'user_emails'))",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(left.is_empty(), "{left:?}");
    let live: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'projections' \
                AND tablename IN ('users', 'user_emails')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(copies, live, "the copy has every index the live model has");
}

/// The users model, every row of both its tables, as one string.
async fn users_model(db: &TestDb) -> String {
    db.client()
        .await
        .query_one(
            "SELECT coalesce((SELECT json_agg(u ORDER BY user_id)::text FROM projections.users u), '') \
                 || coalesce((SELECT json_agg(e ORDER BY user_id, ord)::text FROM projections.user_emails e), '')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

const USERS_TABLE: &str = "SELECT 'projections.users'::regclass::oid";

/// Resets users and fills it again from zero; says whether the live table was swapped for a
/// rebuilt copy meanwhile. `live`: the reset goes through a process that runs (its runner
/// following the log), else it is done in SQL before a process of its own starts.
async fn fill_from_zero(db: &TestDb, rebuild_from_zero_at: i64, live: bool) -> bool {
    let c = db.client().await;
    let pool = portcullis::db::pool(&db.url, 1).unwrap();
    let head = portcullis::eventstore::head(&pool.get().await.unwrap())
        .await
        .unwrap();
    let before: u32 = c.query_one(USERS_TABLE, &[]).await.unwrap().get(0);
    if !live {
        c.execute("SELECT projections.reset('users')", &[])
            .await
            .unwrap();
    }
    let opts = RunnerOptions {
        catchup_batch: 10,
        rebuild_from_zero_at: Some(rebuild_from_zero_at),
        ..RunnerOptions::default()
    };
    let (p, hub) = process_with(db, opts).await;
    if live {
        hub.wait_for_position("users", head, WAIT).await.unwrap();
        p.reset("users").await.unwrap();
    }
    hub.wait_for_position("users", head, WAIT).await.unwrap();
    rebuild_done(db).await;
    p.stop();
    let after: u32 = c.query_one(USERS_TABLE, &[]).await.unwrap().get(0);
    before != after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_at_zero_over_a_long_log_is_filled_by_a_rebuild_into_the_same_rows() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    for i in 0..40 {
        let email = json!({"emails": [{"value": format!("z{i}@example.com"), "primary": true}]});
        let id = s.user(&format!("z{i}"), email).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        if i % 3 == 0 {
            let op = json!([{"op": "replace", "path": "displayName", "value": format!("Z {i}")}]);
            assert_eq!(s.patch(&format!("/Users/{id}"), op).await.status, 200);
        }
        if i % 7 == 0 {
            assert_eq!(s.delete(&format!("/Users/{id}")).await.status, 204);
        }
    }
    let served = users_model(&db).await;
    s.app.stop().await;
    // About 60 events of its types: in place below the threshold, by a rebuild from it on.
    assert!(!fill_from_zero(&db, 1000, false).await, "filled in place");
    assert_eq!(users_model(&db).await, served);
    assert!(fill_from_zero(&db, 50, false).await, "filled by a rebuild");
    assert_eq!(users_model(&db).await, served, "the same rows either way");
    assert!(
        fill_from_zero(&db, 50, true).await,
        "a reset under a running service is filled by a rebuild too"
    );
    assert_eq!(users_model(&db).await, served);
    let c = db.client().await;
    let (rebuilding, complete): (bool, bool) = {
        let r = c
            .query_one(
                "SELECT h.rebuilding, s.complete_at_tx IS NULL FROM projections.health h \
                   JOIN projections.projection_states s USING (name) WHERE name = 'users'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(!rebuilding && complete, "{rebuilding} {complete}");
}
