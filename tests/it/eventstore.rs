use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use portcullis::eventstore::{
    self, Aggregate, Append, EventFilter, EventStore, ExpectedVersion, NewEvent, NotifyMode,
    Position, StoreError, StoreOptions, UniqueValue,
};
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::support::{eventually, TestDb};

/// Starts the pushes `make(i)` builds for i in 0..n all at once (behind a barrier); returns
/// how many succeeded. Every loser must fail as `expected` says.
async fn race(
    store: &EventStore,
    n: usize,
    make: impl Fn(usize) -> Vec<Append>,
    expected: impl Fn(&StoreError) -> bool,
) -> usize {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (store, barrier, appends) = (store.clone(), barrier.clone(), make(i));
            tokio::spawn(async move {
                barrier.wait().await;
                store.push(&appends).await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if expected(&e) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    ok
}

fn opts(notify: NotifyMode) -> StoreOptions {
    StoreOptions {
        notify,
        ..StoreOptions::default()
    }
}

fn user(id: Uuid) -> Aggregate {
    Aggregate::new("user", id)
}

fn added(org: Uuid, id: Uuid, name: &str) -> Append {
    Append::new(org, user(id), ExpectedVersion::NEW)
        .event(NewEvent::new("user.added", json!({ "userName": name })))
}

async fn count_events(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT count(*) FROM eventstore.events", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn push_load_and_read_after_round_trip() {
    let db = TestDb::new().await;
    let store = db.store(opts(NotifyMode::Coalesced));
    let (org, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());

    let p1 = store.push(&[added(org, a, "alice")]).await.unwrap();
    let p2 = store
        .push(&[Append::new(org, user(a), ExpectedVersion::Exact(1))
            .event(NewEvent::new("user.renamed", json!({"userName": "alicia"})))
            .event(
                NewEvent::new("user.deactivated", json!({}))
                    .with_metadata(json!({"request_id": "r1"})),
            )])
        .await
        .unwrap();
    let p3 = store
        .push(&[added(Uuid::new_v4(), b, "bob")])
        .await
        .unwrap();
    assert_eq!(p2.positions.len(), 2);
    assert!(p1.last() < p2.positions[0] && p2.positions[0] < p2.last() && p2.last() < p3.last());

    let client = store.pool().get().await.unwrap();
    // Readers see an event once every transaction that could commit before it has ended; a
    // transaction of another test on the same server may hold that back for a moment.
    eventually(
        "the horizon to pass the last push",
        Duration::from_secs(20),
        || async { (eventstore::head(&client).await.unwrap() == p3.last()).then_some(()) },
    )
    .await;
    let events = eventstore::load(&client, &user(a)).await.unwrap();
    let kinds: Vec<_> = events
        .iter()
        .map(|e| (e.version, e.event_type.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (1, "user.added"),
            (2, "user.renamed"),
            (3, "user.deactivated")
        ]
    );
    assert_eq!(events[2].metadata, json!({"request_id": "r1"}));
    assert_eq!(events[0].org_id, org);

    let all = eventstore::read_after(&client, Position::ZERO, &EventFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));

    let after_first = eventstore::read_after(&client, p1.last(), &EventFilter::default(), 2)
        .await
        .unwrap();
    assert_eq!(after_first.len(), 2, "limit applies");
    assert_eq!(after_first[0].position, p2.positions[0]);

    let by_type = EventFilter {
        event_types: Some(vec!["user.added".into()]),
        ..Default::default()
    };
    let added_only = eventstore::read_after(&client, Position::ZERO, &by_type, 100)
        .await
        .unwrap();
    assert_eq!(added_only.len(), 2);
    let by_org = EventFilter {
        org_id: Some(org),
        ..Default::default()
    };
    assert_eq!(
        eventstore::read_after(&client, Position::ZERO, &by_org, 100)
            .await
            .unwrap()
            .len(),
        3
    );
    let by_agg = EventFilter {
        aggregate: Some(user(b)),
        ..Default::default()
    };
    let only_b = eventstore::read_after(&client, Position::ZERO, &by_agg, 100)
        .await
        .unwrap();
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].payload, json!({"userName": "bob"}));
}

