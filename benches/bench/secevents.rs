//! Security events under SCIM load: 16 clients create users over HTTP for the cell while one
//! receiver gets a SET for each, pushed to a local HTTP receiver (RFC 8935) or polled and
//! acknowledged in batches (RFC 8936). Reported beside the create rate of the same run:
//! SETs delivered per second while the load ran, what was still waiting when it stopped, and
//! the delay from each user's commit (its event's `created_at`) to its SET's arrival.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use portcullis::config::Config;
use portcullis::secevents::receivers::{self, Delivery, Registration};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::report::Report;

const CLIENTS: usize = 16;

/// Arrival time of each subject's SET (wall clock, as the database's `created_at` is).
type Arrivals = Arc<Mutex<HashMap<String, DateTime<Utc>>>>;

fn subject(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let raw =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).ok()?;
    let claims: Value = serde_json::from_slice(&raw).ok()?;
    claims["sub_id"]["uri"].as_str().map(str::to_string)
}

fn arrived(at: &Arrivals, token: &str) {
    if let Some(s) = subject(token) {
        at.lock().unwrap().entry(s).or_insert_with(Utc::now);
    }
}

/// A push receiver on 127.0.0.1 that answers 202 and records arrivals.
async fn push_receiver(at: Arrivals) -> String {
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |body: String| {
            let at = at.clone();
            async move {
                arrived(&at, &body);
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/events")
}

/// A poll receiver: polls, records, acknowledges what it got in its next poll.
fn poller(url: String, token: String, at: Arrivals, stop: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut ack: Vec<String> = Vec::new();
        while stop.load(Ordering::Relaxed) == 0 {
            let body = json!({"ack": ack, "maxEvents": 1000});
            let Ok(r) = http.post(&url).bearer_auth(&token).json(&body).send().await else {
                continue;
            };
            let got: Value = r.json().await.unwrap_or_default();
            ack.clear();
            for (jti, set) in got["sets"].as_object().into_iter().flatten() {
                arrived(&at, set.as_str().unwrap_or_default());
                ack.push(jti.clone());
            }
        }
    });
}

struct Row {
    creates: usize,
    secs: f64,
    delivered_during: usize,
    waiting_at_end: i64,
    delays: Vec<f64>,
}

/// Creates users from CLIENTS tasks for `cell`; returns how many and how long it took.
async fn load(base: &str, auth: &str, cell: Duration, tag: &str) -> (usize, f64) {
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, next) = (http.clone(), next.clone());
            let (base, auth, tag) = (base.to_string(), auth.to_string(), tag.to_string());
            tokio::spawn(async move {
                let mut ok = 0;
                while start.elapsed() < cell {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let body = json!({"userName": format!("{tag}-{i}@bench.example")});
                    let r = http
                        .post(format!("{base}/Users"))
                        .header("authorization", &auth)
                        .header("content-type", "application/scim+json")
                        .body(body.to_string())
                        .send()
                        .await;
                    ok += usize::from(r.is_ok_and(|r| r.status() == 201));
                }
                ok
            })
        })
        .collect();
    let mut creates = 0;
    for t in tasks {
        creates += t.await.unwrap();
    }
    (creates, start.elapsed().as_secs_f64())
}

