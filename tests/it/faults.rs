//! The database going away: clients get 503 with Retry-After (which SCIM clients retry), never
//! a 500, no database error text, and nothing is half-written. And the bounds on sessions
//! and pools that keep one fault from spreading.

use portcullis::db::Purpose;
use portcullis::eventstore::{Aggregate, Append, ExpectedVersion, NewEvent, StoreOptions};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::scim::{enc, Scim};
use crate::support::{pg, TestDb};

const ADMIN: &str = "pca_faults-admin-token";

/// Refuses new connections to the test database and ends the open ones: what a client sees
/// while Postgres restarts or fails over.
async fn cut_off(db: &TestDb, admin: &tokio_postgres::Client) {
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{0}\" ALLOW_CONNECTIONS false; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}'",
            db.name
        ))
        .await
        .unwrap();
}

#[track_caller]
fn assert_unavailable(status: u16, retry_after: Option<&str>, body: &str) {
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after, Some("1"), "{body}");
    for internal in [
        "FATAL",
        "not currently accepting",
        "db error",
        "terminating",
    ] {
        assert!(!body.contains(internal), "leaks {internal:?}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_database_is_503_on_every_surface_and_writes_nothing() {
    let db = TestDb::new().await;
    let mut cfg = db.config();
    cfg.admin_token = Some(ADMIN.into());
    let s = Scim::on(crate::support::TestApp::spawn_with(cfg).await).await;
    s.user("before", json!({})).await;
    let admin = pg::connect(&portcullis::db::url_with_database(&db.url, "postgres")).await;
    cut_off(&db, &admin).await;

    let during = json!({"schemas": [crate::scim::USER], "userName": "during"});
    for r in [
        s.post("/Users", &during).await,
        s.get("/Users").await,
        s.patch(
            "/Users/00000000-0000-4000-8000-000000000000",
            json!([{"op": "replace", "path": "active", "value": false}]),
        )
        .await,
    ] {
        assert_unavailable(r.status, r.header("retry-after"), &r.body.to_string());
        r.assert_error(503, None);
    }
    let app = &s.app;
    for (path, token) in [
        ("/api/v1/admin/projections/health", Some(ADMIN)),
        ("/readyz", None),
    ] {
        let mut req = app.http.get(app.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let retry = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = res.text().await.unwrap();
        assert_unavailable(status, retry.as_deref(), &body);
    }

    // Back again: the pool reconnects by itself, and the refused create left nothing behind.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
            db.name
        ))
        .await
        .unwrap();
    let list = crate::support::eventually(
        "the service to reach the database again",
        std::time::Duration::from_secs(20),
        || async {
            let r = s
                .get(&format!("/Users?filter={}", enc(r#"userName eq "during""#)))
                .await;
            (r.status == 200).then_some(r.body)
        },
    )
    .await;
    assert_eq!(list["totalResults"], Value::from(0), "{list}");
    let created = s.post("/Users", &during).await;
    assert_eq!(created.status, 201, "{}", created.body);
}

async fn show(c: &tokio_postgres::Client, setting: &str) -> String {
    c.query_one(&format!("SHOW {setting}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_bounded_and_keep_what_the_url_says() {
    let db = TestDb::new().await;
    let requests = portcullis::db::pool_for(&db.url, 1, Purpose::Requests).unwrap();
    let c = requests.get().await.unwrap();
    for (setting, want) in [
        ("statement_timeout", "30s"),
        ("lock_timeout", "10s"),
        ("idle_in_transaction_session_timeout", "5s"),
        ("tcp_keepalives_idle", "5"),
        ("tcp_user_timeout", "8000"),
        ("application_name", "portcullis requests"),
    ] {
        assert_eq!(show(&c, setting).await, want, "{setting}");
    }
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let url = format!(
        "{}{sep}options=-c%20statement_timeout%3D5s&application_name=mine",
        db.url
    );
    let own = portcullis::db::pool_for(&url, 1, Purpose::Requests).unwrap();
    let c = own.get().await.unwrap();
    assert_eq!(show(&c, "statement_timeout").await, "5s");
    assert_eq!(show(&c, "lock_timeout").await, "10s");
    assert_eq!(show(&c, "application_name").await, "mine");
}

/// Requests holding every connection of their pool do not stop the projections: a write
/// made elsewhere is still projected, since the runtime has connections of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_requests_cannot_starve_the_projections() {
    let db = TestDb::new().await;
    let mut cfg = db.config();
    cfg.pool_size = 3;
    let app = crate::support::TestApp::spawn_with(cfg).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(app.state.pool.get().await.unwrap());
    }
    let store = db.store(StoreOptions::default());
    let id = Uuid::new_v4();
    let pushed = store
        .push(&[Append::new(
            Uuid::new_v4(),
            Aggregate::new("user", id),
            ExpectedVersion::NEW,
        )
        .event(NewEvent::new(
            "user.added",
            json!({"attributes": {"userName": "u"}}),
        ))])
        .await
        .unwrap();
    app.state
        .hub
        .wait_for_position("users", pushed.last(), std::time::Duration::from_secs(30))
        .await
        .expect("the users projection moves while requests hold their whole pool");
    drop(held);
    app.stop().await;
}
