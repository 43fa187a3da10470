//! The live round's progress NOTIFY goes out only while another process's hub listens
//! (V26): a process alone hears of its rounds directly, and a hub that starts while rounds
//! are quiet still sees every write.

use std::time::Duration;

use portcullis::eventstore::Position;
use portcullis::listener::{self, ListenEvent};
use portcullis::runtime::{ProgressHub, PROGRESS_CHANNEL};
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::scim::Scim;
use crate::support::{eventually, TestDb};

const WAIT: Duration = Duration::from_secs(30);

/// Whether a live round of the process whose hub is `own` would be quiet now.
async fn quiet(db: &TestDb, own: Uuid) -> bool {
    db.client()
        .await
        .query_one("SELECT projections.quiet_progress($1)", &[&own])
        .await
        .unwrap()
        .get(0)
}

/// A LISTEN connection on projection_progress that is no hub (it registers nowhere).
async fn overhear(db: &TestDb) -> mpsc::Receiver<ListenEvent> {
    let (mut heard, _) = listener::spawn(db.url.clone(), vec![PROGRESS_CHANNEL.into()], "test");
    assert_eq!(heard.recv().await, Some(ListenEvent::Connected));
    heard
}

/// The next progress notification's payload.
async fn next(heard: &mut mpsc::Receiver<ListenEvent>) -> String {
    match tokio::time::timeout(WAIT, heard.recv()).await {
        Ok(Some(ListenEvent::Notification { payload, .. })) => payload,
        Ok(Some(ListenEvent::Connected)) => panic!("the test's listener reconnected"),
        Ok(None) => panic!("the test's listener ended"),
        Err(_) => panic!("no progress notification within {WAIT:?}"),
    }
}

/// Sends `marker` and returns every payload heard before it: notifications arrive in commit
/// order, so all that were committed before are in.
async fn heard_until_marker(
    db: &TestDb,
    heard: &mut mpsc::Receiver<ListenEvent>,
    marker: &str,
) -> Vec<String> {
    db.client()
        .await
        .execute("SELECT pg_notify($1, $2)", &[&PROGRESS_CHANNEL, &marker])
        .await
        .unwrap();
    let mut before = Vec::new();
    loop {
        let payload = next(heard).await;
        if payload == marker {
            return before;
        }
        before.push(payload);
    }
}

#[tokio::test]
async fn a_round_is_quiet_only_while_no_other_process_hub_listens() {
    let db = TestDb::new().await;
    let pool = portcullis::db::pool(&db.url, 4).unwrap();
    let a = ProgressHub::start(&db.url, pool.clone()).await.unwrap();
    assert!(quiet(&db, a.id()).await, "alone, nobody else hears");
    assert!(
        !quiet(&db, Uuid::new_v4()).await,
        "to another process, a is a listener"
    );

    let b = ProgressHub::start(&db.url, pool.clone()).await.unwrap();
    assert!(!quiet(&db, a.id()).await, "b listens");
    assert!(!quiet(&db, b.id()).await, "a listens");

    // b's process ends: its LISTEN connection goes, and its row no longer counts.
    drop(b);
    eventually("b's LISTEN connection to end", WAIT, || async {
        quiet(&db, a.id()).await.then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_quiet_round_announces_nothing_unless_it_completes_a_reset_model() {
    let db = TestDb::new().await;
    let mut heard = overhear(&db).await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO projections.projection_states (name, position_tx, position_seq) VALUES ('q', 0, 0)",
    )
    .await
    .unwrap();
    assert_eq!(next(&mut heard).await, "q/0/0/0/0");
    let round_to = |tx: i64| {
        format!(
            "BEGIN; SELECT projections.quiet_progress('{}'); \
             UPDATE projections.projection_states SET position_tx = {tx}, position_seq = 1 \
              WHERE name = 'q'; COMMIT;",
            Uuid::new_v4()
        )
    };

    c.batch_execute(&round_to(10)).await.unwrap();
    let before = heard_until_marker(&db, &mut heard, "marker/1/1/0/0").await;
    assert!(before.is_empty(), "a quiet round sent {before:?}");

    // Anything else that moves a position (a runner, a reset, a tool) is announced.
    c.batch_execute(
        "UPDATE projections.projection_states SET position_tx = 11, position_seq = 1 WHERE name = 'q'",
    )
    .await
    .unwrap();
    assert_eq!(next(&mut heard).await, "q/11/1/0/0");

    // A reset model is announced by quiet rounds too, up to the one that completes it: hubs,
    // this process's own among them, learn of that from the notification.
    c.batch_execute(
        "UPDATE projections.projection_states SET complete_at_tx = 20, complete_at_seq = 1 WHERE name = 'q'",
    )
    .await
    .unwrap();
    c.batch_execute(&round_to(15)).await.unwrap();
    assert_eq!(next(&mut heard).await, "q/15/1/0/1");
    c.batch_execute(&round_to(20)).await.unwrap();
    assert_eq!(next(&mut heard).await, "q/20/1/0/0");
    c.batch_execute(&round_to(21)).await.unwrap();
    let before = heard_until_marker(&db, &mut heard, "marker/2/1/0/0").await;
    assert!(before.is_empty(), "complete again, quiet again: {before:?}");
}

fn position(r: &crate::scim::Resp) -> Position {
    r.header("portcullis-position")
        .expect("a write answers with its position")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_hub_that_starts_while_a_process_writes_alone_sees_every_write() {
    let db = TestDb::new().await;
    let scim = Scim::new(&db).await;
    let own = scim.app.state.hub.id();
    assert!(quiet(&db, own).await);
    let create = |n: usize| {
        let scim = &scim;
        async move {
            let r = scim
                .post("/Users", &json!({"userName": format!("user{n}")}))
                .await;
            assert_eq!(r.status, 201, "{:#}", r.body);
            position(&r)
        }
    };

    // Alone, the process's rounds announce (next to) nothing, and its writes are read back.
    let mut heard = overhear(&db).await;
    for n in 0..10 {
        create(n).await;
    }
    let before = heard_until_marker(&db, &mut heard, "marker/1/1/0/0").await;
    let announced = before.iter().filter(|p| p.starts_with("users/")).count();
    assert!(
        announced < 5,
        "10 writes alone announced {announced} times: {before:?}"
    );

    // Another process's hub starts while writes go on; it must see every one of them.
    let pool = portcullis::db::pool(&db.url, 4).unwrap();
    let (other, written) = tokio::join!(ProgressHub::start(&db.url, pool), async {
        let mut written = Vec::new();
        for n in 10..60 {
            written.push(create(n).await);
        }
        written
    });
    let other = other.unwrap();
    for p in written {
        other.wait_for_position("users", p, WAIT).await.unwrap();
    }
    assert!(!quiet(&db, own).await, "another process's hub listens now");
}
