//! Live rounds from known events (runtime::live::known, V27): a process alone applies its own
//! creations without reading them back from the log, writes what a replay of the log writes,
//! and reads the log when the database holds anything it does not know of.

use std::time::Duration;

use portcullis::eventstore::Position;
use portcullis::runtime::Projector;
use serde_json::json;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::read_models::models;
use crate::scim::Scim;
use crate::support::{eventually, TestDb};

const WAIT: Duration = Duration::from_secs(30);

fn projector(scim: &Scim) -> std::sync::Arc<Projector> {
    scim.app
        .state
        .projector
        .clone()
        .expect("the app runs its projections")
}

#[tokio::test]
async fn lone_creates_apply_without_reading_the_log_and_match_a_replay() {
    let db = TestDb::new().await;
    let scim = Scim::new(&db).await;
    let projector = projector(&scim);
    let (applied_before, _) = projector.known_rounds();
    let applied = || projector.known_rounds().0 - applied_before;
    let mut last = Position::ZERO;
    // Until 20 rounds applied known events: another test's open transaction (the horizon is
    // the cluster's) makes some of them read the log instead.
    for n in 0..400 {
        if applied() >= 20 {
            break;
        }
        // Keys out of order, nested values, numbers and text that JSON and jsonb spell
        // differently: what the round applies from memory must be what the log holds.
        let created = scim
            .user(
                &format!("Zoë.{n}@example.com"),
                json!({
                    "name": {"middleName": "Ÿ", "givenName": "Zoë", "familyName": format!("N{n}")},
                    "displayName": "Zoë \u{1F600} \"quoted\"",
                    "emails": [{"value": format!("z{n}@Example.com"), "type": "work", "primary": true},
                               {"value": format!("other{n}@example.org")}],
                    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User":
                        {"employeeNumber": format!("{n}"), "costCenter": "1e3", "department": "R&D"},
                }),
            )
            .await;
        let id = created["id"].as_str().unwrap();
        last = last.max(position_of(&scim, id).await);
        let read = scim.get(&format!("/Users/{id}")).await;
        assert_eq!(read.status, 200, "{:#}", read.body);
        assert_eq!(read.body["userName"], created["userName"]);
    }
    assert!(
        applied() >= 20,
        "only {} of 400 lone creates were applied from known events",
        applied()
    );

    let live = (models(&db).await, times(&db).await);
    let names = projector.names();
    for name in &names {
        projector.reset(name).await.unwrap();
    }
    scim.app
        .state
        .hub
        .wait_for_all(&names, last, WAIT)
        .await
        .unwrap();
    assert_eq!(
        (models(&db).await, times(&db).await),
        live,
        "a replay of the log differs"
    );
}

/// The position of the user's last event, from the log.
async fn position_of(scim: &Scim, id: &str) -> Position {
    let r = scim
        .app
        .state
        .pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT tx, seq FROM eventstore.events WHERE aggregate_id = $1::text::uuid \
              ORDER BY tx DESC, seq DESC LIMIT 1",
            &[&id],
        )
        .await
        .unwrap();
    Position::from_sql(r.get(0), r.get(1))
}

