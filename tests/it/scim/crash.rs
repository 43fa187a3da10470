//! A 201 is a promise: every user whose create was answered 201 is still there after
//! PostgreSQL crashes (an immediate shutdown, which loses the WAL not yet written) while
//! creates are on their way, and the service carries on once the database is back. Where
//! the cluster commits asynchronously, a crash may take writes that were answered; even
//! then a create in flight is answered 201 or 503, never 404. And a write, whose append does
//! not wait for its own WAL flush, is answered only once a synchronous commit covers it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::Scim;
use crate::support::pg::OwnServer;
use crate::support::{eventually, TestApp};

const CLIENTS: usize = 4;
/// Creates answered 201 before the crash, and again after it.
const BEFORE: usize = 100;
const AFTER: usize = 50;

/// What the clients have been answered so far.
#[derive(Default)]
struct Answers {
    created: Mutex<Vec<String>>,
    others: Mutex<Vec<(u16, String)>>,
}

/// Creates users from `CLIENTS` clients until `stop`; every userName answered 201 goes into
/// `answers`, and `count` follows how many.
fn clients(
    scim: &Arc<Scim>,
    answers: &Arc<Answers>,
    count: &Arc<watch::Sender<usize>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|client| {
            let (scim, answers) = (scim.clone(), answers.clone());
            let (count, stop) = (count.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let name = format!("crash-{client}-{n}@example.com");
                    n += 1;
                    let r = scim.post("/Users", &json!({ "userName": name })).await;
                    if r.status == 201 {
                        answers.created.lock().unwrap().push(name);
                        count.send_modify(|c| *c += 1);
                    } else {
                        answers
                            .others
                            .lock()
                            .unwrap()
                            .push((r.status, r.body.to_string()));
                        // Backoff while the database is down: the service answers at once.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect()
}

/// A crash under creates, on a cluster of its own that commits synchronously or not
/// (fsync stays off either way: an immediate shutdown loses what was not yet written, not
/// what the kernel holds). Returns the cluster, the org, and what the clients were answered
/// once they saw `AFTER` more creates answered 201 after the restart.
async fn crash_under_creates(synchronous: bool) -> (OwnServer, String, uuid::Uuid, Answers) {
    crate::support::init_tracing();
    let (server, url) = tokio::task::spawn_blocking(OwnServer::start).await.unwrap();
    let admin = crate::support::pg::connect(&url).await;
    let setting = if synchronous { "on" } else { "off" };
    for sql in [
        format!("ALTER SYSTEM SET synchronous_commit = {setting}"),
        "SELECT pg_reload_conf()".into(),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    drop(admin);
    portcullis::db::migrate(&url).await.unwrap();
    let mut cfg = portcullis::config::Config::new(url.clone());
    cfg.pool_size = 8;
    let scim = Arc::new(Scim::on(TestApp::spawn_with(cfg).await).await);
    let answers = Arc::<Answers>::default();
    let (count, mut counted) = watch::channel(0usize);
    let (count, stop) = (Arc::new(count), Arc::new(AtomicBool::new(false)));
    let tasks = clients(&scim, &answers, &count, &stop);

    let reached = |n: usize| move |c: &usize| *c >= n;
    tokio::time::timeout(Duration::from_secs(60), counted.wait_for(reached(BEFORE)))
        .await
        .expect("creates answered before the crash")
        .unwrap();
    tokio::task::block_in_place(|| {
        server.script("crash");
        server.script("start");
    });
    let at_restart = *counted.borrow();
    tokio::time::timeout(
        Duration::from_secs(120),
        counted.wait_for(reached(at_restart + AFTER)),
    )
    .await
    .expect("creates answered 201 again once the database is back")
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let answers = Arc::try_unwrap(answers).ok().expect("the clients are done");
    eprintln!(
        "crash (synchronous_commit {setting}): {} creates answered 201 ({at_restart} before the crash), {} others",
        answers.created.lock().unwrap().len(),
        answers.others.lock().unwrap().len()
    );
    let org = scim.org;
    drop(scim);
    (server, url, org, answers)
}

fn only_503s(answers: &Answers) {
    let others = answers.others.lock().unwrap();
    assert!(
        others.iter().all(|(s, _)| *s == 503),
        "while the database was down every other answer is a 503: {others:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_user_answered_201_survives_a_postgres_crash() {
    let (server, url, org, answers) = crash_under_creates(true).await;
    only_503s(&answers);
    let created = answers.created.lock().unwrap().clone();
    let db = crate::support::pg::connect(&url).await;
    // The read models may have lost batches committed asynchronously; the runners apply them
    // again from the log.
    let found = eventually(
        "every user answered 201 in the read model",
        Duration::from_secs(60),
        || {
            let (db, created) = (&db, &created);
            async move {
                let found: i64 = db
                    .query_one(
                        "SELECT count(*) FROM projections.users \
                          WHERE org_id = $1 AND user_name = ANY($2)",
                        &[&org, created],
                    )
                    .await
                    .ok()?
                    .get(0);
                (found as usize == created.len()).then_some(found)
            }
        },
    )
    .await;
    let logged: i64 = db
        .query_one(
            "SELECT count(*) FROM eventstore.events WHERE org_id = $1 \
               AND event_type = 'user.added' \
               AND payload->'attributes'->>'userName' = ANY($2)",
            &[&org, &created],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, found, "each one appended once");
    drop(db);
    drop(server);
}

/// The crash takes writes whose commit was not yet written, and their transaction ids go to
/// later writes; the read models then pass those positions without them. A create waiting
/// for its read back must not take that for "deleted meanwhile".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_asynchronous_commits_a_create_the_crash_took_answers_503_not_404() {
    let (server, _url, _org, answers) = crash_under_creates(false).await;
    only_503s(&answers);
    drop(server);
}

/// Sets `sql` (ALTER SYSTEM) and reloads the configuration.
async fn configure(admin: &tokio_postgres::Client, sql: &str) {
    admin.batch_execute(sql).await.unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
}

/// Sends `request` while a synchronous standby that never comes holds every synchronous
/// commit: the write's event must be in the log (`logged` counts it) while its answer waits.
/// Then releases the commits and returns the answer.
async fn held<F>(admin: &tokio_postgres::Client, request: F, logged: &str) -> super::Resp
where
    F: std::future::Future<Output = super::Resp> + Send + 'static,
{
    configure(
        admin,
        "ALTER SYSTEM SET synchronous_standby_names = 'nobody'",
    )
    .await;
    let answer = tokio::spawn(request);
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'";
    eventually(
        "the write's event in the log, and a commit held for the standby",
        Duration::from_secs(30),
        || async move {
            let n: i64 = admin.query_one(logged, &[]).await.unwrap().get(0);
            let held: i64 = admin.query_one(waiting, &[]).await.unwrap().get(0);
            (n == 1 && held > 0).then_some(())
        },
    )
    .await;
    assert!(
        !answer.is_finished(),
        "answered before any synchronous commit covered the write ({logged})"
    );
    configure(admin, "ALTER SYSTEM RESET synchronous_standby_names").await;
    let answered = answer.await.unwrap();
    assert!(
        answered.status < 300 || answered.status == 503,
        "{} {:#}",
        answered.status,
        answered.body
    );
    answered
}

/// A SCIM write's append does not wait for its WAL flush; the answer waits for the
/// synchronous commit of the round that applies it. A synchronous standby that never comes
/// (`synchronous_standby_names`) holds every synchronous commit: the write's event is in the
/// log at once, and the answer waits until the standby is no longer asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_is_answered_only_after_a_synchronous_commit_that_covers_it() {
    crate::support::init_tracing();
    let (server, url) = tokio::task::spawn_blocking(OwnServer::start).await.unwrap();
    let admin = crate::support::pg::connect(&url).await;
    configure(&admin, "ALTER SYSTEM SET synchronous_commit = on").await;
    portcullis::db::migrate(&url).await.unwrap();
    let app = TestApp::spawn_with(portcullis::config::Config::new(url.clone())).await;
    let scim = Arc::new(Scim::on(app).await);
    let first = scim
        .post("/Users", &json!({ "userName": "first@example.com" }))
        .await;
    assert_eq!(first.status, 201, "{:#}", first.body);
    let id = first.id();

    let create = {
        let scim = scim.clone();
        async move {
            scim.post("/Users", &json!({ "userName": "held@example.com" }))
                .await
        }
    };
    let logged = "SELECT count(*) FROM eventstore.events \
                   WHERE payload->'attributes'->>'userName' = 'held@example.com'";
    held(&admin, create, logged).await;
    let got = scim
        .get("/Users?filter=userName%20eq%20%22held@example.com%22")
        .await;
    assert_eq!(got.body["totalResults"], 1, "{:#}", got.body);

    let patch = {
        let (scim, path) = (scim.clone(), format!("/Users/{id}"));
        async move {
            let ops = json!([{"op": "replace", "path": "title", "value": "held"}]);
            scim.patch(&path, ops).await
        }
    };
    let logged = format!(
        "SELECT count(*) FROM eventstore.events \
          WHERE aggregate_id = '{id}' AND event_type <> 'user.added'"
    );
    held(&admin, patch, &logged).await;
    let got = scim.get(&format!("/Users/{id}")).await;
    assert_eq!(got.body["title"], "held", "{:#}", got.body);
    drop(admin);
    drop(scim);
    drop(server);
}
