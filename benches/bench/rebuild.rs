//! A blue/green rebuild of the users read model (100k users) while SCIM clients read and
//! write: every read is checked against the writes acknowledged before it began (a partial
//! model would answer fewer users), and the time until the swap is reported.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::config::Config;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::report::Report;

const USERS: i64 = 100_000;
const CLIENTS: usize = 4;

pub async fn run(server_url: &str, out: &mut Report) {
    let (db, url) = crate::scratch_database(server_url, "rebuild").await;
    let served = crate::Served::start(&Config::new(url.clone())).await;
    let c = crate::connect(&url).await;
    let seed = "INSERT INTO eventstore.events (org_id, aggregate_type, aggregate_id, version, event_type, payload) \
         SELECT $1, 'user', gen_random_uuid(), 1, 'user.added', jsonb_build_object('attributes', \
                jsonb_build_object('userName', 'seed' || n || '@bench.example', 'emails', \
                jsonb_build_array(jsonb_build_object('value', 'seed' || n || '@bench.example', 'type', 'work')))) \
           FROM generate_series(1, $2::bigint) n";
    c.execute(seed, &[&served.org, &USERS]).await.unwrap();
    let head = portcullis::eventstore::head(&served.state.pool.get().await.unwrap())
        .await
        .unwrap();
    let hub = &served.state.hub;
    hub.wait_for_all(&["users", "api_tokens"], head, Duration::from_secs(600))
        .await
        .unwrap();
    let base = Arc::new(format!("http://{}/scim/v2/{}", served.addr, served.org));
    let auth = Arc::new(format!("Bearer {}", served.token.token.expose_secret()));
    let http = reqwest::Client::new();
    let acked = Arc::new(AtomicI64::new(USERS));
    let (reads, wrong, done) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let start = Instant::now();
    let projector = served.state.projector.clone().unwrap();
    projector.rebuild("users").await.unwrap();
    let mut tasks = Vec::new();
    for k in 0..CLIENTS {
        let (http, base, auth, acked, reads, wrong, done) = (
            http.clone(),
            base.clone(),
            auth.clone(),
            acked.clone(),
            reads.clone(),
            wrong.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                if k % 2 == 0 {
                    let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                                      "userName": format!("during{k}-{n}@bench.example")});
                    let r = http
                        .post(format!("{base}/Users"))
                        .header("Authorization", &*auth)
                        .json(&body)
                        .send()
                        .await;
                    if r.map(|r| r.status() == 201).unwrap_or(false) {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    n += 1;
                } else {
                    let at_least = acked.load(Ordering::SeqCst);
                    let r = http
                        .get(format!("{base}/Users?count=0"))
                        .header("Authorization", &*auth)
                        .send()
                        .await;
                    let total = match r {
                        Ok(r) if r.status() == 200 => r
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|b| b["totalResults"].as_i64()),
                        _ => None,
                    };
                    reads.fetch_add(1, Ordering::SeqCst);
                    if total.is_none_or(|t| t < at_least) {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    crate::rebuilds_done(&c).await;
    let secs = start.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    let written = acked.load(Ordering::SeqCst) - USERS;
    out.section(
        "Rebuild of the users read model under SCIM load",
        &["users", "seconds to swap", "events/s", "reads during it", "wrong or failed reads", "writes during it"],
        vec![vec![
            USERS.to_string(),
            format!("{secs:.1}"),
            format!("{:.0}", (USERS + written) as f64 / secs),
            reads.load(Ordering::SeqCst).to_string(),
            wrong.load(Ordering::SeqCst).to_string(),
            written.to_string(),
        ]],
        vec![format!("{CLIENTS} clients, half reading GET /Users?count=0 (checked against the writes acknowledged before each read), half creating users. The copy is filled without its secondary indexes, which are built in bulk before the swap.")],
    );
    served.stop().await;
    drop(c);
    crate::drop_database(server_url, &db).await;
}
