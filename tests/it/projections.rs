use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use portcullis::eventstore::{
    Aggregate, Append, EventStore, ExpectedVersion, NewEvent, NotifyMode, Position, StoreOptions,
    StoredEvent,
};
use portcullis::runtime::{
    self, ProgressHub, Projection, Projector, ReduceError, RunnerOptions, Tx, WaitError,
};
use serde_json::{json, Value};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::support::pg::OwnServer;
use crate::support::{eventually, TestDb};

const WAIT: Duration = Duration::from_secs(30);

/// How a Ledger's reducer misbehaves.
#[derive(Default)]
struct Faults {
    /// Events with `"poison": true` fail until this is set.
    poison_fixed: AtomicBool,
    /// Percent of applications that fail after the reducer has written.
    random_fail_pct: AtomicU32,
    /// Events with `"block": true` signal `entered` and never finish.
    entered: Notify,
    block: AtomicBool,
    /// Events with `"lock": true` take advisory lock 4242 with a short lock_timeout; the
    /// attempts are counted.
    lock_attempts: AtomicU32,
}

/// A test read model that logs every application, with no key: an event applied twice shows
/// up as two rows, one missed as none.
struct Ledger {
    name: &'static str,
    faults: Arc<Faults>,
}

impl Ledger {
    fn build(name: &'static str) -> (Arc<dyn Projection>, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        (
            Arc::new(Ledger {
                name,
                faults: faults.clone(),
            }),
            faults,
        )
    }

    fn table(name: &str) -> String {
        format!("projections.ledger_{name}")
    }
}

#[async_trait]
impl Projection for Ledger {
    fn name(&self) -> &'static str {
        self.name
    }

    fn event_types(&self) -> Option<Vec<String>> {
        Some(vec!["ledger.entry".into()])
    }

    fn tables(&self) -> Vec<String> {
        vec![Ledger::table(self.name)]
    }

    async fn apply(&self, tx: &Tx<'_>, events: &[&StoredEvent]) -> Result<(), ReduceError> {
        for event in events {
            self.reduce(tx, event).await?;
        }
        Ok(())
    }
}

