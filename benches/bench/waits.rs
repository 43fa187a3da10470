//! Read-your-writes latency: push, then wait until the projection has the event, with three
//! strategies side by side: the ProgressHub (LISTEN/NOTIFY + watch channels), polling
//! projection_states every 50 ms (the earlier system's waitForPosition), and a fixed 100 ms
//! sleep. Four projections run meanwhile. Plus catch-up speed from position zero.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use portcullis::eventstore::{
    Aggregate, Append, EventStore, ExpectedVersion, NewEvent, Position, StoreOptions, StoredEvent,
};
use portcullis::runtime::{ProgressHub, Projection, Projector, ReduceError, RunnerOptions, Tx};
use serde_json::json;
use uuid::Uuid;

use crate::report::Report;

/// A small read model like the real ones: one upsert per event.
struct Counter(&'static str);

#[async_trait]
impl Projection for Counter {
    fn name(&self) -> &'static str {
        self.0
    }
    fn event_types(&self) -> Option<Vec<String>> {
        Some(vec!["user.added".into()])
    }
    fn tables(&self) -> Vec<String> {
        vec![format!("bench.{}", self.0)]
    }
    async fn apply(&self, tx: &Tx<'_>, events: &[&StoredEvent]) -> Result<(), ReduceError> {
        let stmt = tx
            .prepare_cached(&format!(
                "INSERT INTO bench.{} AS t (org_id, n) SELECT o, count(*) FROM unnest($1::uuid[]) o GROUP BY o \
                 ON CONFLICT (org_id) DO UPDATE SET n = t.n + EXCLUDED.n",
                self.0
            ))
            .await?;
        let orgs: Vec<uuid::Uuid> = events.iter().map(|e| e.org_id).collect();
        tx.execute(&stmt, &[&orgs]).await?;
        Ok(())
    }
}

const COUNTERS: [&str; 3] = ["counter_a", "counter_b", "counter_c"];

/// Each writer starts an operation this often (longer than the slowest strategy needs).
const PACE: Duration = Duration::from_millis(110);

#[derive(Clone, Copy, PartialEq)]
enum Strategy {
    Hub,
    Poll50,
    Sleep100,
}

impl Strategy {
    fn short(self) -> &'static str {
        match self {
            Strategy::Hub => "ProgressHub",
            Strategy::Poll50 => "poll every 50 ms",
            Strategy::Sleep100 => "sleep 100 ms",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Strategy::Hub => "ProgressHub (LISTEN/NOTIFY + watch)",
            Strategy::Poll50 => "poll projection_states every 50 ms",
            Strategy::Sleep100 => "fixed 100 ms sleep",
        }
    }
}