/// What a reader does with the events table: the real one reads below the horizon; the naive
/// one takes everything after its cursor, as a bigserial reader would.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Reader {
    Horizon,
    Naive,
}

async fn read_batch(
    client: &deadpool_postgres::Client,
    kind: Reader,
    after: Position,
) -> Vec<Position> {
    match kind {
        Reader::Horizon => eventstore::read_after(client, after, &EventFilter::default(), 500)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.position)
            .collect(),
        Reader::Naive => client
            .query(
                "SELECT tx, seq FROM eventstore.events WHERE (tx, seq) > ($1, $2) ORDER BY tx, seq LIMIT 500",
                &[&after.tx_sql(), &after.seq],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| Position::from_sql(r.get(0), r.get(1)))
            .collect(),
    }
}

/// Follows the store from its own cursor while writers run; returns every position it read.
async fn follow(
    store: EventStore,
    kind: Reader,
    done: Arc<AtomicBool>,
    total: usize,
) -> Vec<Position> {
    let client = store.pool().get().await.unwrap();
    let mut wake = store.subscribe();
    let mut cursor = Position::ZERO;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let batch = read_batch(&client, kind, cursor).await;
        if let Some(last) = batch.last() {
            cursor = *last;
            seen.extend(batch);
            continue;
        }
        if done.load(Ordering::SeqCst) && (seen.len() >= total || kind == Reader::Naive) {
            // Writers are finished: one last read sees everything they committed.
            let rest = read_batch(&client, kind, cursor).await;
            if rest.is_empty() && (kind == Reader::Naive || seen.len() >= total) {
                return seen;
            }
            seen.extend(rest);
            continue;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{kind:?} reader: {} of {total} events after 60 s",
            seen.len()
        );
        // Wake on the next commit of this process; the bound covers a horizon held back by a
        // transaction outside this test (other tests share the server).
        let _ = tokio::time::timeout(Duration::from_millis(5), wake.changed()).await;
    }
}