/// What `models` leaves out as differing between databases, and which a replay in the same
/// one must reproduce: the users' times, as the log holds them.
async fn times(db: &TestDb) -> String {
    db.client()
        .await
        .query_one(
            "SELECT json_agg(t ORDER BY user_id)::text FROM \
               (SELECT user_id, created_at, updated_at FROM projections.users) t",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn another_writers_event_in_between_makes_the_round_read_the_log() {
    let db = TestDb::new().await;
    let scim = Scim::new(&db).await;
    let projector = projector(&scim);
    // A first create: the live rounds have found the process alone.
    scim.user("first", json!({})).await;

    // Another writer's transaction takes its id before the next create and commits after it.
    let mut other = db.client().await;
    let tx = other.transaction().await.unwrap();
    let foreign = Uuid::new_v4();
    let payload = json!({"attributes": {"userName": "foreign", "schemas": [
        "urn:ietf:params:scim:schemas:core:2.0:User"]}});
    tx.execute(
        "INSERT INTO eventstore.events \
           (tx, org_id, aggregate_type, aggregate_id, version, event_type, payload, metadata) \
         VALUES (eventstore.current_tx(), $1, 'user', $2, 1, 'user.added', $3, '{}')",
        &[&scim.org, &foreign, &payload],
    )
    .await
    .unwrap();
    let (_, declined_before) = projector.known_rounds();
    let (second, ()) = tokio::join!(scim.user("second", json!({})), async {
        eventually(
            "a round from known events to find the open transaction",
            WAIT,
            || {
                let declined = projector.known_rounds().1;
                async move { (declined > declined_before).then_some(()) }
            },
        )
        .await;
        tx.commit().await.unwrap();
    });

    // Both are projected: the create read back, and the other writer's user too.
    assert_eq!(second["userName"], "second");
    let read = scim.get(&format!("/Users/{foreign}")).await;
    assert_eq!(read.status, 200, "{:#}", read.body);
    assert_eq!(read.body["userName"], "foreign");
}

/// Calls projections.known_round for the projection `known_test` in a transaction of its
/// own: `Ok` when it passed, else the error's code and message.
async fn check(
    db: &TestDb,
    from: Position,
    to: Position,
    types: Option<Vec<&str>>,
    expected: i64,
) -> Result<(), (SqlState, String)> {
    let mut c = db.client().await;
    let tx = c.transaction().await.unwrap();
    let r = tx
        .query_one(
            "SELECT projections.known_round(ARRAY['known_test'], $1, $2, $3, $4, $5, $6, $7)",
            &[
                &from.tx_sql(),
                &from.seq,
                &to.tx_sql(),
                &to.seq,
                &types,
                &expected,
                &Uuid::new_v4(),
            ],
        )
        .await;
    r.map(|_| ()).map_err(|e| {
        let db = e.as_db_error().expect("a database error");
        (db.code().clone(), db.message().to_string())
    })
}

/// Waits until the check passes: every test shares the server, and another one's open
/// transaction holds the horizon (cluster-wide) below `to` for a while.
async fn passes(db: &TestDb, from: Position, to: Position, types: Option<Vec<&str>>, n: i64) {
    eventually("the check to pass", WAIT, || {
        let types = types.clone();
        async move { check(db, from, to, types, n).await.ok() }
    })
    .await
}

fn refused(r: Result<(), (SqlState, String)>, code: SqlState, says: &str) {
    match r {
        Err((c, message)) => {
            assert_eq!(c, code, "{message}");
            assert!(message.contains(says), "{message}");
        }
        Ok(()) => panic!("the check passed; expected: {says}"),
    }
}

#[tokio::test]
async fn the_check_refuses_whatever_the_first_trip_would_have_seen() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let insert = "INSERT INTO eventstore.events \
           (tx, org_id, aggregate_type, aggregate_id, version, event_type, payload, metadata) \
         SELECT eventstore.current_tx(), gen_random_uuid(), 'thing', gen_random_uuid(), 1, t, '{}', '{}' \
           FROM unnest($1::text[]) AS t RETURNING tx, seq";
    let at = |r: &tokio_postgres::Row| Position::from_sql(r.get(0), r.get(1));
    let first = c.query(insert, &[&vec!["thing.made"]]).await.unwrap();
    let from = at(&first[0]);
    c.execute(
        "INSERT INTO projections.projection_states (name, position_tx, position_seq) VALUES ('known_test', $1, $2)",
        &[&from.tx_sql(), &from.seq],
    )
    .await
    .unwrap();
    let later = c
        .query(insert, &[&vec!["thing.made", "thing.seen", "thing.made"]])
        .await
        .unwrap();
    let to = at(&later[2]);
    let made = Some(vec!["thing.made"]);

    passes(&db, from, to, None, 3).await;
    passes(&db, from, to, made.clone(), 2).await;
    let serialization = SqlState::T_R_SERIALIZATION_FAILURE;
    // An event the round does not know of lies in between (the horizon is past `to` now).
    let unknown = "events in the range";
    refused(
        check(&db, from, to, None, 2).await,
        serialization.clone(),
        unknown,
    );
    refused(
        check(&db, from, to, made.clone(), 1).await,
        serialization.clone(),
        unknown,
    );
    // The projection is not where the round thinks.
    let elsewhere = "projections are where the round expected them";
    refused(
        check(&db, at(&later[0]), to, None, 2).await,
        serialization.clone(),
        elsewhere,
    );

    // A transaction that may still add an event before `to` is open.
    let mut open = db.client().await;
    let held = open.transaction().await.unwrap();
    held.execute("SELECT eventstore.current_tx()", &[])
        .await
        .unwrap();
    let after = at(&c.query(insert, &[&vec!["thing.made"]]).await.unwrap()[0]);
    refused(
        check(&db, from, after, None, 4).await,
        serialization,
        "still open",
    );
    held.rollback().await.unwrap();
    passes(&db, from, after, None, 4).await;

    // A runner holds the projection.
    let mut runner = db.client().await;
    let running = runner.transaction().await.unwrap();
    running
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('portcullis.projection/' || 'known_test', 0))",
            &[],
        )
        .await
        .unwrap();
    refused(
        check(&db, from, to, None, 3).await,
        SqlState::LOCK_NOT_AVAILABLE,
        "locked",
    );
}