pub async fn run(server_url: &str, cell: Duration, out: &mut Report) {
    let (db, url) = crate::scratch_database(server_url, "waits").await;
    let setup = crate::connect(&url).await;
    let mut ddl = String::from("CREATE SCHEMA bench;");
    for c in COUNTERS {
        ddl.push_str(&format!(
            "CREATE TABLE bench.{c} (org_id uuid PRIMARY KEY, n bigint NOT NULL);"
        ));
    }
    setup.batch_execute(&ddl).await.unwrap();

    let pool = portcullis::db::pool(&url, 40).unwrap();
    let store = EventStore::new(pool.clone(), StoreOptions::default());
    let hub = ProgressHub::start(&url, pool.clone()).await.unwrap();
    // Four projections that all consume the writes: the real event_counts and three like it.
    let mut projections: Vec<Arc<dyn Projection>> =
        vec![Arc::new(portcullis::read_models::EventCounts)];
    projections.extend(
        COUNTERS
            .iter()
            .map(|c| Arc::new(Counter(c)) as Arc<dyn Projection>),
    );
    let projector = Projector::start(
        &url,
        pool.clone(),
        store.clone(),
        hub.clone(),
        projections,
        RunnerOptions::default(),
    )
    .await
    .unwrap();

    let mut rows = Vec::new();
    let mut p50s = std::collections::HashMap::new();
    for writers in [1usize, 16] {
        for strategy in [Strategy::Hub, Strategy::Poll50, Strategy::Sleep100] {
            let r = measure(strategy, writers, cell, &store, &hub, &pool).await;
            p50s.insert((writers, strategy as u8), r.p50);
            out.latency(
                format!(
                    "{}, {writers} writer{}",
                    strategy.short(),
                    if writers == 1 { "" } else { "s" }
                ),
                r.samples.clone(),
            );
            rows.push(vec![
                writers.to_string(),
                strategy.name().to_string(),
                r.count.to_string(),
                format!("{:.2}", r.p50),
                format!("{:.2}", r.p99),
                format!("{:.2}", r.total_p50),
                format!("{:.2}", r.total_p99),
                format!("{:.2}", r.queries as f64 / r.count.max(1) as f64),
                r.stale.to_string(),
            ]);
        }
    }
    let ratio = |w: usize| p50s[&(w, Strategy::Poll50 as u8)] / p50s[&(w, Strategy::Hub as u8)];
    out.section(
        "Read-your-writes latency: push -> the projection has it (4 projections running)",
        &[
            "writers",
            "strategy",
            "waits",
            "wait p50 ms",
            "wait p99 ms",
            "push+wait p50 ms",
            "push+wait p99 ms",
            "queries/wait",
            "stale reads",
        ],
        rows,
        vec![format!(
            "{:.1} s per cell. Every writer starts one push every {} ms whatever the strategy, so \
             all strategies carry the same load. 'wait': from the push's commit until the wait \
             returns; 'push+wait': from the start of the push. Target: hub wait p50 at least 10x \
             lower than polling's, 0 queries per wait: {:.0}x at 1 writer, {:.0}x at 16 writers ({}). \
             'stale reads': waits that returned before the projection had the event.",
            cell.as_secs_f64(),
            PACE.as_millis(),
            ratio(1),
            ratio(16),
            if ratio(1) >= 10.0 && ratio(16) >= 10.0 {
                "met"
            } else {
                "NOT met"
            }
        )],
    );
    drop(projector);

    catch_up(&url, &pool, &hub, out).await;
    drop((store, hub, pool, setup));
    crate::drop_database(server_url, &db).await;
}

struct Cell {
    count: usize,
    p50: f64,
    p99: f64,
    total_p50: f64,
    total_p99: f64,
    queries: u64,
    stale: u64,
    /// Wait latencies, ms, sorted.
    samples: Vec<f64>,
}