async fn concurrent_writers_with_readers(
    writers: usize,
    txs_per_writer: usize,
) -> (Vec<Position>, Vec<Position>, Vec<Position>) {
    let db = TestDb::new().await;
    let store = db.store(opts(NotifyMode::Coalesced));
    let org = Uuid::new_v4();
    let done = Arc::new(AtomicBool::new(false));
    let total = writers * txs_per_writer;

    let horizon = tokio::spawn(follow(store.clone(), Reader::Horizon, done.clone(), total));
    let naive = tokio::spawn(follow(store.clone(), Reader::Naive, done.clone(), total));

    let mut tasks = Vec::new();
    for _ in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = store.pool().get().await.unwrap();
            for _ in 0..txs_per_writer {
                let tx = client.transaction().await.unwrap();
                let pushed = store
                    .push_in(&tx, &[added(org, Uuid::new_v4(), "x")])
                    .await
                    .unwrap();
                // A deliberate delay: transactions that stay open 0-20 ms commit out of order.
                let hold = rand::random_range(0..=20u64);
                tokio::time::sleep(Duration::from_millis(hold)).await;
                tx.commit().await.unwrap();
                store.committed(&pushed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let horizon_seen = horizon.await.unwrap();
    let naive_seen = naive.await.unwrap();
    let all: Vec<Position> = db
        .client()
        .await
        .query(
            "SELECT tx, seq FROM eventstore.events ORDER BY tx, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| Position::from_sql(r.get(0), r.get(1)))
        .collect();
    assert_eq!(all.len(), total);
    (all, horizon_seen, naive_seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_event_is_skipped_under_concurrent_out_of_order_commits() {
    let (all, horizon, naive) = concurrent_writers_with_readers(16, 150).await;

    // The horizon reader: every event exactly once, in (tx, seq) order.
    assert!(
        horizon.windows(2).all(|w| w[0] < w[1]),
        "horizon reader read out of order or twice"
    );
    assert_eq!(horizon, all, "horizon reader missed events");

    // The same run with a naive `position > last` reader: it moves past transactions that
    // commit late and never sees their events. This is what shows the harness is sensitive.
    let naive_set: HashSet<_> = naive.iter().collect();
    let skipped = all.iter().filter(|p| !naive_set.contains(p)).count();
    assert!(
        skipped > 0,
        "the naive reader saw all {} events; the harness did not provoke out-of-order commits",
        all.len()
    );
}

#[tokio::test]
async fn a_version_conflict_names_the_aggregate_and_both_versions() {
    let db = TestDb::new().await;
    let store = db.store(opts(NotifyMode::Coalesced));
    let (org, id) = (Uuid::new_v4(), Uuid::new_v4());
    store.push(&[added(org, id, "a")]).await.unwrap();

    // Writer A holds its transaction open after pushing at version 1.
    let mut ca = store.pool().get().await.unwrap();
    let ta = ca.transaction().await.unwrap();
    let rename = move |v| {
        Append::new(org, user(id), ExpectedVersion::Exact(v))
            .event(NewEvent::new("user.renamed", json!({})))
    };
    store.push_in(&ta, &[rename(1)]).await.unwrap();

    // Writer B pushes at the same expected version and must wait for A.
    let b = tokio::spawn({
        let store = store.clone();
        async move { store.push(&[rename(1)]).await }
    });
    let probe = db.client().await;
    eventually("writer B to wait for writer A's lock", Duration::from_secs(10), || async {
        let waiting: i64 = probe
            .query_one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())", &[])
            .await
            .unwrap()
            .get(0);
        (waiting > 0).then_some(())
    })
    .await;
    ta.commit().await.unwrap();

    match b.await.unwrap() {
        Err(StoreError::Conflict {
            aggregate,
            expected,
            actual,
        }) => {
            assert_eq!(aggregate, user(id));
            assert_eq!(expected, ExpectedVersion::Exact(1));
            assert_eq!(actual, 2);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(count_events(&db).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_at_one_version_exactly_one_wins() {
    let db = TestDb::new().await;
    let store = db.store(opts(NotifyMode::Coalesced));
    let (org, id) = (Uuid::new_v4(), Uuid::new_v4());
    store.push(&[added(org, id, "a")]).await.unwrap();
    let ok = race(
        &store,
        12,
        |i| {
            vec![Append::new(org, user(id), ExpectedVersion::Exact(1))
                .event(NewEvent::new("user.renamed", json!({ "n": i })))]
        },
        |e| matches!(e, StoreError::Conflict { actual: 2, .. }),
    )
    .await;
    assert_eq!(ok, 1);
    assert_eq!(count_events(&db).await, 2);
}

#[tokio::test]
async fn unique_values_clash_case_insensitively_and_are_released() {
    let db = TestDb::new().await;
    let store = db.store(opts(NotifyMode::Coalesced));
    let (org, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let name = |v: &str| UniqueValue::case_insensitive("user.username", v);

    store
        .push(&[added(org, a, "Alice").claim(name("Alice"))])
        .await
        .unwrap();
    match store
        .push(&[added(org, b, "alice").claim(name("alice"))])
        .await
    {
        Err(StoreError::AlreadyExists { constraint, value }) => {
            assert_eq!(constraint, "user.username");
            assert_eq!(value, "alice");
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(count_events(&db).await, 1, "the refused push wrote nothing");

    // Same value in another org, and a case-sensitive constraint, do not clash.
    store
        .push(&[added(Uuid::new_v4(), Uuid::new_v4(), "alice").claim(name("alice"))])
        .await
        .unwrap();
    store
        .push(&[added(org, Uuid::new_v4(), "x").claim(UniqueValue::exact("user.external_id", "X"))])
        .await
        .unwrap();
    store
        .push(&[added(org, Uuid::new_v4(), "y").claim(UniqueValue::exact("user.external_id", "x"))])
        .await
        .unwrap();

    // Renaming releases the old value in the same transaction; then b can take it.
    store
        .push(&[Append::new(org, user(a), ExpectedVersion::Exact(1))
            .event(NewEvent::new("user.renamed", json!({"userName": "alice2"})))
            .release(name("Alice"))
            .claim(name("alice2"))])
        .await
        .unwrap();
    store
        .push(&[added(org, b, "ALICE").claim(name("ALICE"))])
        .await
        .unwrap();
    let holder: Uuid = db
        .client()
        .await
        .query_one(
            "SELECT aggregate_id FROM eventstore.unique_constraints WHERE org_id = $1 AND unique_value = 'alice'",
            &[&org],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(holder, b);
}

#[tokio::test]
async fn a_creating_push_with_one_value_taken_stores_none_of_its_claims() {
    let db = TestDb::new().await;
    let store = db.store(opts(NotifyMode::Coalesced));
    let org = Uuid::new_v4();
    let name = |v: &str| UniqueValue::case_insensitive("user.username", v);
    store
        .push(&[added(org, Uuid::new_v4(), "alice").claim(name("alice"))])
        .await
        .unwrap();
    // Two creations in one push: the first claims a free value, the second a taken one.
    let refused = store
        .push(&[
            added(org, Uuid::new_v4(), "carol").claim(name("carol")),
            added(org, Uuid::new_v4(), "Alice")
                .claim(name("Alice"))
                .claim(UniqueValue::exact("user.external_id", "e-1")),
        ])
        .await;
    match refused {
        Err(StoreError::AlreadyExists { constraint, value }) => {
            assert_eq!(
                (constraint.as_str(), value.as_str()),
                ("user.username", "Alice")
            );
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let claims: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM eventstore.unique_constraints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(claims, 1, "only alice's first claim stands");
    assert_eq!(count_events(&db).await, 1, "the refused push wrote nothing");
    // The free values are free still.
    store
        .push(&[added(org, Uuid::new_v4(), "carol")
            .claim(name("carol"))
            .claim(UniqueValue::exact("user.external_id", "e-1"))])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_one_value_exactly_one_wins() {
    let db = TestDb::new().await;
    let store = db.store(opts(NotifyMode::Coalesced));
    let org = Uuid::new_v4();
    let spellings = ["bob", "Bob", "BOB", "bOb"];
    let ok = race(
        &store,
        16,
        |i| {
            let v = spellings[i % 4];
            vec![added(org, Uuid::new_v4(), v)
                .claim(UniqueValue::case_insensitive("user.username", v))]
        },
        |e| matches!(e, StoreError::AlreadyExists { .. }),
    )
    .await;
    assert_eq!(ok, 1);
    assert_eq!(count_events(&db).await, 1);
}

/// A LISTEN connection driven by hand, as tokio-postgres needs for notifications.
async fn listen(
    db: &TestDb,
    channel: &str,
) -> (tokio_postgres::Client, mpsc::UnboundedReceiver<String>) {
    let (client, mut conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .unwrap();
    (client, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no notification within 10 s")
        .expect("listener closed")
}

#[tokio::test]
async fn trigger_mode_notifies_the_pushed_position() {
    let db = TestDb::new().await;
    let (_l, mut rx) = listen(&db, "eventstore_events").await;
    let store = db.store(opts(NotifyMode::Trigger));
    let pushed = store
        .push(&[
            added(Uuid::new_v4(), Uuid::new_v4(), "a"),
            added(Uuid::new_v4(), Uuid::new_v4(), "b"),
        ])
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        pushed.last().to_string(),
        "one NOTIFY with the highest position"
    );
}

#[tokio::test]
async fn opt_out_mode_skips_the_trigger_and_sends_a_coalesced_wake_up() {
    let db = TestDb::new().await;
    let (_l, mut rx) = listen(&db, "eventstore_events").await;
    let store = db.store(opts(NotifyMode::Coalesced));
    let mut local = store.subscribe();

    // Committed but not announced: the trigger stayed silent. The marker sent afterwards is
    // the first thing the listener gets (notifications arrive in commit order).
    let mut c = store.pool().get().await.unwrap();
    let tx = c.transaction().await.unwrap();
    let silent = store
        .push_in(&tx, &[added(Uuid::new_v4(), Uuid::new_v4(), "a")])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    db.client()
        .await
        .batch_execute("NOTIFY eventstore_events, 'marker'")
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, "marker");

    // A push through the store wakes this process at once and others by the coalescer.
    let pushed = store
        .push(&[added(Uuid::new_v4(), Uuid::new_v4(), "b")])
        .await
        .unwrap();
    assert!(pushed.last() > silent.last());
    tokio::time::timeout(
        Duration::from_secs(5),
        local.wait_for(|p| *p >= pushed.last()),
    )
    .await
    .expect("in-process wake-up")
    .unwrap();
    let payload: Position = next(&mut rx).await.parse().unwrap();
    assert!(payload >= pushed.last());
}

#[tokio::test]
async fn a_plain_sql_insert_wakes_listeners() {
    let db = TestDb::new().await;
    let (_l, mut rx) = listen(&db, "eventstore_events").await;
    let c = db.client().await;
    // One statement, two rows: one NOTIFY carrying the higher position.
    c.execute(
        "INSERT INTO eventstore.events (org_id, aggregate_type, aggregate_id, version, event_type) \
         VALUES (gen_random_uuid(), 'user', gen_random_uuid(), 1, 'user.added'), \
                (gen_random_uuid(), 'user', gen_random_uuid(), 1, 'user.added')",
        &[],
    )
    .await
    .unwrap();
    let expected: String = c
        .query_one(
            "SELECT tx || '/' || seq FROM eventstore.events ORDER BY tx DESC, seq DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(next(&mut rx).await, expected);
}

#[tokio::test]
async fn events_appended_after_a_restore_rebase_sort_after_the_restored_ones() {
    let db = TestDb::new().await;
    let store = db.store(opts(NotifyMode::Coalesced));
    let c = db.client().await;
    // What a dump from an older, busier cluster brings back: positions far above this
    // cluster's transaction ids.
    let restored_tx: i64 = 1 << 40;
    c.execute(
        "INSERT INTO eventstore.events (tx, seq, org_id, aggregate_type, aggregate_id, version, event_type) \
         VALUES ($1, 1000000, gen_random_uuid(), 'user', gen_random_uuid(), 1, 'user.added')",
        &[&restored_tx],
    )
    .await
    .unwrap();
    let restored = Position::from_sql(restored_tx, 1_000_000);

    // Without the rebase a new event sorts before the restored one: a reader would never see it.
    let before = store
        .push(&[added(Uuid::new_v4(), Uuid::new_v4(), "a")])
        .await
        .unwrap();
    assert!(before.last() < restored);

    let offset: i64 = c
        .query_one("SELECT eventstore.rebase_after_restore()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(offset > 0);
    let again: i64 = c
        .query_one("SELECT eventstore.rebase_after_restore()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, offset, "the rebase is idempotent");

    let after = store
        .push(&[added(Uuid::new_v4(), Uuid::new_v4(), "b")])
        .await
        .unwrap();
    assert!(
        after.last() > restored,
        "{} should sort after {}",
        after.last(),
        restored
    );

    // A reader that had followed the old cluster up to the restored head reads the new event.
    let client = store.pool().get().await.unwrap();
    let read = eventually(
        "the new event to pass the horizon",
        // Generous: the horizon is the whole cluster's, and other tests share it.
        Duration::from_secs(30),
        || async {
            let evs = eventstore::read_after(&client, restored, &EventFilter::default(), 10)
                .await
                .unwrap();
            (!evs.is_empty()).then_some(evs)
        },
    )
    .await;
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].position, after.last());
}

#[tokio::test]
async fn bad_input_is_refused_with_a_clear_error_and_writes_nothing() {
    let db = TestDb::new().await;
    let store = db.store(StoreOptions {
        max_event_bytes: 1024,
        notify: NotifyMode::Coalesced,
    });
    let org = Uuid::new_v4();

    let big = added(org, Uuid::new_v4(), &"x".repeat(2000));
    match store.push(&[big]).await {
        Err(StoreError::PayloadTooLarge {
            event_type,
            size,
            limit,
        }) => {
            assert_eq!(event_type, "user.added");
            assert!(size > 2000);
            assert_eq!(limit, 1024);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }

    for bad in [
        "",
        "user",
        "User.Added",
        "user..added",
        "user.added.",
        "1user.added",
        "user added",
    ] {
        let append = Append::new(org, user(Uuid::new_v4()), ExpectedVersion::NEW)
            .event(NewEvent::new(bad, json!({})));
        match store.push(&[append]).await {
            Err(StoreError::Invalid(msg)) => {
                assert!(msg.contains("invalid event type"), "{bad:?}: {msg}")
            }
            other => panic!("event type {bad:?}: expected Invalid, got {other:?}"),
        }
    }

    // One bad command spoils the whole push.
    let good = added(org, Uuid::new_v4(), "ok");
    let bad = Append::new(org, user(Uuid::new_v4()), ExpectedVersion::NEW)
        .event(NewEvent::new("nope", json!({})));
    assert!(matches!(
        store.push(&[good, bad]).await,
        Err(StoreError::Invalid(_))
    ));

    let no_events = Append::new(org, user(Uuid::new_v4()), ExpectedVersion::NEW);
    assert!(matches!(
        store.push(&[no_events]).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(store.push(&[]).await, Err(StoreError::Invalid(_))));
    let bad_agg = Append::new(
        org,
        Aggregate::new("User", Uuid::new_v4()),
        ExpectedVersion::NEW,
    )
    .event(NewEvent::new("user.added", json!({})));
    assert!(matches!(
        store.push(&[bad_agg]).await,
        Err(StoreError::Invalid(_))
    ));
    let payload_not_object = Append::new(org, user(Uuid::new_v4()), ExpectedVersion::NEW)
        .event(NewEvent::new("user.added", json!([1, 2])));
    assert!(matches!(
        store.push(&[payload_not_object]).await,
        Err(StoreError::Invalid(_))
    ));

    // The SQL function refuses a negative expected version from any caller (a DBA in psql).
    let c = db.client().await;
    let err = c
        .query(
            "SELECT * FROM eventstore.push($1::jsonb)",
            &[
                &json!([{"org_id": org, "aggregate_type": "user", "aggregate_id": Uuid::new_v4(),
                        "expected_version": -1, "events": [{"event_type": "user.added"}]}]),
            ],
        )
        .await
        .unwrap_err();
    let dberr = err.as_db_error().unwrap();
    assert_eq!(dberr.code().code(), "PC003");
    assert!(
        dberr.message().contains("invalid expected version -1"),
        "{}",
        dberr.message()
    );

    // And direct INSERTs must follow the same rules (the table's CHECKs).
    let long_type = format!("a.{}", "b".repeat(127));
    let long_aggregate = "a".repeat(65);
    for (aggregate_type, event_type) in [
        ("user", "Bad Type"),
        ("user", "useradded"),
        ("user", long_type.as_str()),
        ("User", "user.added"),
        ("user group", "user.added"),
        (long_aggregate.as_str(), "user.added"),
    ] {
        let err = c
            .execute(
                "INSERT INTO eventstore.events (org_id, aggregate_type, aggregate_id, version, event_type) \
                 VALUES (gen_random_uuid(), $1, gen_random_uuid(), 1, $2)",
                &[&aggregate_type, &event_type],
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.as_db_error().unwrap().code(),
            &tokio_postgres::error::SqlState::CHECK_VIOLATION,
            "{aggregate_type:?} {event_type:?}"
        );
    }

    assert_eq!(count_events(&db).await, 0);
    let claims: i64 = c
        .query_one("SELECT count(*) FROM eventstore.unique_constraints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(claims, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creating_one_aggregate_twice_is_a_conflict_even_concurrently() {
    let db = TestDb::new().await;
    let store = db.store(opts(NotifyMode::Coalesced));
    let (org, id) = (Uuid::new_v4(), Uuid::new_v4());
    store.push(&[added(org, id, "a")]).await.unwrap();
    match store.push(&[added(org, id, "again")]).await {
        Err(StoreError::Conflict {
            aggregate,
            expected,
            actual,
        }) => {
            assert_eq!(aggregate, user(id));
            assert_eq!(expected, ExpectedVersion::NEW);
            assert_eq!(actual, 1);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    let fresh = Uuid::new_v4();
    let ok = race(
        &store,
        8,
        |_| vec![added(org, fresh, "x")],
        |e| matches!(e, StoreError::Conflict { actual: 1, .. }),
    )
    .await;
    assert_eq!(ok, 1);
    assert_eq!(count_events(&db).await, 2);
}

#[tokio::test]
async fn a_writer_holds_its_wakes_until_it_releases_them_or_ends() {
    let db = TestDb::new().await;
    let store = db.store(opts(NotifyMode::Coalesced));
    let org = Uuid::new_v4();
    let mut woken = store.subscribe();
    woken.borrow_and_update();

    let second = store
        .holding_wakes(async {
            let first = store
                .push(&[added(org, Uuid::new_v4(), "a")])
                .await
                .unwrap();
            assert!(
                !woken.has_changed().unwrap(),
                "held while the writer holds it"
            );
            store.release_wakes();
            assert_eq!(*woken.borrow_and_update(), first.last());
            let second = store
                .push(&[added(org, Uuid::new_v4(), "b")])
                .await
                .unwrap();
            assert!(
                !woken.has_changed().unwrap(),
                "held again after the release"
            );
            second.last()
        })
        .await;
    assert_eq!(
        *woken.borrow_and_update(),
        second,
        "woken when the writer ended"
    );

    // A writer dropped half-way (a client that went away) wakes the readers too.
    let (pushed, on_pushed) = tokio::sync::oneshot::channel();
    let writer = store.holding_wakes(async {
        let p = store
            .push(&[added(org, Uuid::new_v4(), "c")])
            .await
            .unwrap();
        let _ = pushed.send(p.last());
        std::future::pending::<()>().await
    });
    let third = tokio::select! {
        _ = writer => unreachable!("the writer never ends"),
        p = on_pushed => p.unwrap(),
    };
    assert_eq!(*woken.borrow_and_update(), third);

    // Outside a writer's hold nothing is held.
    let fourth = store
        .push(&[added(org, Uuid::new_v4(), "d")])
        .await
        .unwrap();
    assert_eq!(*woken.borrow_and_update(), fourth.last());
}

#[tokio::test]
async fn the_store_knows_its_own_creations_as_the_log_holds_them() {
    let db = TestDb::new().await;
    let store = db.store(opts(NotifyMode::Coalesced));
    let org = Uuid::new_v4();
    let start = store
        .push(&[added(org, Uuid::new_v4(), "first")])
        .await
        .unwrap();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let two = Append::new(org, user(b), ExpectedVersion::NEW)
        .event(NewEvent::new(
            "user.added",
            json!({"z": 1, "a": [1.5, "ü"]}),
        ))
        .event(NewEvent::new("user.changed", json!({"set": {"y": null}})))
        .claim(UniqueValue::case_insensitive("user_name", "two"));
    store.push(&[added(org, a, "one"), two]).await.unwrap();
    let known = store
        .pushed_after(start.last())
        .expect("creations are known");
    let client = store.pool().get().await.unwrap();
    let filter = EventFilter::default();
    // Read below the horizon, which another test's open transaction may hold back a while.
    let logged = eventually(
        "the push below the horizon",
        Duration::from_secs(30),
        || {
            let (client, filter, after) = (&client, &filter, start.last());
            async move {
                let events = eventstore::read_after(client, after, filter, 100)
                    .await
                    .unwrap();
                (events.len() >= 3).then_some(events)
            }
        },
    )
    .await;
    assert_eq!(known, logged, "what the store knows is what the log holds");
    assert_eq!(known.len(), 3);

    // An update's versions are worked out in SQL: past it nothing is known until it is read.
    let update = Append::new(org, user(a), ExpectedVersion::Any)
        .event(NewEvent::new("user.changed", json!({})));
    store.push(&[update]).await.unwrap();
    assert!(store.pushed_after(start.last()).is_none());
}
