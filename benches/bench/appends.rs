//! Appends/s: the NOTIFY trigger in every transaction vs the opt-out with a coalesced notify
//! vs a plain INSERT of the same rows into a copy of the table without the trigger (the
//! ceiling), at 1 and 16 writers, 1 and 10 events per transaction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use portcullis::eventstore::{
    Aggregate, Append, EventStore, ExpectedVersion, NewEvent, NotifyMode, StoreOptions,
};
use serde_json::json;
use uuid::Uuid;

use crate::report::Report;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Ceiling,
    Trigger,
    Coalesced,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Ceiling => "plain INSERT, no trigger (ceiling)",
            Mode::Trigger => "push, NOTIFY trigger",
            Mode::Coalesced => "push, opt-out + coalesced notify",
        }
    }
}

pub async fn run(server_url: &str, cell: Duration, out: &mut Report) {
    let (db, url) = crate::scratch_database(server_url, "appends").await;
    let setup = crate::connect(&url).await;
    setup
        .batch_execute(
            "CREATE SCHEMA bench; \
             CREATE TABLE bench.events_plain (LIKE eventstore.events INCLUDING ALL);",
        )
        .await
        .unwrap();

    let (notifications, _listener) = listen(&url).await;
    let store = |notify| {
        EventStore::new(
            portcullis::db::pool(&url, 20).unwrap(),
            StoreOptions {
                notify,
                ..StoreOptions::default()
            },
        )
    };
    let trigger = store(NotifyMode::Trigger);
    let coalesced = store(NotifyMode::Coalesced);
    let plain = portcullis::db::pool(&url, 20).unwrap();

    // Warm-up: connections, prepared statements, caches.
    for mode in [Mode::Ceiling, Mode::Trigger, Mode::Coalesced] {
        measure(
            mode,
            4,
            1,
            Duration::from_millis(300),
            &trigger,
            &coalesced,
            &plain,
        )
        .await;
    }

    let mut rows = Vec::new();
    let mut opt_out_16 = Vec::new();
    // Three rounds of the three modes, interleaved, each a third of the cell: drift on a busy
    // machine hits every mode alike; the table shows the median round.
    const ROUNDS: usize = 3;
    let slice = cell / ROUNDS as u32;
    let modes = [Mode::Ceiling, Mode::Trigger, Mode::Coalesced];
    for writers in [1usize, 16] {
        for batch in [1usize, 10] {
            let mut tps = [[0.0f64; ROUNDS]; 3];
            let mut notified = [0u64; 3];
            for round in 0..ROUNDS {
                for (m, mode) in modes.iter().enumerate() {
                    let tps = &mut tps[m];
                    setup
                        .batch_execute("TRUNCATE eventstore.events, eventstore.unique_constraints, bench.events_plain; CHECKPOINT;")
                        .await
                        .unwrap();
                    let before = notifications.load(Ordering::Relaxed);
                    let (txs, secs) =
                        measure(*mode, writers, batch, slice, &trigger, &coalesced, &plain).await;
                    tps[round] = txs as f64 / secs;
                    notified[m] += notifications.load(Ordering::Relaxed) - before;
                }
            }
            let median = |v: &[f64; ROUNDS]| {
                let mut v = *v;
                v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                v[ROUNDS / 2]
            };
            let ceiling = median(&tps[0]);
            for (m, mode) in modes.iter().enumerate() {
                let t = median(&tps[m]);
                let ratio = t / ceiling;
                if *mode == Mode::Coalesced && writers == 16 {
                    opt_out_16.push(ratio);
                }
                rows.push(vec![
                    writers.to_string(),
                    batch.to_string(),
                    mode.name().to_string(),
                    format!("{t:.0}"),
                    format!("{:.0}", t * batch as f64),
                    format!("{:.0}%", ratio * 100.0),
                    format!(
                        "{:.0}",
                        notified[m] as f64 / (slice.as_secs_f64() * ROUNDS as f64)
                    ),
                ]);
            }
        }
    }
    let worst = opt_out_16.iter().cloned().fold(f64::INFINITY, f64::min);
    out.section(
        "Appends: NOTIFY trigger vs opt-out + coalesced notify vs plain INSERT (ceiling)",
        &["writers", "events/tx", "mode", "tx/s", "events/s", "vs ceiling", "NOTIFYs/s received"],
        rows,
        vec![format!(
            "{:.1} s per cell (median of 3 interleaved rounds). Target: opt-out mode at 16 writers >= 80% of the ceiling: {:.0}% ({}).",
            cell.as_secs_f64(),
            worst * 100.0,
            if worst >= 0.8 { "met" } else { "NOT met" }
        )],
    );
    drop((trigger, coalesced, plain, setup));
    crate::drop_database(server_url, &db).await;
}

async fn measure(
    mode: Mode,
    writers: usize,
    batch: usize,
    dur: Duration,
    trigger: &EventStore,
    coalesced: &EventStore,
    plain: &deadpool_postgres::Pool,
) -> (u64, f64) {
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + dur;
    let org = Uuid::new_v4();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let count = count.clone();
            let store = match mode {
                Mode::Coalesced => coalesced.clone(),
                _ => trigger.clone(),
            };
            let plain = plain.clone();
            tokio::spawn(async move {
                let payload = json!({"userName": "someone@example.com", "active": true});
                while Instant::now() < deadline {
                    let id = Uuid::new_v4();
                    if mode == Mode::Ceiling {
                        // The same work around the INSERT as a push: a pooled connection, one
                        // transaction, one statement carrying each event's payload.
                        let client = plain.get().await.unwrap();
                        let stmt = client
                            .prepare_cached(
                                "INSERT INTO bench.events_plain \
                                 (org_id, aggregate_type, aggregate_id, version, event_type, payload, metadata) \
                                 SELECT $1, 'user', $2, u.v, 'user.added', u.p, '{}' \
                                   FROM unnest($3::jsonb[]) WITH ORDINALITY AS u(p, v)",
                            )
                            .await
                            .unwrap();
                        let payloads: Vec<&serde_json::Value> = vec![&payload; batch];
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                            [&org, &id, &payloads];
                        // Pipelined like EventStore::push: BEGIN, INSERT, COMMIT in one round trip.
                        let (begin, insert, commit) = futures::join!(
                            client.batch_execute("BEGIN"),
                            client.execute(&stmt, &params),
                            client.batch_execute("COMMIT")
                        );
                        begin.unwrap();
                        insert.unwrap();
                        commit.unwrap();
                    } else {
                        let mut append =
                            Append::new(org, Aggregate::new("user", id), ExpectedVersion::NEW);
                        for _ in 0..batch {
                            append = append.event(NewEvent::new("user.added", payload.clone()));
                        }
                        store.push(&[append]).await.unwrap();
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (count.load(Ordering::Relaxed), start.elapsed().as_secs_f64())
}

/// A listener, as a projector in another process would have: NOTIFY costs more with one.
async fn listen(url: &str) -> (Arc<AtomicU64>, tokio_postgres::Client) {
    let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let counter = n.clone();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = m {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    client
        .batch_execute("LISTEN eventstore_events")
        .await
        .unwrap();
    (n, client)
}