async fn measure(
    strategy: Strategy,
    writers: usize,
    dur: Duration,
    store: &EventStore,
    hub: &ProgressHub,
    pool: &deadpool_postgres::Pool,
) -> Cell {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let totals = Arc::new(Mutex::new(Vec::new()));
    let queries = Arc::new(AtomicU64::new(0));
    let stale = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + dur;
    let org = Uuid::new_v4();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (store, hub, pool) = (store.clone(), hub.clone(), pool.clone());
            let (latencies, queries, stale) = (latencies.clone(), queries.clone(), stale.clone());
            let totals = totals.clone();
            tokio::spawn(async move {
                // Writers start spread over one period, then keep to the pace.
                let mut next = tokio::time::Instant::now()
                    + Duration::from_millis(rand::random_range(0..PACE.as_millis() as u64));
                while Instant::now() < deadline {
                    // Pacing (a deliberate delay): the same offered load for every strategy.
                    tokio::time::sleep_until(next).await;
                    next += PACE;
                    let start = Instant::now();
                    let pos = store
                        .push(&[Append::new(
                            org,
                            Aggregate::new("user", Uuid::new_v4()),
                            ExpectedVersion::NEW,
                        )
                        .event(NewEvent::new("user.added", json!({"userName": "x"})))])
                        .await
                        .unwrap()
                        .last();
                    let pushed = Instant::now();
                    match strategy {
                        Strategy::Hub => {
                            hub.wait_for_position("counter_a", pos, Duration::from_secs(10))
                                .await
                                .unwrap();
                        }
                        Strategy::Poll50 => loop {
                            let c = pool.get().await.unwrap();
                            queries.fetch_add(1, Ordering::Relaxed);
                            let at = position_of(&c, "counter_a").await;
                            if at >= pos {
                                break;
                            }
                            // The strategy under comparison: what the earlier system did.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        },
                        Strategy::Sleep100 => {
                            // The strategy under comparison: the earlier SCIM handlers' sleep.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    let waited = pushed.elapsed();
                    let elapsed = start.elapsed();
                    if strategy == Strategy::Sleep100 {
                        // Not part of the strategy (it would not know): was it right?
                        let c = pool.get().await.unwrap();
                        if position_of(&c, "counter_a").await < pos {
                            stale.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    latencies
                        .lock()
                        .unwrap()
                        .push(waited.as_secs_f64() * 1000.0);
                    totals.lock().unwrap().push(elapsed.as_secs_f64() * 1000.0);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let sorted = |v: &Mutex<Vec<f64>>| {
        let mut l = v.lock().unwrap().clone();
        l.sort_by(|a, b| a.partial_cmp(b).unwrap());
        l
    };
    let pct = |l: &[f64], p: f64| l[((l.len() as f64 - 1.0) * p).round() as usize];
    let (l, t) = (sorted(&latencies), sorted(&totals));
    Cell {
        count: l.len(),
        p50: pct(&l, 0.5),
        p99: pct(&l, 0.99),
        total_p50: pct(&t, 0.5),
        total_p99: pct(&t, 0.99),
        queries: queries.load(Ordering::Relaxed),
        stale: stale.load(Ordering::Relaxed),
        samples: l,
    }
}

async fn position_of(c: &deadpool_postgres::Client, name: &str) -> Position {
    let r = c
        .query_one(
            "SELECT position_tx, position_seq FROM projections.projection_states WHERE name = $1",
            &[&name],
        )
        .await
        .unwrap();
    Position::from_sql(r.get(0), r.get(1))
}

/// 200k events written straight into the log, then one projection replays them from zero.
async fn catch_up(url: &str, pool: &deadpool_postgres::Pool, hub: &ProgressHub, out: &mut Report) {
    const EVENTS: i64 = 200_000;
    let c = pool.get().await.unwrap();
    c.batch_execute("TRUNCATE bench.counter_a; DELETE FROM projections.projection_states WHERE name = 'counter_a';")
        .await
        .unwrap();
    c.execute(
        "INSERT INTO eventstore.events (org_id, aggregate_type, aggregate_id, version, event_type, payload) \
         SELECT ('00000000-0000-0000-0000-' || lpad((g % 1000)::text, 12, '0'))::uuid, 'user', \
                gen_random_uuid(), 1, 'user.added', jsonb_build_object('userName', 'u' || g) \
           FROM generate_series(1, $1::bigint) g",
        &[&EVENTS],
    )
    .await
    .unwrap();
    let head = portcullis::eventstore::head(&c).await.unwrap();
    let store = EventStore::new(pool.clone(), StoreOptions::default());
    let start = Instant::now();
    let projector = Projector::start(
        url,
        pool.clone(),
        store,
        hub.clone(),
        vec![Arc::new(Counter("counter_a"))],
        RunnerOptions::default(),
    )
    .await
    .unwrap();
    hub.wait_for_position("counter_a", head, Duration::from_secs(600))
        .await
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    drop(projector);
    let applied: i64 = c
        .query_one(
            "SELECT coalesce(sum(n), 0)::bigint FROM bench.counter_a",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    out.section(
        "Projection catch-up from position zero",
        &["events in the log", "projection", "seconds", "events/s"],
        vec![vec![
            applied.to_string(),
            "counter (one upsert per event)".into(),
            format!("{secs:.1}"),
            format!("{:.0}", applied as f64 / secs),
        ]],
        vec![],
    );
}