async fn one(served: &crate::Served, delivery: Delivery, cell: Duration) -> Row {
    let state = &served.state;
    let at: Arrivals = Arc::default();
    let stop = Arc::new(AtomicUsize::new(0));
    let endpoint = match delivery {
        Delivery::Push => Some(push_receiver(at.clone()).await),
        Delivery::Poll => None,
    };
    let reg = Registration {
        name: format!("bench {}", delivery.as_str()),
        delivery,
        endpoint,
        events: vec!["prov:create:full".into()],
        audience: None,
        authorization: None,
        group: None,
    };
    let base = format!("http://{}", served.addr);
    let mut client = state.pool.get().await.unwrap();
    let made = receivers::register(&mut client, served.org, &reg, &base)
        .await
        .unwrap();
    drop(client);
    state.secevents.wake();
    if let Some(t) = &made.poll_token {
        let url = receivers::poll_url(&base, served.org, made.receiver.id);
        poller(url, t.expose_secret().to_string(), at.clone(), stop.clone());
    }
    let scim = format!("{base}/scim/v2/{}", served.org);
    let auth = format!("Bearer {}", served.token.token.expose_secret());
    let tag = format!("{}-{}", delivery.as_str(), std::process::id());
    let (creates, secs) = load(&scim, &auth, cell, &tag).await;
    let delivered_during = at.lock().unwrap().len();
    let c = state.pool.get().await.unwrap();
    let waiting: i64 = c
        .query_one(
            "SELECT pending + events_unread FROM secevents.receiver_health WHERE id = $1",
            &[&made.receiver.id],
        )
        .await
        .unwrap()
        .get(0);
    // Then everything arrives (a condition with a deadline, checked with a backoff).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut backoff = Duration::from_millis(5);
    while at.lock().unwrap().len() < creates && Instant::now() < deadline {
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
    stop.store(1, Ordering::Relaxed);
    let rows = c
        .query(
            "SELECT aggregate_id, created_at FROM eventstore.events \
             WHERE org_id = $1 AND event_type = 'user.added' AND payload->'attributes'->>'userName' LIKE $2",
            &[&served.org, &format!("{tag}-%")],
        )
        .await
        .unwrap();
    let arrivals = at.lock().unwrap().clone();
    let mut delays: Vec<f64> = rows
        .iter()
        .filter_map(|r| {
            let (id, committed): (Uuid, DateTime<Utc>) = (r.get(0), r.get(1));
            let a = arrivals.get(&format!("/Users/{id}"))?;
            Some((*a - committed).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    delays.sort_by(|a, b| a.partial_cmp(b).unwrap());
    receivers::remove(&c, served.org, made.receiver.id)
        .await
        .unwrap();
    Row {
        creates,
        secs,
        delivered_during,
        waiting_at_end: waiting,
        delays,
    }
}

pub async fn run(server_url: &str, cell: Duration, out: &mut Report) {
    let (db, url) = crate::scratch_database(server_url, "secevents").await;
    let mut cfg = Config::new(url);
    cfg.pool_size = 32;
    cfg.scim.wait_timeout = Duration::from_secs(30);
    let served = crate::Served::start(&cfg).await;
    let mut rows = Vec::new();
    for delivery in [Delivery::Push, Delivery::Poll] {
        let r = one(&served, delivery, cell).await;
        let pct = |p: f64| {
            r.delays
                .get(((r.delays.len() as f64 * p) as usize).min(r.delays.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        let (create_rate, set_rate) = (
            r.creates as f64 / r.secs,
            r.delivered_during as f64 / r.secs,
        );
        rows.push(vec![
            delivery.as_str().to_string(),
            format!("{create_rate:.0}"),
            format!("{set_rate:.0}"),
            format!("{:.2}", set_rate / create_rate),
            format!("{}", r.waiting_at_end),
            format!("{:.1}", pct(0.5)),
            format!("{:.1}", pct(0.99)),
            format!("{}/{}", r.delays.len(), r.creates),
        ]);
    }
    served.stop().await;
    crate::drop_database(server_url, &db).await;
    out.section(
        "Security events: SETs delivered beside the SCIM create rate (16 clients)",
        &[
            "delivery",
            "creates/s",
            "SETs/s during the load",
            "SETs / creates",
            "waiting when the load stopped",
            "delay p50 ms",
            "delay p99 ms",
            "delivered/created",
        ],
        rows,
        vec![
            "Each create makes one prov:create:full SET, signed ES256. Delay: from the user's \
             commit (its event's created_at) to the SET's arrival at the receiver (push: the \
             POST; poll: the poll response). Delivery keeps up when SETs/s is about creates/s and \
             little is waiting when the load stops."
                .into(),
        ],
    );
}