impl Ledger {
    async fn reduce(&self, tx: &Tx<'_>, event: &StoredEvent) -> Result<(), ReduceError> {
        tx.execute(
            &format!(
                "INSERT INTO {} (position, aggregate_id, n) VALUES ($1, $2, $3)",
                Ledger::table(self.name)
            ),
            &[
                &event.position.to_string(),
                &event.aggregate.id,
                &event.payload["n"].as_i64().unwrap_or(-1),
            ],
        )
        .await?;
        if event.payload["lock"] == json!(true) {
            self.faults.lock_attempts.fetch_add(1, Ordering::SeqCst);
            tx.batch_execute("SET LOCAL lock_timeout = '20ms'; SELECT pg_advisory_xact_lock(4242)")
                .await?;
        }
        if event.payload["poison"] == json!(true)
            && !self.faults.poison_fixed.load(Ordering::SeqCst)
        {
            return Err(ReduceError::Other("poisoned event".into()));
        }
        let pct = self.faults.random_fail_pct.load(Ordering::SeqCst);
        if pct > 0 && rand::random_range(0..100) < pct {
            return Err(ReduceError::Other("random failure after writing".into()));
        }
        if event.payload["block"] == json!(true) && self.faults.block.load(Ordering::SeqCst) {
            self.faults.entered.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// One "process": a pool, an event store and a ProgressHub of its own.
struct Node {
    store: EventStore,
    hub: ProgressHub,
}

impl Node {
    async fn new(db: &TestDb) -> Node {
        Node::at(&db.url).await
    }

    async fn at(url: &str) -> Node {
        let pool = portcullis::db::pool(url, 16).unwrap();
        let store = EventStore::new(
            pool.clone(),
            StoreOptions {
                notify: NotifyMode::Coalesced,
                ..StoreOptions::default()
            },
        );
        let hub = ProgressHub::start(url, pool).await.unwrap();
        Node { store, hub }
    }

    async fn projector(
        &self,
        db: &TestDb,
        p: Vec<Arc<dyn Projection>>,
        opts: RunnerOptions,
    ) -> Projector {
        self.projector_at(&db.url, p, opts).await
    }

    async fn projector_at(
        &self,
        url: &str,
        p: Vec<Arc<dyn Projection>>,
        opts: RunnerOptions,
    ) -> Projector {
        Projector::start(
            url,
            self.store.pool().clone(),
            self.store.clone(),
            self.hub.clone(),
            p,
            opts,
        )
        .await
        .unwrap()
    }
}

fn fast_retries() -> RunnerOptions {
    RunnerOptions {
        retry_base: Duration::from_millis(1),
        retry_max: Duration::from_millis(20),
        max_attempts: 1000,
        ..RunnerOptions::default()
    }
}

async fn ledger_tables(db: &TestDb, names: &[&str]) {
    ledger_tables_at(&db.url, names).await
}

async fn ledger_tables_at(url: &str, names: &[&str]) {
    let c = crate::support::pg::connect(url).await;
    for n in names {
        c.batch_execute(&format!(
            "CREATE TABLE {} (position text NOT NULL, aggregate_id uuid NOT NULL, n bigint NOT NULL)",
            Ledger::table(n)
        ))
        .await
        .unwrap();
    }
}

async fn push_entry(store: &EventStore, org: Uuid, n: i64, extra: Value) -> Position {
    let mut payload = json!({ "n": n });
    if let (Some(p), Some(e)) = (payload.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    store
        .push(&[Append::new(
            org,
            Aggregate::new("ledger", Uuid::new_v4()),
            ExpectedVersion::NEW,
        )
        .event(NewEvent::new("ledger.entry", payload))])
        .await
        .unwrap()
        .last()
}

/// `writers` concurrent writers, taking turns over `stores`, each pushing `each` entries;
/// returns the highest position written.
async fn write_concurrently(
    stores: &[&EventStore],
    writers: i64,
    each: i64,
    org: Uuid,
) -> Position {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = stores[w as usize % stores.len()].clone();
            tokio::spawn(async move {
                let mut last = Position::ZERO;
                for i in 0..each {
                    last = push_entry(&store, org, w * 1000 + i, json!({})).await;
                }
                last
            })
        })
        .collect();
    let mut last = Position::ZERO;
    for t in tasks {
        last = last.max(t.await.unwrap());
    }
    last
}

/// The read model matches a replay of the event log exactly: every ledger.entry event once.
async fn assert_exactly_once(db: &TestDb, name: &str) {
    assert_exactly_once_at(&db.url, name).await
}

async fn assert_exactly_once_at(url: &str, name: &str) {
    let c = crate::support::pg::connect(url).await;
    let dupes: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM (SELECT position FROM {} GROUP BY position HAVING count(*) > 1) d", Ledger::table(name)),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dupes, 0, "{name}: events applied more than once");
    let missing: i64 = c
        .query_one(
            &format!(
                "SELECT count(*) FROM eventstore.events e WHERE e.event_type = 'ledger.entry' \
                 AND NOT EXISTS (SELECT 1 FROM {} l WHERE l.position = e.tx || '/' || e.seq)",
                Ledger::table(name)
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(missing, 0, "{name}: events never applied");
    let extra: i64 = c
        .query_one(
            &format!(
                "SELECT count(*) FROM {} l WHERE NOT EXISTS (SELECT 1 FROM eventstore.events e \
                 WHERE l.position = e.tx || '/' || e.seq AND (e.payload->>'n')::bigint = l.n)",
                Ledger::table(name)
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(extra, 0, "{name}: rows that match no event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_when_reducers_fail_at_random_after_writing() {
    let db = TestDb::new().await;
    ledger_tables(&db, &["random"]).await;
    let node = Node::new(&db).await;
    let (ledger, faults) = Ledger::build("random");
    faults.random_fail_pct.store(20, Ordering::SeqCst);
    let _projector = node.projector(&db, vec![ledger], fast_retries()).await;
    let org = Uuid::new_v4();
    let last = write_concurrently(&[&node.store], 4, 100, org).await;
    node.hub
        .wait_for_position("random", last, WAIT)
        .await
        .unwrap();
    assert_exactly_once(&db, "random").await;
    let failed = runtime::failed_events(&node.store.pool().get().await.unwrap(), "random")
        .await
        .unwrap();
    assert!(
        failed.is_empty(),
        "recovered failures are forgotten: {failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_aborted_mid_batch_leaves_nothing_half_applied() {
    let db = TestDb::new().await;
    ledger_tables(&db, &["abort"]).await;
    let node = Node::new(&db).await;
    let org = Uuid::new_v4();
    let mut last = Position::ZERO;
    let mut blocker = Position::ZERO;
    for i in 0..50 {
        last = push_entry(&node.store, org, i, json!({ "block": i == 30 })).await;
        if i == 30 {
            blocker = last;
        }
    }
    let (ledger, faults) = Ledger::build("abort");
    faults.block.store(true, Ordering::SeqCst);
    let projector = node.projector(&db, vec![ledger], fast_retries()).await;
    // The runner has written rows in its open transaction and hangs in the 31st reducer.
    // (Earlier batches may have committed: a transaction elsewhere on the server can hold the
    // horizon below some of the events when it starts.)
    tokio::time::timeout(WAIT, faults.entered.notified())
        .await
        .expect("the runner reached the blocking event");
    projector.stop();

    // What is visible is exactly what the committed position covers: none of the aborted
    // batch's rows, and the position stops short of the blocking event.
    let c = db.client().await;
    let state = runtime::state(&c_pool(&node).await, "abort")
        .await
        .unwrap()
        .unwrap();
    assert!(
        state.position < blocker,
        "the position did not pass the blocking event"
    );
    let (rows, covered): (i64, i64) = {
        let r = c
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {}), \
                            (SELECT count(*) FROM eventstore.events WHERE event_type = 'ledger.entry' \
                              AND (tx, seq) <= ($1, $2))",
                    Ledger::table("abort")
                ),
                &[&state.position.tx_sql(), &state.position.seq],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(rows, covered, "nothing of the aborted batch is visible");
    assert!(rows < 30);

    let (ledger, _) = Ledger::build("abort");
    let _projector = node.projector(&db, vec![ledger], fast_retries()).await;
    node.hub
        .wait_for_position("abort", last, WAIT)
        .await
        .unwrap();
    assert_exactly_once(&db, "abort").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_round_stopped_mid_batch_leaves_no_transaction_behind() {
    let db = TestDb::new().await;
    ledger_tables(&db, &["stopped"]).await;
    let node = Node::new(&db).await;
    let (ledger, faults) = Ledger::build("stopped");
    faults.block.store(true, Ordering::SeqCst);
    let projector = node.projector(&db, vec![ledger], fast_retries()).await;
    // Caught up with an empty log: the next write is the live round's, which begins its
    // transaction with a BEGIN statement, takes the lock, and hangs in the reducer.
    let first = push_entry(&node.store, Uuid::new_v4(), 0, json!({})).await;
    node.hub
        .wait_for_position("stopped", first, WAIT)
        .await
        .unwrap();
    push_entry(&node.store, Uuid::new_v4(), 1, json!({ "block": true })).await;
    tokio::time::timeout(WAIT, faults.entered.notified())
        .await
        .expect("the live round reached the blocking event");
    projector.stop();
    // Its connection did not go back to the pool mid-transaction (where it would hold the
    // projection's lock until the idle-transaction bound, a minute for this pool): it was
    // closed, and the server let go of the lock at once.
    let c = db.client().await;
    eventually(
        "the stopped round's lock to be free",
        Duration::from_secs(5),
        || async {
            let free: bool = c
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended('portcullis.projection/stopped', 0))",
                &[],
            )
            .await
            .unwrap()
            .get(0);
            free.then_some(())
        },
    )
    .await;
    let open: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
              AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0, "no connection is left inside a transaction");
}

async fn c_pool(node: &Node) -> deadpool_postgres::Client {
    node.store.pool().get().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runners_in_two_processes_apply_every_event_once() {
    let db = TestDb::new().await;
    ledger_tables(&db, &["shared"]).await;
    let (a, b) = (Node::new(&db).await, Node::new(&db).await);
    let _pa = a
        .projector(&db, vec![Ledger::build("shared").0], fast_retries())
        .await;
    let _pb = b
        .projector(&db, vec![Ledger::build("shared").0], fast_retries())
        .await;
    let org = Uuid::new_v4();
    // Writers on both nodes: each node's runner is woken in-process by half of them and by
    // NOTIFY for the other half.
    let last = write_concurrently(&[&a.store, &b.store], 8, 60, org).await;
    a.hub.wait_for_position("shared", last, WAIT).await.unwrap();
    b.hub.wait_for_position("shared", last, WAIT).await.unwrap();
    assert_exactly_once(&db, "shared").await;
}

async fn terminate(db: &TestDb, application_name: &str) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
              WHERE datname = current_database() AND application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_listeners_reconnect_and_catch_up() {
    let db = TestDb::new().await;
    ledger_tables(&db, &["listen"]).await;
    // Projector and waiter in one process; the writer in another, so only NOTIFY wakes them.
    let (node, writer) = (Node::new(&db).await, Node::new(&db).await);
    let opts = RunnerOptions {
        fallback_tick: Duration::from_secs(3600),
        ..fast_retries()
    };
    let _projector = node
        .projector(&db, vec![Ledger::build("listen").0], opts)
        .await;
    let org = Uuid::new_v4();
    let first = push_entry(&writer.store, org, 0, json!({})).await;
    node.hub
        .wait_for_position("listen", first, WAIT)
        .await
        .unwrap();

    // The writer's process runs no projector: its waits end only through its hub's LISTEN
    // connection (or the reload after that connection comes back).
    let mut hub_connects = writer.hub.connects();
    let before = *hub_connects.borrow();
    assert_eq!(terminate(&db, "portcullis projector").await, 1);
    // Both nodes' hubs.
    assert_eq!(terminate(&db, "portcullis progress hub").await, 2);
    let mut last = first;
    for i in 1..=40 {
        last = push_entry(&writer.store, org, i, json!({})).await;
    }
    // Both reconnect by themselves; what was announced while they were away is caught up.
    tokio::time::timeout(WAIT, hub_connects.wait_for(|n| *n > before))
        .await
        .expect("the hub reconnects")
        .unwrap();
    writer
        .hub
        .wait_for_position("listen", last, WAIT)
        .await
        .unwrap();
    node.hub
        .wait_for_position("listen", last, WAIT)
        .await
        .unwrap();
    assert_exactly_once(&db, "listen").await;

    // And they keep working afterwards.
    let after = push_entry(&writer.store, org, 99, json!({})).await;
    writer
        .hub
        .wait_for_position("listen", after, WAIT)
        .await
        .unwrap();
    node.hub
        .wait_for_position("listen", after, WAIT)
        .await
        .unwrap();
}

#[tokio::test]
async fn wait_for_position_returns_on_commit_and_times_out_with_a_typed_error() {
    let db = TestDb::new().await;
    ledger_tables(&db, &["waits"]).await;
    let node = Node::new(&db).await;
    let org = Uuid::new_v4();

    // No runner: the wait ends with an error naming the projection, its position and the target.
    let (ledger, _) = Ledger::build("waits");
    let pos = push_entry(&node.store, org, 1, json!({})).await;
    match node
        .hub
        .wait_for_position("waits", pos, Duration::from_millis(200))
        .await
    {
        Err(WaitError::Timeout {
            projection,
            position,
            target,
            ..
        }) => {
            assert_eq!(projection, "waits");
            assert_eq!(position, Position::ZERO);
            assert_eq!(target, pos);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }

    // With a runner it returns as soon as the projection has committed the target.
    let projector = node.projector(&db, vec![ledger], fast_retries()).await;
    let reached = node
        .hub
        .wait_for_position("waits", pos, WAIT)
        .await
        .unwrap();
    assert!(reached >= pos);
    let state = runtime::state(&c_pool(&node).await, "waits")
        .await
        .unwrap()
        .unwrap();
    assert!(
        state.position >= pos,
        "the committed state is at the target too"
    );
    let both = push_entry(&node.store, org, 2, json!({})).await;
    node.hub.wait_for_all(&["waits"], both, WAIT).await.unwrap();

    // Stopped: a later position times out again.
    projector.stop();
    let later = push_entry(&node.store, org, 3, json!({})).await;
    let err = node
        .hub
        .wait_for_all(&["waits"], later, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("waits"), "{err}");
}

#[tokio::test]
async fn a_progress_notify_from_another_connection_wakes_waiters() {
    let db = TestDb::new().await;
    let node = Node::new(&db).await;
    let target = Position::new(123_456, 7);
    let waiter = {
        let hub = node.hub.clone();
        tokio::spawn(async move { hub.wait_for_position("elsewhere", target, WAIT).await })
    };
    // Another process's runner commits its progress: the trigger sends the NOTIFY.
    db.client()
        .await
        .execute(
            "INSERT INTO projections.projection_states (name, position_tx, position_seq) VALUES ('elsewhere', 123456, 7)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), target);
}

/// A reset done here is told to the hub after it commits, but its notification may come back
/// sooner, and notifications committed before it may still be on their way: none of those may
/// raise the position again or call the emptied model complete.
#[tokio::test]
async fn notifications_from_before_a_local_reset_do_not_undo_it() {
    let db = TestDb::new().await;
    let node = Node::new(&db).await;
    let notify = |payload: &'static str| {
        let db = &db;
        async move {
            db.client()
                .await
                .execute("SELECT pg_notify('projection_progress', $1)", &[&payload])
                .await
                .unwrap();
        }
    };
    // Notifications arrive in order: once `marker` reaches `at`, all before it were applied.
    let applied = |at: u64| {
        let hub = node.hub.clone();
        async move {
            hub.wait_for_position("marker", Position::new(at, 1), WAIT)
                .await
                .unwrap();
        }
    };
    notify("model/500/1/10/0").await;
    notify("marker/1/1/0/0").await;
    applied(1).await;
    assert_eq!(node.hub.current("model"), Position::new(500, 1));

    node.hub
        .rewind("model", async { Ok::<_, ()>(()) })
        .await
        .unwrap();
    // Committed before the reset, delivered after it.
    notify("model/600/1/20/0").await;
    notify("marker/2/1/0/0").await;
    applied(2).await;
    assert_eq!(node.hub.current("model"), Position::ZERO);
    assert!(!node.hub.is_complete("model"));

    // The reset's own notification, then progress after it, count again.
    notify("model/0/0/0/1").await;
    notify("model/700/1/5/1").await;
    notify("marker/3/1/0/0").await;
    applied(3).await;
    assert_eq!(node.hub.current("model"), Position::new(700, 1));
    assert!(!node.hub.is_complete("model"), "not caught up yet");
    notify("model/800/1/6/0").await;
    notify("marker/4/1/0/0").await;
    applied(4).await;
    assert_eq!(node.hub.current("model"), Position::new(800, 1));
    assert!(node.hub.is_complete("model"));
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_and_retry_failed_reapplies_it() {
    let db = TestDb::new().await;
    ledger_tables(&db, &["poison"]).await;
    let node = Node::new(&db).await;
    let clock = portcullis::clock::ManualClock::default();
    let (ledger, faults) = Ledger::build("poison");
    let projector = node
        .projector(
            &db,
            vec![ledger],
            RunnerOptions {
                max_attempts: 3,
                retry_base: Duration::from_secs(60),
                retry_max: Duration::from_secs(600),
                clock: Arc::new(clock.clone()),
                ..RunnerOptions::default()
            },
        )
        .await;
    let org = Uuid::new_v4();
    let before = push_entry(&node.store, org, 1, json!({})).await;
    let poison = push_entry(&node.store, org, 2, json!({"poison": true})).await;
    let after = push_entry(&node.store, org, 3, json!({})).await;
    node.hub
        .wait_for_position("poison", before, WAIT)
        .await
        .unwrap();

    let pool = node.store.pool().clone();
    let failed = |count: i32| {
        let pool = pool.clone();
        async move {
            let f = runtime::failed_events(&pool.get().await.unwrap(), "poison")
                .await
                .unwrap();
            (f.len() == 1 && f[0].failure_count == count).then(|| f[0].clone())
        }
    };
    // First failure: recorded, the projection waits for the backoff (a minute of test time).
    let f = eventually("the first failure", WAIT, || failed(1)).await;
    assert_eq!(f.position, poison);
    assert!(f.error.contains("poisoned event"));
    assert!(f.dead_lettered_at.is_none());
    assert!(node.hub.current("poison") < poison);
    let c = pool.get().await.unwrap();
    let h = runtime::health(&c).await.unwrap();
    let mine = h.projections.iter().find(|p| p.name == "poison").unwrap();
    assert_eq!((mine.status.as_str(), mine.failed), ("degraded", 1));

    // Move the clock past each backoff: retried, then dead-lettered and skipped.
    clock.advance(chrono::Duration::seconds(61));
    projector.poke("poison");
    eventually("the second failure", WAIT, || failed(2)).await;
    clock.advance(chrono::Duration::seconds(121));
    projector.poke("poison");
    let f = eventually("the dead letter", WAIT, || failed(3)).await;
    assert!(f.dead_lettered_at.is_some());
    node.hub
        .wait_for_position("poison", after, WAIT)
        .await
        .unwrap();
    let h = runtime::health(&c).await.unwrap();
    let mine = h.projections.iter().find(|p| p.name == "poison").unwrap();
    assert_eq!(
        (mine.status.as_str(), mine.dead_lettered, mine.failed),
        ("degraded", 1, 0)
    );
    let applied: Vec<i64> = c
        .query(
            &format!("SELECT n FROM {} ORDER BY n", Ledger::table("poison")),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        applied,
        vec![1, 3],
        "the poison event's writes were rolled back; the rest applied"
    );

    // Still broken: retry keeps it dead-lettered. Fixed: retry applies it and clears it.
    let r = projector.retry_failed("poison").await.unwrap();
    assert_eq!((r.applied, r.still_failing), (0, 1));
    faults.poison_fixed.store(true, Ordering::SeqCst);
    let r = projector.retry_failed("poison").await.unwrap();
    assert_eq!((r.applied, r.still_failing), (1, 0));
    assert!(runtime::failed_events(&c, "poison")
        .await
        .unwrap()
        .is_empty());
    let h = runtime::health(&c).await.unwrap();
    assert_eq!(
        h.projections
            .iter()
            .find(|p| p.name == "poison")
            .unwrap()
            .status,
        "ok"
    );
    assert_exactly_once(&db, "poison").await;
}

#[tokio::test]
async fn a_transient_error_is_retried_and_never_dead_lettered() {
    let db = TestDb::new().await;
    ledger_tables(&db, &["transient"]).await;
    let node = Node::new(&db).await;
    let (ledger, faults) = Ledger::build("transient");
    // Two attempts would dead-letter any other failure.
    let opts = RunnerOptions {
        max_attempts: 2,
        ..fast_retries()
    };
    let _projector = node.projector(&db, vec![ledger], opts).await;
    let holder = crate::support::pg::connect(&db.url).await;
    holder
        .execute("SELECT pg_advisory_lock(4242)", &[])
        .await
        .unwrap();
    let org = Uuid::new_v4();
    let locked = push_entry(&node.store, org, 1, json!({"lock": true})).await;
    let after = push_entry(&node.store, org, 2, json!({})).await;
    eventually("several attempts at the locked event", WAIT, || async {
        (faults.lock_attempts.load(Ordering::SeqCst) >= 5).then_some(())
    })
    .await;
    let c = c_pool(&node).await;
    assert!(runtime::failed_events(&c, "transient")
        .await
        .unwrap()
        .is_empty());
    assert!(
        node.hub.current("transient") < locked,
        "it waits, it does not skip"
    );
    holder
        .execute("SELECT pg_advisory_unlock(4242)", &[])
        .await
        .unwrap();
    node.hub
        .wait_for_position("transient", after, WAIT)
        .await
        .unwrap();
    assert_exactly_once(&db, "transient").await;
}

#[tokio::test]
async fn reset_rebuilds_the_same_read_model() {
    let db = TestDb::new().await;
    let node = Node::new(&db).await;
    let projector = node
        .projector(
            &db,
            portcullis::read_models::all(),
            RunnerOptions::default(),
        )
        .await;
    let org = Uuid::new_v4();
    let mut last = Position::ZERO;
    for i in 0..30 {
        last = push_entry(&node.store, org, i, json!({})).await;
        if i % 3 == 0 {
            last = node
                .store
                .push(&[Append::new(
                    org,
                    Aggregate::new("user", Uuid::new_v4()),
                    ExpectedVersion::NEW,
                )
                .event(NewEvent::new("user.added", json!({})))])
                .await
                .unwrap()
                .last();
        }
    }
    node.hub
        .wait_for_position("event_counts", last, WAIT)
        .await
        .unwrap();
    let snapshot = |c: deadpool_postgres::Client| async move {
        c.query("SELECT org_id, event_type, events, last_position FROM projections.event_counts ORDER BY 1, 2", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, Uuid>(0), r.get::<_, String>(1), r.get::<_, i64>(2), r.get::<_, String>(3)))
            .collect::<Vec<_>>()
    };
    let live = snapshot(c_pool(&node).await).await;
    assert_eq!(live.len(), 2);
    assert_eq!((live[0].2 + live[1].2), 40);

    projector.reset("event_counts").await.unwrap();
    let c = c_pool(&node).await;
    // The service keeps running and replays from the start.
    node.hub
        .wait_for_position("event_counts", last, WAIT)
        .await
        .unwrap();
    assert_eq!(snapshot(c).await, live);
    let state = runtime::state(&c_pool(&node).await, "event_counts")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.events_applied, 40);
}

#[tokio::test]
async fn lag_and_state_follow_the_log() {
    let db = TestDb::new().await;
    ledger_tables(&db, &["lagging"]).await;
    let node = Node::new(&db).await;
    let org = Uuid::new_v4();
    // Registered but not running: everything is lag.
    let p = node
        .projector(
            &db,
            vec![Ledger::build("lagging").0],
            RunnerOptions::default(),
        )
        .await;
    p.stop();
    let mut last = Position::ZERO;
    for i in 0..5 {
        last = push_entry(&node.store, org, i, json!({})).await;
    }
    let c = c_pool(&node).await;
    let lag = eventually("the horizon to pass the writes", WAIT, || async {
        let l = runtime::lag(&c, "lagging").await.unwrap();
        (l.events == 5).then_some(l)
    })
    .await;
    assert!(lag.seconds >= 0.0);
    // The thresholds of the configuration decide the status column.
    let thresholds = |lag_events, stall_seconds| runtime::Thresholds {
        lag_events,
        lag_seconds: 1000.0,
        stall_seconds,
        per_projection: Vec::new(),
    };
    thresholds(100, 1000.0).store(&c).await.unwrap();
    assert_eq!(health_status(&c, "lagging").await, "ok");
    thresholds(2, 1000.0).store(&c).await.unwrap();
    assert_eq!(health_status(&c, "lagging").await, "lagging");
    thresholds(2, 0.0).store(&c).await.unwrap();
    assert_eq!(health_status(&c, "lagging").await, "stalled");
    runtime::Thresholds::default().store(&c).await.unwrap();
    assert!(runtime::last_event_timestamp(&c, "lagging")
        .await
        .unwrap()
        .is_none());

    let _p = node
        .projector(
            &db,
            vec![Ledger::build("lagging").0],
            RunnerOptions::default(),
        )
        .await;
    node.hub
        .wait_for_position("lagging", last, WAIT)
        .await
        .unwrap();
    let l = runtime::lag(&c, "lagging").await.unwrap();
    assert_eq!((l.events, l.seconds), (0, 0.0));
    let s = runtime::state(&c, "lagging").await.unwrap().unwrap();
    assert_eq!(s.events_applied, 5);
    assert_eq!(s.last_aggregate_type.as_deref(), Some("ledger"));
    assert!(s.event_timestamp.is_some());
    assert!(runtime::states(&c)
        .await
        .unwrap()
        .iter()
        .any(|s| s.name == "lagging"));
    assert!(matches!(
        runtime::lag(&c, "nope").await,
        Err(portcullis::runtime::ProjectionError::Unknown(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_service_recovers_by_itself_when_postgres_restarts() {
    crate::support::init_tracing();
    let (server, url) = tokio::task::spawn_blocking(OwnServer::start).await.unwrap();
    portcullis::db::migrate(&url).await.unwrap();
    ledger_tables_at(&url, &["restart"]).await;
    let node = Node::at(&url).await;
    let _projector = node
        .projector_at(&url, vec![Ledger::build("restart").0], fast_retries())
        .await;
    let org = Uuid::new_v4();
    let (halfway_tx, halfway) = tokio::sync::oneshot::channel();
    let restarted = Arc::new(AtomicBool::new(false));
    let writer = {
        let store = node.store.clone();
        let restarted = restarted.clone();
        tokio::spawn(async move {
            let mut halfway_tx = Some(halfway_tx);
            let (mut last, mut written, mut after_restart, mut errors) = (Position::ZERO, 0, 0, 0);
            let mut backoff = Duration::from_millis(10);
            // Writes go on through the restart, until 100 more have landed after it.
            while after_restart < 100 {
                let append = Append::new(
                    org,
                    Aggregate::new("ledger", Uuid::new_v4()),
                    ExpectedVersion::NEW,
                )
                .event(NewEvent::new("ledger.entry", json!({ "n": written })));
                match store.push(&[append]).await {
                    Ok(p) => {
                        last = last.max(p.last());
                        written += 1;
                        if restarted.load(Ordering::SeqCst) {
                            after_restart += 1;
                        }
                        backoff = Duration::from_millis(10);
                        if written == 100 {
                            if let Some(t) = halfway_tx.take() {
                                let _ = t.send(());
                            }
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        // The server is down or restarting: back off and write on.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                }
            }
            (last, errors)
        })
    };
    halfway.await.unwrap();
    let s = &server;
    tokio::task::block_in_place(|| {
        s.script("stop");
        s.script("start");
    });
    restarted.store(true, Ordering::SeqCst);
    let (last, errors) = writer.await.unwrap();
    assert!(errors > 0, "the writes ran into the restart");
    node.hub
        .wait_for_position("restart", last, Duration::from_secs(60))
        .await
        .unwrap();
    assert_exactly_once_at(&url, "restart").await;
    drop(node);
    drop(server);
}

async fn health_status(c: &deadpool_postgres::Client, name: &str) -> String {
    c.query_one(
        "SELECT status FROM projections.health WHERE name = $1",
        &[&name],
    )
    .await
    .unwrap()
    .get(0)
}

/// The live round's positions' UPDATE ends in `projections.expect_moved`: a round whose COMMIT
/// went out behind its writes cannot look at the count, so a state that moved under it must
/// fail the transaction (serialization_failure, which the round takes as a lost race), not
/// commit its writes with a position left behind.
#[tokio::test]
async fn expect_moved_fails_the_transaction_unless_every_position_moved() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let moved: i64 = c
        .query_one("SELECT projections.expect_moved(2, 2)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(moved, 2);
    let e = c
        .query_one("SELECT projections.expect_moved(1, 2)", &[])
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE)
    );
    let message = e.as_db_error().unwrap().message();
    assert!(message.contains("moved 1 of 2"), "{message}");
}
