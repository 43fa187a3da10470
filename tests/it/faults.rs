//! The database going away: clients get 503 with Retry-After (which SCIM clients retry), never
//! a 500, no database error text, and nothing is half-written.

use serde_json::{json, Value};

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
